// `smelt lora extract`: a fine-tune built as base + an exact low-rank delta is reconstructed to
// f32 rounding (B·A checked in the test, and W_base + s·B·A against W_ft), the randomized SVD
// within 1e-4, truncation keeps the top singular directions (Eckart–Young error), outputs are
// bit-identical across thread counts, and bad inputs give clear errors.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "smelt/lora/peft_config.h"
#include "smelt/lora/svd.h"
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

// Writes `tensors` as an F32 model folder (model.safetensors and a llama config.json).
void write_model(const fs::path& dir, const Tensors& tensors) {
  fs::create_directories(dir);
  std::vector<io::TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, DType::kF32, t.shape});
  io::SafetensorsWriter w(dir / "model.safetensors", specs, {{"format", "pt"}});
  size_t i = 0;
  for (const auto& [name, t] : tensors) w.write(i++, 0, t.values.data(), t.values.size() * 4);
  w.finish();
  testing::write_bytes(dir / "config.json",
                       R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})");
}

Tensors read_file(const fs::path& path) {
  auto f = io::SafetensorsFile::open(path);
  Tensors out;
  for (const io::TensorInfo& t : f->tensors()) {
    std::vector<char> raw(t.nbytes);
    f->read(t, 0, raw.data(), t.nbytes);
    Tensor x{t.shape, std::vector<float>(t.numel())};
    kernels::to_f32(t.dtype, raw.data(), x.values.data(), x.values.size());
    out[t.name] = std::move(x);
  }
  return out;
}

constexpr int kHidden = 16, kInter = 24, kVocab = 40, kKv = 8;

// A small llama-named base model, values N(0, 0.02).
Tensors base_model(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  Tensors m;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    Tensor t{shape, {}};
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    for (uint64_t i = 0; i < n; ++i) t.values.push_back(shape.size() == 1 ? 1.0f : normal(rng));
    m[name] = std::move(t);
  };
  add("model.embed_tokens.weight", {kVocab, kHidden});
  for (int l = 0; l < 2; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "self_attn.q_proj.weight", {kHidden, kHidden});
    add(p + "self_attn.k_proj.weight", {kKv, kHidden});
    add(p + "self_attn.v_proj.weight", {kKv, kHidden});
    add(p + "self_attn.o_proj.weight", {kHidden, kHidden});
    add(p + "mlp.gate_proj.weight", {kInter, kHidden});
    add(p + "mlp.up_proj.weight", {kInter, kHidden});
    add(p + "mlp.down_proj.weight", {kHidden, kInter});
    add(p + "input_layernorm.weight", {kHidden});
    add(p + "post_attention_layernorm.weight", {kHidden});
  }
  add("model.norm.weight", {kHidden});
  add("lm_head.weight", {kVocab, kHidden});
  return m;
}

// k orthonormal vectors of length n (Gram–Schmidt on Gaussian vectors, in double).
std::vector<std::vector<double>> orthonormal(size_t n, size_t k, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> q;
  while (q.size() < k) {
    std::vector<double> v(n);
    for (double& x : v) x = normal(rng);
    for (const auto& u : q) {
      double d = 0;
      for (size_t i = 0; i < n; ++i) d += u[i] * v[i];
      for (size_t i = 0; i < n; ++i) v[i] -= d * u[i];
    }
    double norm = 0;
    for (double x : v) norm += x * x;
    norm = std::sqrt(norm);
    for (double& x : v) x /= norm;
    q.push_back(v);
  }
  return q;
}

// Δ = Σ_k σ_k u_k v_kᵀ (rows×cols) with random orthonormal u, v.
std::vector<double> low_rank_delta(size_t rows, size_t cols, const std::vector<double>& sigma,
                                   std::mt19937& rng) {
  const auto u = orthonormal(rows, sigma.size(), rng);
  const auto v = orthonormal(cols, sigma.size(), rng);
  std::vector<double> d(rows * cols, 0.0);
  for (size_t k = 0; k < sigma.size(); ++k) {
    for (size_t i = 0; i < rows; ++i) {
      for (size_t j = 0; j < cols; ++j) d[i * cols + j] += sigma[k] * u[k][i] * v[k][j];
    }
  }
  return d;
}

bool is_linear(const std::string& name) {
  return name.find("_proj") != std::string::npos || name == "lm_head.weight";
}

// A fine-tune: base + a low-rank delta on every linear weight (singular values `sigma`, scaled
// per tensor) and on the embeddings when `embed`.
Tensors fine_tune(const Tensors& base, const std::vector<double>& sigma, bool embed,
                  uint32_t seed) {
  std::mt19937 rng(seed);
  Tensors ft = base;
  for (auto& [name, t] : ft) {
    if (!is_linear(name) && !(embed && name == "model.embed_tokens.weight")) continue;
    const auto d = low_rank_delta(t.shape[0], t.shape[1], sigma, rng);
    for (size_t i = 0; i < d.size(); ++i) t.values[i] += static_cast<float>(d[i]);
  }
  return ft;
}

// B·A in double (rows of B × columns of A).
std::vector<double> product(const Tensor& b, const Tensor& a) {
  const size_t m = b.shape[0], r = b.shape[1], n = a.shape[1];
  EXPECT_EQ(a.shape[0], r);
  std::vector<double> c(m * n, 0.0);
  for (size_t i = 0; i < m; ++i) {
    for (size_t k = 0; k < r; ++k) {
      for (size_t j = 0; j < n; ++j)
        c[i * n + j] += double(b.values[i * r + k]) * a.values[k * n + j];
    }
  }
  return c;
}

// ‖x − y‖_F / ‖y‖_F.
double rel_diff(const std::vector<double>& x, const std::vector<double>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += y[i] * y[i];
  return std::sqrt(num / den);
}

// ft − base of one tensor, as the f32 files hold them.
std::vector<double> stored_delta(const Tensors& ft, const Tensors& base, const std::string& n) {
  std::vector<double> d;
  for (size_t i = 0; i < ft.at(n).values.size(); ++i) {
    d.push_back(double(ft.at(n).values[i]) - base.at(n).values[i]);
  }
  return d;
}

nlohmann::json read_config(const fs::path& out) {
  return nlohmann::json::parse(testing::read_bytes(out / "adapter_config.json"));
}

class LoraExtract : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = base_model(1);
    write_model(dir_ / "base", base_);
  }
  fs::path make_ft(const std::vector<double>& sigma, bool embed = false) {
    ft_ = fine_tune(base_, sigma, embed, 7);
    write_model(dir_ / "ft", ft_);
    return dir_ / "ft";
  }
  std::string args(const std::string& out, const std::string& extra) {
    return fmt::format("lora extract --model {} --base {} {} -q {}", quote(dir_ / "ft"),
                       quote(dir_ / "base"), quote(dir_ / out), extra);
  }
  TempDir dir_;
  Tensors base_, ft_;
};

TEST_F(LoraExtract, ExactRankDeltaReconstructsToF32Rounding) {
  make_ft({0.5, 0.3, 0.2, 0.1});
  auto r = run_smelt(args("lora", "--max-rank 4"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("relative reconstruction error"), std::string::npos) << r.output;
  const Tensors a = read_file(dir_ / "lora/adapter_model.safetensors");
  const nlohmann::json cfg = read_config(dir_ / "lora");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 4.0);
  EXPECT_TRUE(cfg["rank_pattern"].empty());
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"down_proj", "gate_proj", "k_proj", "lm_head",
                                                   "o_proj", "q_proj", "up_proj", "v_proj"}));
  // Embeddings and norms are saved full rank, as modules_to_save.
  const auto& mts = cfg["modules_to_save"];
  EXPECT_NE(std::find(mts.begin(), mts.end(), "model.embed_tokens"), mts.end());
  EXPECT_NE(std::find(mts.begin(), mts.end(), "model.layers.1.input_layernorm"), mts.end());
  ASSERT_TRUE(a.contains("base_model.model.model.embed_tokens.weight"));
  EXPECT_EQ(a.at("base_model.model.model.embed_tokens.weight").values,
            ft_.at("model.embed_tokens.weight").values);
  lora::PeftConfig pc = lora::parse_peft_config(cfg.dump(), "adapter_config.json");
  size_t checked = 0;
  for (const auto& [name, t] : base_) {
    if (!is_linear(name)) continue;
    const std::string module = name.substr(0, name.size() - 7);
    const std::string p = "base_model.model." + module;
    ASSERT_TRUE(a.contains(p + ".lora_A.weight")) << p;
    const Tensor& la = a.at(p + ".lora_A.weight");
    const Tensor& lb = a.at(p + ".lora_B.weight");
    EXPECT_EQ(la.shape, (std::vector<uint64_t>{4, t.shape[1]}));
    EXPECT_EQ(lb.shape, (std::vector<uint64_t>{t.shape[0], 4}));
    const std::vector<double> ba = product(lb, la);
    EXPECT_LT(rel_diff(ba, stored_delta(ft_, base_, name)), 2e-6) << name;
    // Baked as PEFT does: W_base + s·B·A against the fine-tuned weight.
    const double s = lora::module_scaling(pc, module);
    EXPECT_EQ(s, 1.0);
    double worst = 0;
    for (size_t i = 0; i < ba.size(); ++i) {
      worst =
          std::max(worst, std::fabs(base_.at(name).values[i] + s * ba[i] - ft_.at(name).values[i]));
    }
    EXPECT_LT(worst, 1e-6) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 15u);
  const std::string readme = testing::read_bytes(dir_ / "lora/README.md");
  EXPECT_NE(readme.find("| model.layers.0.self_attn.q_proj | [16, 16] | lora | 4 |"),
            std::string::npos)
      << readme;
}

TEST_F(LoraExtract, RandomizedWithin1e4) {
  make_ft({0.5, 0.3, 0.2, 0.1});
  auto r = run_smelt(args("lora", "--max-rank 4 --randomized --oversample 2 --seed 3"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors a = read_file(dir_ / "lora/adapter_model.safetensors");
  for (const auto& [name, t] : base_) {
    if (!is_linear(name)) continue;
    const std::string p = "base_model.model." + name.substr(0, name.size() - 7);
    const auto ba = product(a.at(p + ".lora_B.weight"), a.at(p + ".lora_A.weight"));
    EXPECT_LT(rel_diff(ba, stored_delta(ft_, base_, name)), 1e-4) << name;
  }
}

TEST(LoraSvd, RandomizedMatchesExactOnLargeLowRankMatrix) {
  // 200×150 of rank 5 plus tiny noise: the randomized range finder (l = 15 < 150) finds it.
  std::mt19937 rng(5);
  auto d = low_rank_delta(200, 150, {5, 4, 3, 2, 1}, rng);
  std::vector<float> f(d.begin(), d.end());
  lora::RandomizedSvdOptions o;
  o.key = 42;
  const lora::TruncatedSvd r = lora::randomized_svd(f.data(), 200, 150, 5, o);
  ASSERT_EQ(r.k, 5u);
  for (size_t k = 0; k < 5; ++k) EXPECT_NEAR(r.s[k], 5.0 - k, 1e-4);
  const lora::TruncatedSvd again = lora::randomized_svd(f.data(), 200, 150, 5, o);
  EXPECT_EQ(again.u, r.u);
  EXPECT_EQ(again.vt, r.vt);
}

// Δ of rank 6 with known σ, cut to rank 3: the error is Eckart–Young's √(Σ dropped σ²)/‖Δ‖, B·A is
// the sum of the top three directions, and with distribute-scale each row of A has norm √σ_k.
TEST_F(LoraExtract, TruncationKeepsTopSingularDirections) {
  const std::vector<double> sigma = {0.6, 0.5, 0.4, 0.3, 0.2, 0.1};
  // Rebuild the q_proj delta's parts to know its top-3 part exactly.
  make_ft(sigma);
  std::mt19937 rng(7);
  // fine_tune visits tensors in name order; lm_head.weight is first.
  const auto head_delta = low_rank_delta(kVocab, kHidden, sigma, rng);
  std::mt19937 rng2(7);
  const auto u = orthonormal(kVocab, 6, rng2);
  const auto v = orthonormal(kHidden, 6, rng2);
  std::vector<double> top3(kVocab * kHidden, 0.0);
  for (size_t k = 0; k < 3; ++k) {
    for (size_t i = 0; i < kVocab; ++i) {
      for (size_t j = 0; j < kHidden; ++j) top3[i * kHidden + j] += sigma[k] * u[k][i] * v[k][j];
    }
  }
  ASSERT_LT(rel_diff(head_delta, stored_delta(ft_, base_, "lm_head.weight")), 1e-5);
  const double expected =
      std::sqrt((0.09 + 0.04 + 0.01) / (0.36 + 0.25 + 0.16 + 0.09 + 0.04 + 0.01));
  for (const char* flag : {"", "--no-distribute-scale"}) {
    const std::string out = std::string("lora") + (*flag ? "-nd" : "");
    auto r = run_smelt(args(out, std::string("--max-rank 3 ") + flag));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Tensors a = read_file(dir_ / out / "adapter_model.safetensors");
    const Tensor& la = a.at("base_model.model.lm_head.lora_A.weight");
    const Tensor& lb = a.at("base_model.model.lm_head.lora_B.weight");
    const auto ba = product(lb, la);
    EXPECT_NEAR(rel_diff(ba, stored_delta(ft_, base_, "lm_head.weight")), expected, 1e-4);
    EXPECT_LT(rel_diff(ba, top3), 1e-4);
    for (size_t k = 0; k < 3; ++k) {
      double row = 0, col = 0;
      for (size_t j = 0; j < kHidden; ++j)
        row += double(la.values[k * kHidden + j]) * la.values[k * kHidden + j];
      for (size_t i = 0; i < kVocab; ++i)
        col += double(lb.values[i * 3 + k]) * lb.values[i * 3 + k];
      if (*flag) {
        EXPECT_NEAR(std::sqrt(row), sigma[k], 1e-5);  // A = S Vᵀ
        EXPECT_NEAR(col, 1.0, 1e-5);                  // B = U
      } else {
        EXPECT_NEAR(row, sigma[k], 1e-5);  // A = √S Vᵀ
        EXPECT_NEAR(col, sigma[k], 1e-5);  // B = U √S
      }
    }
    const std::string readme = testing::read_bytes(dir_ / out / "README.md");
    const std::string row = "| lm_head | [40, 16] | lora | 3 | ";
    const size_t at = readme.find(row);
    ASSERT_NE(at, std::string::npos) << readme;
    // The reported error (√(1 − Σ_{k≤3} σ_k² / ‖Δ‖²) here, the closed form) is Eckart–Young's.
    EXPECT_NEAR(std::stod(readme.substr(at + row.size())), expected, 1e-4) << readme;
  }
}

TEST_F(LoraExtract, OutputIdenticalAcrossThreadCounts) {
  make_ft({0.5, 0.3, 0.2, 0.1, 0.05}, true);
  for (const char* mode : {"", "--randomized --oversample 3"}) {
    const std::string extra = std::string("--max-rank 3 --embed-lora ") + mode;
    ASSERT_EQ(run_smelt(args("j1", extra + " -j 1")).exit_code, 0);
    ASSERT_EQ(run_smelt(args("j2", extra + " -j 2")).exit_code, 0);
    EXPECT_EQ(testing::read_bytes(dir_ / "j1/adapter_model.safetensors"),
              testing::read_bytes(dir_ / "j2/adapter_model.safetensors"))
        << mode;
    EXPECT_EQ(testing::read_bytes(dir_ / "j1/adapter_config.json"),
              testing::read_bytes(dir_ / "j2/adapter_config.json"));
    fs::remove_all(dir_ / "j1");
    fs::remove_all(dir_ / "j2");
  }
}

TEST_F(LoraExtract, EmbedLoraDecomposesTransposed) {
  make_ft({0.5, 0.3}, true);
  auto r = run_smelt(args("lora", "--max-rank 2 --embed-lora --skip-undecomposable"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors a = read_file(dir_ / "lora/adapter_model.safetensors");
  const Tensor& ea = a.at("base_model.model.model.embed_tokens.lora_embedding_A");
  const Tensor& eb = a.at("base_model.model.model.embed_tokens.lora_embedding_B");
  EXPECT_EQ(ea.shape, (std::vector<uint64_t>{2, kVocab}));
  EXPECT_EQ(eb.shape, (std::vector<uint64_t>{kHidden, 2}));
  // PEFT: ΔW = (B A)ᵀ.
  const auto ba = product(eb, ea);
  std::vector<double> bat(ba.size());
  for (size_t i = 0; i < kHidden; ++i) {
    for (size_t j = 0; j < kVocab; ++j) bat[j * kHidden + i] = ba[i * kVocab + j];
  }
  EXPECT_LT(rel_diff(bat, stored_delta(ft_, base_, "model.embed_tokens.weight")), 2e-6);
  const nlohmann::json cfg = read_config(dir_ / "lora");
  EXPECT_TRUE(cfg["modules_to_save"].is_null()) << cfg.dump();  // norms skipped
  for (const auto& [name, t] : a) EXPECT_EQ(name.find("norm"), std::string::npos) << name;
}

TEST_F(LoraExtract, FiltersSaveModulesAndRankPattern) {
  make_ft({0.5, 0.3, 0.2});
  auto r = run_smelt(args("lora",
                          "--max-rank 3 -i 'q_proj|down_proj' -e 'layers\\.1\\.' "
                          "--save-module lm_head --skip-undecomposable"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors a = read_file(dir_ / "lora/adapter_model.safetensors");
  std::vector<std::string> names;
  for (const auto& [name, t] : a) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "base_model.model.lm_head.weight",
                       "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
                       "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
                       "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                       "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"}));
  EXPECT_EQ(a.at("base_model.model.lm_head.weight").values, ft_.at("lm_head.weight").values);
  const nlohmann::json cfg = read_config(dir_ / "lora");
  EXPECT_EQ(cfg["modules_to_save"], nlohmann::json({"lm_head"}));
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"down_proj", "q_proj"}));

  // --sv-epsilon between σ_2 and σ_3 scaled: only modules whose third value is above it keep 3.
  // σ are the same for every module, so ε = 0.25 gives rank 2 everywhere: config r = 2.
  r = run_smelt(args("eps", "--max-rank 3 --sv-epsilon 0.25 -i q_proj"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_config(dir_ / "eps")["r"], 2);
  // A rank cap above one module's size: k_proj (8 rows) gets 8, the others 10 → rank_pattern.
  r = run_smelt(args("pat", "--max-rank 10 -i 'k_proj|q_proj' -e 'layers\\.1'"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json pat = read_config(dir_ / "pat");
  EXPECT_EQ(pat["r"], 10);
  EXPECT_EQ(pat["rank_pattern"], nlohmann::json({{"model.layers.0.self_attn.k_proj", 8}}));
  EXPECT_EQ(pat["alpha_pattern"], nlohmann::json({{"model.layers.0.self_attn.k_proj", 8.0}}));
  lora::PeftConfig pc = lora::parse_peft_config(pat.dump(), "pat");
  EXPECT_EQ(lora::module_rank(pc, "model.layers.0.self_attn.k_proj"), 8u);
  EXPECT_EQ(lora::module_scaling(pc, "model.layers.0.self_attn.k_proj"), 1.0);
  EXPECT_EQ(lora::module_rank(pc, "model.layers.0.self_attn.q_proj"), 10u);
}

TEST_F(LoraExtract, BadInputsAreClearErrors) {
  make_ft({0.5});
  auto r = run_smelt(args("x", "--max-rank 0"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--max-rank must be at least 1"), std::string::npos) << r.output;
  r = run_smelt(args("x", "-i 'no_such_module'"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--include-regex 'no_such_module' matches no module"), std::string::npos)
      << r.output;
  r = run_smelt(args("x", "-i '('"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not a valid regular expression"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "x"));
  // OUT inside an input, and an existing non-empty OUT.
  r = run_smelt(fmt::format("lora extract --model {} --base {} {} -q", quote(dir_ / "ft"),
                            quote(dir_ / "base"), quote(dir_ / "base/lora")));
  EXPECT_NE(r.exit_code, 0) << r.output;
  fs::create_directories(dir_ / "busy");
  testing::write_bytes(dir_ / "busy/notes.txt", "mine");
  r = run_smelt(args("busy", "--overwrite"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(testing::read_bytes(dir_ / "busy/notes.txt"), "mine");
  // A second run over a finished adapter: refused, then replaced with --overwrite.
  ASSERT_EQ(run_smelt(args("ok", "--max-rank 1")).exit_code, 0);
  EXPECT_NE(run_smelt(args("ok", "--max-rank 1")).exit_code, 0);
  EXPECT_EQ(run_smelt(args("ok", "--max-rank 1 --overwrite")).exit_code, 0);
  // Shape mismatch names the tensor and both shapes.
  Tensors other = ft_;
  other["model.layers.0.mlp.up_proj.weight"] =
      Tensor{{kInter + 1, kHidden}, std::vector<float>((kInter + 1) * kHidden)};
  write_model(dir_ / "ft2", other);
  r = run_smelt(fmt::format("lora extract --model {} --base {} {} -q", quote(dir_ / "ft2"),
                            quote(dir_ / "base"), quote(dir_ / "y")));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("tensor 'model.layers.0.mlp.up_proj.weight': shape [25, 16] in the "
                          "fine-tuned model, [24, 16] in the base"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace smelt
