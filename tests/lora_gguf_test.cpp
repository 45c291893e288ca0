// `smelt lora extract --format gguf`: a llama.cpp LoRA adapter. The file holds what llama.cpp's
// loader checks (KVs, names, shapes, Q/K row order, alpha with per-module ranks), and llama.cpp
// (node-llama-cpp) running the base GGUF with the adapter gives the logits of the GGUF export of
// the baked fine-tune. Bad inputs for GGUF adapters are clear errors.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "llama_cpp_client.h"
#include "smelt/io/gguf.h"
#include "smelt/io/gguf_export.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

struct Tensor {
  std::vector<uint64_t> shape;
  std::vector<float> values;
};
using Tensors = std::map<std::string, Tensor>;

Tensors read_f32_model(const fs::path& file) {
  auto f = io::SafetensorsFile::open(file);
  Tensors out;
  for (const io::TensorInfo& t : f->tensors()) {
    EXPECT_EQ(t.dtype, DType::kF32) << t.name;
    Tensor x{t.shape, std::vector<float>(t.numel())};
    f->read(t, 0, x.values.data(), t.nbytes);
    out[t.name] = std::move(x);
  }
  return out;
}

void write_f32_model(const fs::path& file, const Tensors& tensors) {
  std::vector<io::TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, DType::kF32, t.shape});
  fs::remove(file);
  io::SafetensorsWriter w(file, specs, {{"format", "pt"}});
  size_t i = 0;
  for (const auto& [name, t] : tensors) w.write(i++, 0, t.values.data(), t.values.size() * 4);
  w.finish();
}

// Adds Σ_k u_k v_kᵀ (rank `rank`, Gaussian factors scaled by `scale`) to a 2-D tensor; returns Δ.
std::vector<double> add_low_rank(Tensor& t, size_t rank, double scale, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  const size_t rows = t.shape[0], cols = t.shape[1];
  std::vector<double> u(rows * rank), v(rank * cols), d(rows * cols, 0.0);
  for (double& x : u) x = normal(rng) * scale;
  for (double& x : v) x = normal(rng);
  for (size_t i = 0; i < rows; ++i) {
    for (size_t k = 0; k < rank; ++k) {
      for (size_t j = 0; j < cols; ++j) d[i * cols + j] += u[i * rank + k] * v[k * cols + j];
    }
  }
  // Δ as stored: the f32 difference of the two files.
  for (size_t i = 0; i < d.size(); ++i) {
    const float before = t.values[i];
    t.values[i] = static_cast<float>(before + d[i]);
    d[i] = double(t.values[i]) - before;
  }
  return d;
}

std::vector<float> read_gguf_tensor(const io::GgufFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  if (!t) {
    ADD_FAILURE() << "no tensor " << name;
    return {};
  }
  EXPECT_EQ(t->dtype, DType::kF32) << name;
  std::vector<float> v(t->numel());
  f.read(*t, 0, v.data(), t->nbytes);
  return v;
}

class LoraGguf : public ::testing::Test {
 protected:
  // A tiny llama (tokenizer and all, so llama.cpp loads its GGUF) and a fine-tune of it: rank-3
  // deltas on every linear weight, the embedding and the head, rank 1 on v_proj (so the adapter
  // mixes ranks), norms unchanged unless `change_norm`.
  void make_models(bool change_norm = false) {
    auto made = run_smelt("dev make-model " + quote(dir_ / "base") +
                          " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320 --dtype F32");
    ASSERT_EQ(made.exit_code, 0) << made.output;
    fs::copy(dir_ / "base", dir_ / "ft");
    base_ = read_f32_model(dir_ / "base/model.safetensors");
    Tensors ft = base_;
    std::mt19937 rng(11);
    for (auto& [name, t] : ft) {
      if (t.shape.size() != 2) continue;
      const size_t rank = name.find("v_proj") != std::string::npos ? 1 : 3;
      delta_[name] = add_low_rank(t, rank, 0.05, rng);
    }
    if (change_norm) ft.at("model.layers.0.input_layernorm.weight").values[3] += 0.25f;
    write_f32_model(dir_ / "ft/model.safetensors", ft);
  }
  std::string extract(const std::string& out, const std::string& extra = "") {
    return fmt::format("lora extract --model {} --base {} {} -q --max-rank 3 --sv-epsilon 1e-4 {}",
                       quote(dir_ / "ft"), quote(dir_ / "base"), quote(dir_ / out), extra);
  }
  TempDir dir_;
  Tensors base_;
  std::map<std::string, std::vector<double>> delta_;
};

TEST_F(LoraGguf, FileHoldsWhatLlamaCppLoadsWithDeltasInGgufLayout) {
  make_models();
  auto r = run_smelt(extract("a.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto f = io::GgufFile::open(dir_ / "a.gguf");
  auto kv = [&](const char* key) {
    const io::GgufValue* v = f->find_kv(key);
    EXPECT_NE(v, nullptr) << key;
    return v ? v->to_string() : std::string();
  };
  EXPECT_EQ(kv("general.type"), "adapter");
  EXPECT_EQ(kv("general.architecture"), "llama");
  EXPECT_EQ(kv("adapter.type"), "lora");
  ASSERT_NE(f->find_kv("adapter.lora.alpha"), nullptr);
  EXPECT_EQ(f->find_kv("adapter.lora.alpha")->as_float(), 3.0);
  EXPECT_EQ(f->tensors().size(), 2u * delta_.size());  // every 2-D weight, no norms

  const nlohmann::json config =
      nlohmann::json::parse(testing::read_bytes(dir_ / "base/config.json"));
  const double alpha = 3.0;
  for (const auto& [hf, delta] : delta_) {
    const std::string name = *io::gguf_tensor_name("llama", hf);
    SCOPED_TRACE(name);
    const io::TensorInfo* a_info = f->find(name + ".lora_a");
    const io::TensorInfo* b_info = f->find(name + ".lora_b");
    ASSERT_TRUE(a_info && b_info);
    const std::vector<float> a = read_gguf_tensor(*f, name + ".lora_a");
    const std::vector<float> b = read_gguf_tensor(*f, name + ".lora_b");
    const uint64_t rows = base_.at(hf).shape[0], cols = base_.at(hf).shape[1];
    const bool embedding = name == "token_embd.weight";
    const uint64_t rank = hf.find("v_proj") != std::string::npos ? 1 : 3;
    // llama.cpp: W {in, out} (ggml), a {in, r}, b {r, out}; for token_embd a {r, vocab} and
    // b {r, hidden}. In PyTorch order, reversed.
    if (embedding) {
      EXPECT_EQ(a_info->shape, (std::vector<uint64_t>{rows, rank}));
      EXPECT_EQ(b_info->shape, (std::vector<uint64_t>{cols, rank}));
    } else {
      EXPECT_EQ(a_info->shape, (std::vector<uint64_t>{rank, cols}));
      EXPECT_EQ(b_info->shape, (std::vector<uint64_t>{rows, rank}));
    }
    // scale·(what llama.cpp adds) = Δ in the GGUF's row order (Q/K permuted), within f32
    // rounding of the SVD.
    const double scale = alpha / static_cast<double>(rank);
    const int64_t heads = io::gguf_qk_permute_heads("llama", hf, rows, config);
    double err = 0, norm = 0;
    for (uint64_t i = 0; i < rows; ++i) {
      const uint64_t src = heads ? io::gguf_qk_source_row(i, rows, heads) : i;
      for (uint64_t j = 0; j < cols; ++j) {
        double got = 0;
        for (uint64_t k = 0; k < rank; ++k) {
          got += embedding ? double(a[i * rank + k]) * b[j * rank + k]
                           : double(b[i * rank + k]) * a[k * cols + j];
        }
        got *= scale;
        const double want = delta[src * cols + j];
        err += (got - want) * (got - want);
        norm += want * want;
      }
    }
    EXPECT_LT(std::sqrt(err / norm), 1e-5);
  }
}

TEST_F(LoraGguf, LlamaCppWithTheAdapterMatchesTheBakedFineTune) {
  REQUIRE_NODE_LLAMA_CPP();
  make_models();
  ASSERT_EQ(run_smelt(extract("a.gguf")).exit_code, 0);
  auto r = run_smelt(extract("peft"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The base and the baked fine-tune (base + the PEFT adapter, applied on read) as F32 GGUFs.
  testing::write_bytes(dir_ / "base.yaml", fmt::format("merge_method: passthrough\nmodels:\n"
                                                       "  - model: {}\n",
                                                       (dir_ / "base").string()));
  testing::write_bytes(dir_ / "baked.yaml",
                       fmt::format("merge_method: passthrough\nmodels:\n"
                                   "  - model: {}+{}\n",
                                   (dir_ / "base").string(), (dir_ / "peft").string()));
  for (const char* m : {"base", "baked"}) {
    auto merged = run_smelt(fmt::format("merge {} {} -q --out-type F32",
                                        quote(dir_ / (std::string(m) + ".yaml")),
                                        quote(dir_ / (std::string(m) + ".gguf"))));
    ASSERT_EQ(merged.exit_code, 0) << merged.output;
  }
  const std::vector<int> ids = {1, 3 + 'h', 3 + 'e', 3 + 'l', 3 + 'l', 3 + 'o', 300, 42};
  auto run = [&](const fs::path& gguf, const std::string& adapter) {
    const fs::path work = dir_ / ("work-" + gguf.stem().string() + (adapter.empty() ? "" : "-a"));
    fs::create_directories(work);
    const fs::path node_dir = fs::path(SMELT_SOURCE_DIR) / "tests" / "node";
    auto out = testing::run_command(
        testing::node_command() + " " + quote(node_dir / "llama_eval.mjs") + " " + quote(gguf) +
        " '" + nlohmann::json(ids).dump() + "'" +
        (adapter.empty() ? "" : " --lora " + quote(adapter)) + " 2>" + quote(work / "err"));
    EXPECT_EQ(out.exit_code, 0) << out.output << testing::read_bytes(work / "err");
    return nlohmann::json::parse(out.output)["logits"].get<std::vector<double>>();
  };
  const auto base = run(dir_ / "base.gguf", "");
  const auto baked = run(dir_ / "baked.gguf", "");
  const auto adapted = run(dir_ / "base.gguf", (dir_ / "a.gguf").string());
  ASSERT_EQ(adapted.size(), 320u);
  double err = 0, gap = 0;
  for (size_t i = 0; i < adapted.size(); ++i) {
    err = std::max(err, std::abs(adapted[i] - baked[i]));
    gap = std::max(gap, std::abs(base[i] - baked[i]));
  }
  EXPECT_LT(err, 1e-3) << "llama.cpp with the adapter differs from the baked fine-tune";
  EXPECT_GT(gap, 0.1) << "the fine-tune is too close to the base to tell";
  std::cout << "llama.cpp: base+adapter vs baked max |Δ log_softmax| = " << err
            << " (base vs baked: " << gap << ")\n";
}

TEST_F(LoraGguf, FormatFollowsTheExtensionAndNormChangesAreNamed) {
  make_models(/*change_norm=*/true);
  auto r = run_smelt(extract("a.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("left out: model.layers.0.input_layernorm.weight"), std::string::npos)
      << r.output;
  EXPECT_NO_THROW(io::GgufFile::open(dir_ / "a.gguf"));
  // --format peft with a .gguf name writes a folder; --format gguf without one writes a file.
  ASSERT_EQ(run_smelt(extract("p.gguf", "--format peft")).exit_code, 0);
  EXPECT_TRUE(fs::is_regular_file(dir_ / "p.gguf/adapter_config.json"));
  ASSERT_EQ(run_smelt(extract("adapter", "--format gguf")).exit_code, 0);
  EXPECT_TRUE(fs::is_regular_file(dir_ / "adapter"));
  // An existing file is replaced only with --overwrite.
  r = run_smelt(extract("a.gguf"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(run_smelt(extract("a.gguf", "--overwrite")).exit_code, 0);
}

TEST_F(LoraGguf, BadInputsAreClearErrors) {
  make_models();
  auto r = run_smelt(extract("a.gguf", "--save-module lm_head"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--save-module with --format gguf"), std::string::npos) << r.output;
  r = run_smelt(extract("a.gguf", "--format onnx"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--format 'onnx'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "a.gguf"));

  // A tied head (no lm_head.weight): an embedding pair would reach llama.cpp's output too.
  const Tensors ft_untied = read_f32_model(dir_ / "ft/model.safetensors");
  for (const char* m : {"base", "ft"}) {
    Tensors t = read_f32_model(dir_ / m / "model.safetensors");
    t.erase("lm_head.weight");
    write_f32_model(dir_ / m / "model.safetensors", t);
  }
  r = run_smelt(extract("a.gguf"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("is tied to the output head"), std::string::npos) << r.output;
  r = run_smelt(extract("a.gguf", "-e embed_tokens"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto f = io::GgufFile::open(dir_ / "a.gguf");
  EXPECT_EQ(f->find("token_embd.weight.lora_a"), nullptr);
  EXPECT_NE(f->find("blk.1.ffn_down.weight.lora_b"), nullptr);
  fs::remove(dir_ / "a.gguf");
  write_f32_model(dir_ / "base/model.safetensors", base_);

  // A vocabulary that grew: fine for PEFT (saved full rank), impossible for llama.cpp.
  Tensors ft = ft_untied;
  for (const char* n : {"model.embed_tokens.weight", "lm_head.weight"}) {
    Tensor& t = ft.at(n);
    t.shape[0] += 8;
    t.values.resize(t.shape[0] * t.shape[1], 0.01f);
  }
  write_f32_model(dir_ / "ft/model.safetensors", ft);
  r = run_smelt(extract("a.gguf"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("a llama.cpp adapter cannot change the vocabulary"), std::string::npos)
      << r.output;

  // An architecture GGUF export does not know.
  testing::write_bytes(dir_ / "base/config.json",
                       R"({"architectures": ["FalconForCausalLM"], "model_type": "falcon"})");
  r = run_smelt(extract("a.gguf"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not supported yet"), std::string::npos) << r.output;
  fs::remove(dir_ / "base/config.json");
  r = run_smelt(extract("a.gguf"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("has no config.json"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "a.gguf"));
}

}  // namespace
}  // namespace smelt
