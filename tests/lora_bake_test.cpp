// PEFT LoRA adapters applied on read (`MODEL+ADAPTER` references, io/lora_file.h): every variant
// (rank/alpha patterns, rsLoRA, fan_in_fan_out, embeddings, DoRA, biases, modules_to_save)
// checked element by element against the formula computed here in f64; chunked reads; merges,
// evaluation and `smelt plan`'s refusals of bad adapters (docs/lora.md).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "smelt/dev/make_model.h"
#include "smelt/error.h"
#include "smelt/io/lora_adapter.h"
#include "smelt/io/lora_file.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "test_util.h"
#include "torch_writer.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

#define EXPECT_HAS(haystack, needle)                                                            \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                        << (haystack)

// A tensor written by the test: values in f64, stored as `dtype`.
struct Tensor {
  std::string name;
  std::vector<uint64_t> shape;
  std::vector<double> v;
  DType dtype = DType::kF32;
};

// Deterministic values in [-scale, scale).
std::vector<double> values(uint64_t n, uint32_t seed, double scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<double> v(n);
  for (double& x : v) x = u(rng);
  return v;
}

// The values as the file stores them (rounded to the tensor's dtype).
std::vector<double> stored(const Tensor& t) {
  std::vector<float> f(t.v.begin(), t.v.end());
  std::vector<char> raw(t.v.size() * 4);
  kernels::from_f32(t.dtype, f.data(), raw.data(), f.size());
  kernels::to_f32(t.dtype, raw.data(), f.data(), f.size());
  return {f.begin(), f.end()};
}

void write_safetensors(const fs::path& path, const std::vector<Tensor>& tensors) {
  std::vector<io::TensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  io::SafetensorsWriter w(path, specs, {});
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::vector<float> f(tensors[i].v.begin(), tensors[i].v.end());
    std::vector<char> raw(specs[i].nbytes());
    kernels::from_f32(tensors[i].dtype, f.data(), raw.data(), f.size());
    w.write(i, 0, raw.data(), raw.size());
  }
  w.finish();
}

void write_adapter(const fs::path& dir, const json& config, const std::vector<Tensor>& tensors) {
  fs::create_directories(dir);
  testing::write_bytes(dir / "adapter_config.json", config.dump(2));
  write_safetensors(dir / "adapter_model.safetensors", tensors);
}

// Every element of tensor `name` of `model`, read whole.
std::vector<double> read_all(const io::Model& model, const std::string& name) {
  const io::ModelTensor t = model.find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return {};
  std::vector<char> raw(t.info->nbytes);
  t.file->read(*t.info, 0, raw.data(), raw.size());
  std::vector<float> f(t.info->numel());
  kernels::to_f32(t.info->dtype, raw.data(), f.data(), f.size());
  return {f.begin(), f.end()};
}

std::string read_bytes(const io::Model& model, const std::string& name) {
  const io::ModelTensor t = model.find(name);
  std::string raw(t.info->nbytes, '\0');
  t.file->read(*t.info, 0, raw.data(), raw.size());
  return raw;
}

// W + s·B·A in f64, in the stored layout: W [out, in] with A [r, in], B [out, r]; or, transposed
// (fan_in_fan_out [in, out], embeddings [vocab, dim]), W[i][j] + s·Σk A[k][i]·B[j][k].
std::vector<double> lora_ref(const std::vector<double>& w, uint64_t rows, uint64_t cols,
                             const std::vector<double>& a, const std::vector<double>& b, uint64_t r,
                             double s, bool transposed) {
  std::vector<double> out(w);
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < cols; ++j) {
      double d = 0;
      for (uint64_t k = 0; k < r; ++k) {
        d += transposed ? a[k * rows + i] * b[j * r + k] : b[i * r + k] * a[k * cols + j];
      }
      out[i * cols + j] += s * d;
    }
  }
  return out;
}

// DoRA: m · V / ||V||, the norm per row of V (rows = true) or per column.
std::vector<double> dora_ref(std::vector<double> v, uint64_t rows, uint64_t cols,
                             const std::vector<double>& m, bool per_row) {
  const uint64_t groups = per_row ? rows : cols;
  std::vector<double> norm(groups, 0.0);
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < cols; ++j) norm[per_row ? i : j] += v[i * cols + j] * v[i * cols + j];
  }
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < cols; ++j) {
      const uint64_t g = per_row ? i : j;
      v[i * cols + j] *= m[g] / std::sqrt(norm[g]);
    }
  }
  return v;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want,
                  const std::string& what, double rel = 1e-5) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::abs(got[i] - want[i]) > 1e-7 + rel * std::abs(want[i])) {
      if (++bad <= 3) ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what;
}

// Tiny models shared by the tests: llama-shaped in f32 and bf16, GPT-2-shaped (Conv1D weights
// stored [in, out], with biases) in f32.
class LoraBake : public ::testing::Test {
 protected:
  static constexpr uint64_t kHidden = 64, kInter = 128, kVocab = 320;
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    dev::MakeModelOptions o;
    o.hidden_size = kHidden;
    o.num_heads = 4;
    o.num_layers = 2;
    o.vocab_size = kVocab;
    o.dtype = DType::kF32;
    o.seed = 5;
    dev::make_model(o, *dir_ / "llama");
    o.dtype = DType::kBF16;
    dev::make_model(o, *dir_ / "llama16");
    o.dtype = DType::kF32;
    o.style = "gpt2";
    o.architecture = "GPT2LMHeadModel";
    o.model_type = "gpt2";
    dev::make_model(o, *dir_ / "gpt2");
  }
  static void TearDownTestSuite() { delete dir_; }
  static fs::path path(const std::string& name) { return *dir_ / name; }

  static std::shared_ptr<io::Model> open(const std::string& model, const fs::path& adapter) {
    return io::Model::open(path(model).string() + "+" + adapter.string());
  }

  // A lora_A / lora_B pair for `module` with the given shapes.
  static std::pair<Tensor, Tensor> pair(const std::string& module, uint64_t r, uint64_t in,
                                        uint64_t out, uint32_t seed, DType dtype = DType::kF32) {
    const std::string p = "base_model.model." + module;
    return {Tensor{p + ".lora_A.weight", {r, in}, values(r * in, seed, 0.5), dtype},
            Tensor{p + ".lora_B.weight", {out, r}, values(out * r, seed + 1000, 0.5), dtype}};
  }

  static json config(json extra = json::object()) {
    json c = {{"peft_type", "LORA"},
              {"task_type", "CAUSAL_LM"},
              {"r", 4},
              {"lora_alpha", 8},
              {"target_modules", {"q_proj", "v_proj"}},
              {"bias", "none"}};
    for (auto& [k, v] : extra.items()) c[k] = v;
    return c;
  }

  static TempDir* dir_;
};
TempDir* LoraBake::dir_ = nullptr;

TEST_F(LoraBake, LinearModulesGetScaledProductWithRankAndAlphaPatterns) {
  TempDir work;
  const std::string q0 = "model.layers.0.self_attn.q_proj", v0 = "model.layers.0.self_attn.v_proj",
                    v1 = "model.layers.1.self_attn.v_proj";
  auto [qa, qb] = pair(q0, 4, kHidden, kHidden, 1);
  auto [va, vb] = pair(v0, 4, kHidden, kHidden, 2);
  auto [wa, wb] = pair(v1, 2, kHidden, kHidden, 3);  // rank 2 through rank_pattern
  write_adapter(work / "ad",
                config({{"rank_pattern", {{"model.layers.1.self_attn.v_proj", 2}}},
                        {"alpha_pattern", {{"v_proj", 3}}}}),
                {qa, qb, va, vb, wa, wb});
  const auto base = io::Model::open(path("llama").string());
  const auto m = open("llama", work / "ad");
  // q_proj: 8/4; v_proj (alpha_pattern matches the suffix): 3/4; layer 1's v_proj: 3/2.
  expect_close(
      read_all(*m, q0 + ".weight"),
      lora_ref(read_all(*base, q0 + ".weight"), kHidden, kHidden, qa.v, qb.v, 4, 2.0, false), q0);
  expect_close(
      read_all(*m, v0 + ".weight"),
      lora_ref(read_all(*base, v0 + ".weight"), kHidden, kHidden, va.v, vb.v, 4, 0.75, false), v0);
  expect_close(
      read_all(*m, v1 + ".weight"),
      lora_ref(read_all(*base, v1 + ".weight"), kHidden, kHidden, wa.v, wb.v, 2, 1.5, false), v1);
  // Everything else is the base's, byte for byte, and still a plain range of the base file.
  for (const io::ModelTensor& t : base->tensors()) {
    const std::string& n = t.info->name;
    if (n == q0 + ".weight" || n == v0 + ".weight" || n == v1 + ".weight") {
      EXPECT_FALSE(m->find(n).info->contiguous) << n;
      continue;
    }
    EXPECT_EQ(read_bytes(*m, n), read_bytes(*base, n)) << n;
    EXPECT_TRUE(m->find(n).info->contiguous) << n;
  }
  EXPECT_EQ(m->tensors().size(), base->tensors().size());
  EXPECT_GT(m->read_memory_bytes(), 0u);
}

TEST_F(LoraBake, RsLoraScalesByAlphaOverSquareRootOfRank) {
  TempDir work;
  const std::string k = "model.layers.1.self_attn.k_proj";
  auto [a, b] = pair(k, 4, kHidden, kHidden, 7);
  write_adapter(work / "ad",
                config({{"use_rslora", true}, {"lora_alpha", 6}, {"target_modules", ".*k_proj"}}),
                {a, b});
  const auto base = io::Model::open(path("llama").string());
  expect_close(read_all(*open("llama", work / "ad"), k + ".weight"),
               lora_ref(read_all(*base, k + ".weight"), kHidden, kHidden, a.v, b.v, 4, 3.0, false),
               k);
}

TEST_F(LoraBake, ConvOneDFanInFanOutAndLoraBias) {
  TempDir work;
  const std::string c = "transformer.h.0.attn.c_attn";
  // c_attn is stored [in, out] = [64, 192]: lora_A [r, in], lora_B [out, r].
  auto [a, b] = pair(c, 4, kHidden, 3 * kHidden, 11);
  Tensor bias{
      "base_model.model." + c + ".lora_B.bias", {3 * kHidden}, values(3 * kHidden, 12, 0.5)};
  write_adapter(work / "ad",
                config({{"fan_in_fan_out", true},
                        {"lora_bias", true},
                        {"target_modules", {"c_attn"}},
                        {"lora_alpha", 2}}),
                {a, b, bias});
  const auto base = io::Model::open(path("gpt2").string());
  const auto m = open("gpt2", work / "ad");
  expect_close(
      read_all(*m, c + ".weight"),
      lora_ref(read_all(*base, c + ".weight"), kHidden, 3 * kHidden, a.v, b.v, 4, 0.5, true), c);
  std::vector<double> want = read_all(*base, c + ".bias");
  for (size_t i = 0; i < want.size(); ++i) want[i] += 0.5 * bias.v[i];
  expect_close(read_all(*m, c + ".bias"), want, c + ".bias");
}

TEST_F(LoraBake, EmbeddingAdapterAddsTransposedProduct) {
  TempDir work;
  const std::string e = "model.embed_tokens";
  // lora_embedding_A [r, vocab], lora_embedding_B [dim, r]; delta = (B·A)ᵀ · s.
  Tensor a{"base_model.model." + e + ".lora_embedding_A", {4, kVocab}, values(4 * kVocab, 21, 0.5)};
  Tensor b{
      "base_model.model." + e + ".lora_embedding_B", {kHidden, 4}, values(kHidden * 4, 22, 0.5)};
  write_adapter(work / "ad", config({{"target_modules", {"embed_tokens"}}}), {a, b});
  const auto base = io::Model::open(path("llama").string());
  expect_close(read_all(*open("llama", work / "ad"), e + ".weight"),
               lora_ref(read_all(*base, e + ".weight"), kVocab, kHidden, a.v, b.v, 4, 2.0, true),
               e);
}

TEST_F(LoraBake, DoraScalesEachOutputRowToItsMagnitude) {
  TempDir work;
  const std::string o = "model.layers.0.mlp.down_proj";  // [64, 128]
  auto [a, b] = pair(o, 4, kInter, kHidden, 31);
  Tensor mag{
      "base_model.model." + o + ".lora_magnitude_vector", {kHidden}, values(kHidden, 32, 1.0)};
  for (double& x : mag.v) x = 0.5 + std::abs(x);
  write_adapter(work / "ad", config({{"use_dora", true}, {"target_modules", {"down_proj"}}}),
                {a, b, mag});
  const auto base = io::Model::open(path("llama").string());
  const auto v = lora_ref(read_all(*base, o + ".weight"), kHidden, kInter, a.v, b.v, 4, 2.0, false);
  expect_close(read_all(*open("llama", work / "ad"), o + ".weight"),
               dora_ref(v, kHidden, kInter, mag.v, /*per_row=*/true), o);
}

TEST_F(LoraBake, DoraOnStoredInOutAndEmbeddingsNormalisesColumns) {
  TempDir work;
  const std::string c = "transformer.h.1.mlp.c_fc";  // [64, 128] = [in, out]
  auto [a, b] = pair(c, 2, kHidden, kInter, 41);
  Tensor mag{"base_model.model." + c + ".lora_magnitude_vector", {kInter}, values(kInter, 42, 1)};
  const std::string e = "transformer.wte";
  Tensor ea{"base_model.model." + e + ".lora_embedding_A", {2, kVocab}, values(2 * kVocab, 43, 1)};
  Tensor eb{
      "base_model.model." + e + ".lora_embedding_B", {kHidden, 2}, values(kHidden * 2, 44, 1)};
  // Older PEFT files: the magnitude under ".weight".
  Tensor em{
      "base_model.model." + e + ".lora_magnitude_vector.weight", {kHidden}, values(kHidden, 45, 1)};
  write_adapter(work / "ad",
                config({{"use_dora", true},
                        {"fan_in_fan_out", true},
                        {"r", 2},
                        {"lora_alpha", 3},
                        {"target_modules", {"c_fc", "wte"}}}),
                {a, b, mag, ea, eb, em});
  const auto base = io::Model::open(path("gpt2").string());
  const auto m = open("gpt2", work / "ad");
  const auto v = lora_ref(read_all(*base, c + ".weight"), kHidden, kInter, a.v, b.v, 2, 1.5, true);
  expect_close(read_all(*m, c + ".weight"), dora_ref(v, kHidden, kInter, mag.v, false), c);
  const auto ve =
      lora_ref(read_all(*base, e + ".weight"), kVocab, kHidden, ea.v, eb.v, 2, 1.5, true);
  expect_close(read_all(*m, e + ".weight"), dora_ref(ve, kVocab, kHidden, em.v, false), e);
}

TEST_F(LoraBake, ModulesToSaveReplaceTensorsInTheBaseDtype) {
  TempDir work;
  // As PEFT saves them (the module's own names) and as a raw state dict holds them.
  Tensor head{
      "base_model.model.lm_head.weight", {kVocab, kHidden}, values(kVocab * kHidden, 51, 1)};
  Tensor norm{"base_model.model.model.norm.modules_to_save.default.weight",
              {kHidden},
              values(kHidden, 52, 1)};
  Tensor orig{
      "base_model.model.model.norm.original_module.weight", {kHidden}, values(kHidden, 53, 1)};
  auto [a, b] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 54, DType::kBF16);
  write_adapter(work / "ad", config({{"modules_to_save", {"lm_head", "norm"}}}),
                {head, norm, orig, a, b});
  const auto base = io::Model::open(path("llama16").string());
  const auto m = open("llama16", work / "ad");
  // Rounded once to bf16, the base's dtype.
  Tensor head16 = head, norm16 = norm;
  head16.dtype = norm16.dtype = DType::kBF16;
  EXPECT_EQ(read_all(*m, "lm_head.weight"), stored(head16));
  EXPECT_EQ(read_all(*m, "model.norm.weight"), stored(norm16));
  EXPECT_EQ(m->find("lm_head.weight").info->dtype, DType::kBF16);
}

TEST_F(LoraBake, Bf16BaseIsRoundedOnceFromTheExactSum) {
  TempDir work;
  const std::string g = "model.layers.1.mlp.gate_proj";  // [128, 64]
  auto [a, b] = pair(g, 8, kHidden, kInter, 61, DType::kBF16);
  write_adapter(work / "ad",
                config({{"r", 8}, {"lora_alpha", 4}, {"target_modules", {"gate_proj"}}}), {a, b});
  const auto base = io::Model::open(path("llama16").string());
  const auto want = lora_ref(read_all(*base, g + ".weight"), kInter, kHidden, stored(a), stored(b),
                             8, 0.5, false);
  const auto got = read_all(*open("llama16", work / "ad"), g + ".weight");
  ASSERT_EQ(got.size(), want.size());
  size_t exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    // The bf16 value nearest the exact sum (f32 accumulation may tip a near-tie).
    const double ulp = std::ldexp(1.0, std::ilogb(want[i]) - 7);
    EXPECT_LE(std::abs(got[i] - want[i]), 0.5 * ulp * 1.01) << i;
    exact += static_cast<float>(got[i]) ==
             kernels::bf16_to_f32(kernels::f32_to_bf16(static_cast<float>(want[i])));
  }
  EXPECT_GE(exact, got.size() * 99 / 100);
}

TEST_F(LoraBake, AnySubRangeReadEqualsThatPartOfTheWholeTensor) {
  TempDir work;
  const std::string g = "model.layers.0.mlp.up_proj";
  const std::string c = "transformer.h.0.mlp.c_proj";  // [128, 64] stored [in, out]
  auto [a, b] = pair(g, 4, kHidden, kInter, 71);
  Tensor mag{"base_model.model." + g + ".lora_magnitude_vector", {kInter}, values(kInter, 72, 1)};
  auto [ca, cb] = pair(c, 4, kInter, kHidden, 73);
  Tensor cmag{
      "base_model.model." + c + ".lora_magnitude_vector", {kHidden}, values(kHidden, 74, 1)};
  write_adapter(work / "ad", config({{"use_dora", true}}), {a, b, mag});
  write_adapter(
      work / "ad2",
      config({{"use_dora", true}, {"fan_in_fan_out", true}, {"target_modules", {"c_proj"}}}),
      {ca, cb, cmag});
  const auto m16 = open("llama16", work / "ad");
  const auto g2 = open("gpt2", work / "ad2");
  std::mt19937 rng(3);
  for (const auto& [model, name] : {std::pair{m16, g + ".weight"}, std::pair{g2, c + ".weight"}}) {
    const std::string whole = read_bytes(*model, name);
    const io::ModelTensor t = model->find(name);
    for (int i = 0; i < 200; ++i) {
      // Unaligned byte ranges too, from one byte to several rows.
      const uint64_t off = rng() % whole.size();
      const uint64_t size = 1 + rng() % std::min<uint64_t>(whole.size() - off, 3000);
      std::string part(size, '\0');
      t.file->read(*t.info, off, part.data(), size);
      ASSERT_EQ(part, whole.substr(off, size)) << name << " at " << off << " size " << size;
    }
    // Row by row, as a merge with tiny chunks would.
    std::string rows;
    const uint64_t row = t.info->nbytes / t.info->shape[0];
    for (uint64_t r = 0; r < t.info->shape[0]; ++r) {
      std::string part(row, '\0');
      t.file->read(*t.info, r * row, part.data(), row);
      rows += part;
    }
    EXPECT_EQ(rows, whole) << name;
  }
}

TEST_F(LoraBake, AdapterModelBinIsReadThroughThePyTorchReader) {
  // A legacy adapter_model.bin (a torch.save zip archive of f32 tensors) bakes as the same adapter
  // in safetensors does.
  TempDir work;
  auto [a, b] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 81);
  write_adapter(work / "st", config(), {a, b});
  fs::create_directories(work / "bin");
  testing::write_bytes(work / "bin" / "adapter_config.json", config().dump());
  std::vector<testing::BinTensor> sd;
  std::vector<std::pair<std::string, std::string>> storages;
  for (const Tensor* t : {&a, &b}) {
    const std::vector<float> f(t->v.begin(), t->v.end());
    const std::string key = std::to_string(sd.size());
    sd.push_back({t->name, "FloatStorage", key, f.size(), 0, t->shape, {t->shape[1], 1}});
    storages.emplace_back(key, std::string(reinterpret_cast<const char*>(f.data()), f.size() * 4));
  }
  testing::write_bytes(work / "bin" / "adapter_model.bin",
                       testing::archive(testing::state_dict_pickle(sd), storages));
  const auto adapter = io::LoraAdapter::open(work / "bin");
  EXPECT_EQ(adapter->weights_path().filename(), "adapter_model.bin");
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_EQ(read_bytes(*open("llama", work / "bin"), q),
            read_bytes(*open("llama", work / "st"), q));
  // A path to a file inside the folder names the folder.
  EXPECT_EQ(io::LoraAdapter::open(work / "st" / "adapter_config.json")->dir(), work / "st");
}

// ---- merges, evaluation and `smelt plan` through the CLI ---------------------------------------

TEST_F(LoraBake, LinearMergeOfModelPlusAdapterWritesTheBakedTensors) {
  TempDir work;
  const std::string q = "model.layers.0.self_attn.q_proj", d = "model.layers.1.mlp.down_proj";
  auto [qa, qb] = pair(q, 4, kHidden, kHidden, 91, DType::kBF16);
  auto [da, db] = pair(d, 4, kInter, kHidden, 92, DType::kBF16);
  write_adapter(work / "ad", config({{"target_modules", {"q_proj", "down_proj"}}}),
                {qa, qb, da, db});
  const std::string ref = path("llama16").string() + "+" + (work / "ad").string();
  // Weight 1 of one model: the baked model itself. Small chunks: the rows stream.
  testing::write_bytes(work / "one.yml",
                       fmt::format("models:\n  - model: {}\n    parameters: {{weight: 1}}\n"
                                   "merge_method: linear\ndtype: bfloat16\n",
                                   ref));
  auto r = run_smelt("merge -q " + quote(work / "one.yml") + " " + quote(work / "one") +
                     " --chunk-elements 256 -j 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto baked = open("llama16", work / "ad");
  const auto out = io::Model::open((work / "one").string());
  for (const io::ModelTensor& t : baked->tensors()) {
    EXPECT_EQ(read_bytes(*out, t.info->name), read_bytes(*baked, t.info->name)) << t.info->name;
  }
  // base and base+adapter at 0.25 / 0.75, in f32: W + 0.75·s·B·A.
  testing::write_bytes(
      work / "mix.yml",
      fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.25}}\n"
                  "  - model: {}\n    parameters: {{weight: 0.75}}\nmerge_method: linear\n"
                  "dtype: float32\n",
                  path("llama").string(), path("llama").string() + "+" + (work / "ad").string()));
  r = run_smelt("merge -q " + quote(work / "mix.yml") + " " + quote(work / "mix"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto base = io::Model::open(path("llama").string());
  const auto mix = io::Model::open((work / "mix").string());
  expect_close(read_all(*mix, q + ".weight"),
               lora_ref(read_all(*base, q + ".weight"), kHidden, kHidden, stored(qa), stored(qb), 4,
                        0.75 * 2.0, false),
               q);
  expect_close(read_all(*mix, d + ".weight"),
               lora_ref(read_all(*base, d + ".weight"), kHidden, kInter, stored(da), stored(db), 4,
                        0.75 * 2.0, false),
               d);
  // The model card names the merge's references; the adapter folder is untouched input.
  EXPECT_TRUE(fs::exists(work / "ad" / "adapter_model.safetensors"));
}

TEST_F(LoraBake, EvalOfModelPlusAdapterScoresAsTheBakedModel) {
  TempDir work;
  auto [qa, qb] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 101, DType::kBF16);
  Tensor ea{"base_model.model.model.embed_tokens.lora_embedding_A",
            {4, kVocab},
            values(4 * kVocab, 102, 0.5),
            DType::kBF16};
  Tensor eb{"base_model.model.model.embed_tokens.lora_embedding_B",
            {kHidden, 4},
            values(kHidden * 4, 103, 0.5),
            DType::kBF16};
  write_adapter(work / "ad", config({{"target_modules", {"q_proj", "embed_tokens"}}}),
                {qa, qb, ea, eb});
  const std::string ref = path("llama16").string() + "+" + (work / "ad").string();
  testing::write_bytes(work / "one.yml",
                       fmt::format("models:\n  - model: {}\n    parameters: {{weight: 1}}\n"
                                   "merge_method: linear\ndtype: bfloat16\n",
                                   ref));
  auto r = run_smelt("merge -q " + quote(work / "one.yml") + " " + quote(work / "baked"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string text;
  for (int i = 0; i < 30; ++i) text += fmt::format("word{} and {} more; ", i, i * 7 % 13);
  testing::write_bytes(work / "text.txt", text);
  r = run_smelt("eval --json -j 2 --ctx 32 --text " + quote(work / "text.txt") + " " + quote(ref) +
                " " + quote(work / "baked") + " " + quote(path("llama16")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output.substr(r.output.find('{')));
  ASSERT_EQ(j["models"].size(), 3u) << j.dump();
  const double with = j["models"][0]["perplexity"]["ppl"].get<double>();
  EXPECT_EQ(with, j["models"][1]["perplexity"]["ppl"].get<double>());
  EXPECT_NE(with, j["models"][2]["perplexity"]["ppl"].get<double>());
}

class LoraBadAdapter : public LoraBake {
 protected:
  // Runs `smelt plan` on a linear merge of llama+`adapter`; expects failure, returns the output.
  std::string plan_error(const fs::path& adapter, const std::string& model = "llama") {
    TempDir work;
    testing::write_bytes(work / "c.yml",
                         fmt::format("models:\n  - model: {}\n    parameters: {{weight: 1}}\n"
                                     "merge_method: linear\n",
                                     path(model).string() + "+" + adapter.string()));
    auto r = run_smelt("plan " + quote(work / "c.yml"));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_HAS(r.output, "models[0].model");
    return r.output;
  }
  TempDir work_;
};

TEST_F(LoraBadAdapter, AdapterForAnotherBaseNamesModuleAndBothShapes) {
  auto [a, b] = pair("model.layers.0.self_attn.q_proj", 4, 96, 96, 1);
  write_adapter(work_ / "ad", config(), {a, b});
  const std::string e = plan_error(work_ / "ad");
  EXPECT_HAS(e, (work_ / "ad" / "adapter_model.safetensors").string());
  EXPECT_HAS(e, "module 'model.layers.0.self_attn.q_proj'");
  EXPECT_HAS(e, "[4, 96]");
  EXPECT_HAS(e, "[64, 64]");
  EXPECT_HAS(e, "another base model");
}

TEST_F(LoraBadAdapter, ModuleTheModelDoesNotHave) {
  auto [a, b] = pair("model.layers.7.self_attn.q_proj", 4, kHidden, kHidden, 1);
  write_adapter(work_ / "ad", config(), {a, b});
  const std::string e = plan_error(work_ / "ad");
  EXPECT_HAS(e, "module 'model.layers.7.self_attn.q_proj'");
  EXPECT_HAS(e, "is not in the model");
  // target_modules that select nothing in the model at all.
  auto [c, d] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 1);
  write_adapter(work_ / "ad2", config({{"target_modules", {"c_attn"}}}), {c, d});
  EXPECT_HAS(plan_error(work_ / "ad2"), "target_modules [c_attn] name no module");
}

TEST_F(LoraBadAdapter, OtherPeftTypesAreRefusedByName) {
  for (const char* type : {"LOHA", "LOKR", "IA3", "ADALORA"}) {
    auto [a, b] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 1);
    const fs::path dir = work_ / type;
    write_adapter(dir, config({{"peft_type", type}}), {a, b});
    const std::string e = plan_error(dir);
    EXPECT_HAS(e, fmt::format("peft_type '{}' is not supported", type));
    EXPECT_HAS(e, (dir / "adapter_config.json").string());
  }
}

TEST_F(LoraBadAdapter, RankZeroNanAndMissingConfig) {
  auto [a, b] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 1);
  write_adapter(work_ / "r0", config({{"r", 0}}), {a, b});
  EXPECT_HAS(plan_error(work_ / "r0"), "\"r\" = 0: a LoRA rank must be a positive integer");

  Tensor nan_b = b;
  nan_b.v[17] = std::nan("");
  write_adapter(work_ / "nan", config(), {a, nan_b});
  const std::string e = plan_error(work_ / "nan");
  EXPECT_HAS(e, "holds NaN (element 17)");
  EXPECT_HAS(e, "lora_B.weight");
  Tensor inf_a = a;
  inf_a.v[3] = INFINITY;
  write_adapter(work_ / "inf", config(), {inf_a, b});
  EXPECT_HAS(plan_error(work_ / "inf"), "holds Inf");

  write_adapter(work_ / "noconf", config(), {a, b});
  fs::remove(work_ / "noconf" / "adapter_config.json");
  EXPECT_HAS(plan_error(work_ / "noconf"), "adapter_config.json is missing");

  EXPECT_HAS(plan_error(work_ / "nowhere"), "LoRA adapter '" + (work_ / "nowhere").string());
}

TEST_F(LoraBadAdapter, InconsistentAdapters) {
  auto [a, b] = pair("model.layers.0.self_attn.q_proj", 4, kHidden, kHidden, 1);
  // rank in the file differs from adapter_config.json's.
  write_adapter(work_ / "rank", config({{"r", 8}}), {a, b});
  EXPECT_HAS(plan_error(work_ / "rank"), "gives this module rank 8");
  // lora_A without lora_B.
  write_adapter(work_ / "half", config(), {a});
  EXPECT_HAS(plan_error(work_ / "half"), "has lora_A.weight but no lora_B.weight");
  // DoRA without magnitudes.
  write_adapter(work_ / "dora", config({{"use_dora", true}}), {a, b});
  EXPECT_HAS(plan_error(work_ / "dora"), "no lora_magnitude_vector");
  // A LoRA bias on a module without a bias.
  Tensor bias{"base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
              {kHidden},
              values(kHidden, 2, 1)};
  write_adapter(work_ / "bias", config({{"lora_bias", true}}), {a, b, bias});
  EXPECT_HAS(plan_error(work_ / "bias"), "has no bias");
  // A replaced tensor of another shape.
  Tensor head{"base_model.model.lm_head.weight",
              {kVocab + 8, kHidden},
              values((kVocab + 8) * kHidden, 3, 1)};
  write_adapter(work_ / "head", config({{"modules_to_save", {"lm_head"}}}), {a, b, head});
  const std::string e = plan_error(work_ / "head");
  EXPECT_HAS(e, "[328, 64]");
  EXPECT_HAS(e, "[320, 64]");
  // Adapters that cannot be baked.
  write_adapter(work_ / "alora", config({{"alora_invocation_tokens", {1, 2}}}), {a, b});
  EXPECT_HAS(plan_error(work_ / "alora"), "alora_invocation_tokens");
  // GGUF bases have other tensor names.
}

TEST(LoraAdapterConfig, PatternsMatchDottedSuffixesInFileOrder) {
  const io::LoraConfig c = io::parse_lora_config(
      R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
          "rank_pattern": {"layers.1.self_attn.q_proj": 2, "q_proj": 4},
          "alpha_pattern": {"model.layers.0.mlp.down_proj": 5}})",
      "c.json");
  EXPECT_EQ(c.rank_of("model.layers.1.self_attn.q_proj"), 2);
  EXPECT_EQ(c.rank_of("model.layers.0.self_attn.q_proj"), 4);
  EXPECT_EQ(c.rank_of("model.layers.0.self_attn.xq_proj"), 8);  // not a dotted suffix
  EXPECT_EQ(c.rank_of("model.layers.0.self_attn.k_proj"), 8);
  EXPECT_DOUBLE_EQ(c.scaling_of("model.layers.0.mlp.down_proj"), 5.0 / 8);
  EXPECT_DOUBLE_EQ(c.scaling_of("model.layers.1.self_attn.q_proj"), 16.0 / 2);
  auto error = [](const std::string& text) {
    try {
      io::parse_lora_config(text, "c.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_HAS(error(R"({"r": 8})"), "no \"peft_type\"");
  EXPECT_HAS(error(R"({"peft_type": "LORA", "r": -2})"), "positive integer");
  EXPECT_HAS(error(R"({"peft_type": "LORA", "rank_pattern": {"q_proj": 0}})"),
             "rank_pattern['q_proj'] = 0");
  EXPECT_HAS(error(R"({"peft_type": "LORA", "rank_pattern": {"(": 2}})"),
             "not a regular expression");
  EXPECT_HAS(error(R"({"peft_type": "LORA", "bias": "some"})"), "\"bias\" must be");
  EXPECT_HAS(error("[1]"), "must be a JSON object");
}

}  // namespace
}  // namespace smelt
