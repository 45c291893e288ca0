// smelt moe: mixture-of-experts assembly from dense models (docs/moe.md).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"
#include "test_util.h"

namespace smelt {
namespace {

using testing::quote;
using testing::read_bytes;
using testing::run_smelt;
using testing::TempDir;

constexpr int kHidden = 32;
constexpr int kInter = 48;
constexpr int kLayers = 2;

std::string tensor_bytes(const io::Model& m, const std::string& name) {
  const io::ModelTensor t = m.find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return "";
  std::string out(t.info->nbytes, '\0');
  t.file->read(*t.info, 0, out.data(), out.size());
  return out;
}

std::vector<float> tensor_f32(const io::Model& m, const std::string& name) {
  const io::ModelTensor t = m.find(name);
  if (!t.info) return {};
  const std::string raw = tensor_bytes(m, name);
  std::vector<float> v(t.info->numel());
  kernels::to_f32(t.info->dtype, raw.data(), v.data(), v.size());
  return v;
}

// A base and three fine-tunes of it, made once for the whole suite.
class MoeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string common = fmt::format("--hidden {} --intermediate {} --layers {} --heads 4",
                                           kHidden, kInter, kLayers);
    auto mk = [&](const std::string& name, const std::string& extra) {
      const auto r =
          run_smelt("dev make-model " + quote(*dir_ / name) + " " + common + " " + extra);
      ASSERT_EQ(r.exit_code, 0) << r.output;
    };
    mk("base", "--seed 1");
    for (int i = 0; i < 3; ++i) {
      mk("ft" + std::to_string(i),
         fmt::format("--base {} --seed {}", quote(*dir_ / "base"), 10 + i));
    }
    // Same shape but a wider MLP: not a valid expert of base.
    const auto r = run_smelt("dev make-model " + quote(*dir_ / "wide") +
                             fmt::format(" --hidden {} --intermediate {} --layers {} --heads 4 "
                                         "--seed 5",
                                         kHidden, kInter + 16, kLayers));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::filesystem::path p(const std::string& name) { return *dir_ / name; }

  // Writes `yaml` to a config file in a fresh folder and runs smelt moe on it.
  testing::CommandResult moe(const std::string& yaml, const std::string& out,
                             const std::string& flags = "") {
    const auto cfg = work_ / (out + ".yml");
    testing::write_bytes(cfg, yaml);
    return run_smelt("moe " + quote(cfg) + " " + quote(work_ / out) + " -q " + flags);
  }

  std::string config(const std::string& gate_mode, const std::string& extra = "") const {
    std::string y = "base_model: " + p("base").string() + "\ngate_mode: " + gate_mode + "\n" +
                    extra + "experts:\n";
    for (int i = 0; i < 3; ++i)
      y += "  - source_model: " + p("ft" + std::to_string(i)).string() + "\n";
    return y;
  }

  TempDir work_;
  static TempDir* dir_;
};
TempDir* MoeTest::dir_ = nullptr;

TEST_F(MoeTest, RandomMixtralLayout) {
  const auto r = moe(config("random", "dtype: float32\nexperts_per_token: 2\n"), "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work_ / "out").string());
  auto base = io::Model::open(p("base").string());
  // Every non-MLP tensor of the base, byte for byte (base is BF16; the output float32 is exact).
  size_t copied = 0;
  for (const auto& t : base->tensors()) {
    if (t.info->name.find(".mlp.") != std::string::npos) {
      EXPECT_FALSE(out->has(t.info->name)) << t.info->name;
      continue;
    }
    EXPECT_EQ(tensor_f32(*out, t.info->name), tensor_f32(*base, t.info->name)) << t.info->name;
    ++copied;
  }
  EXPECT_GT(copied, 0u);
  const char* slots[][2] = {{"w1", "gate_proj"}, {"w3", "up_proj"}, {"w2", "down_proj"}};
  for (int e = 0; e < 3; ++e) {
    auto ft = io::Model::open(p("ft" + std::to_string(e)).string());
    for (int l = 0; l < kLayers; ++l) {
      for (const auto& s : slots) {
        const std::string name =
            fmt::format("model.layers.{}.block_sparse_moe.experts.{}.{}.weight", l, e, s[0]);
        const std::string src = fmt::format("model.layers.{}.mlp.{}.weight", l, s[1]);
        EXPECT_EQ(tensor_f32(*out, name), tensor_f32(*ft, src)) << name;
        EXPECT_EQ(out->find(name).info->shape, ft->find(src).info->shape);
      }
    }
  }
  for (int l = 0; l < kLayers; ++l) {
    const std::string g = fmt::format("model.layers.{}.block_sparse_moe.gate.weight", l);
    ASSERT_TRUE(out->has(g));
    EXPECT_EQ(out->find(g).info->shape, (std::vector<uint64_t>{3, kHidden}));
  }
  // A router with 3 * 32 * 2 values drawn from N(0, 1).
  std::vector<float> all;
  for (int l = 0; l < kLayers; ++l) {
    auto v = tensor_f32(*out, fmt::format("model.layers.{}.block_sparse_moe.gate.weight", l));
    all.insert(all.end(), v.begin(), v.end());
  }
  double mean = 0, sq = 0;
  for (float x : all) mean += x;
  mean /= all.size();
  for (float x : all) sq += (x - mean) * (x - mean);
  const double sd = std::sqrt(sq / all.size());
  EXPECT_NEAR(mean, 0.0, 0.25);
  EXPECT_NEAR(sd, 1.0, 0.2);
  EXPECT_NE(tensor_f32(*out, "model.layers.0.block_sparse_moe.gate.weight"),
            tensor_f32(*out, "model.layers.1.block_sparse_moe.gate.weight"));

  const auto cfg = nlohmann::json::parse(read_bytes(work_ / "out" / "config.json"));
  EXPECT_EQ(cfg["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(cfg["model_type"], "mixtral");
  EXPECT_EQ(cfg["num_local_experts"], 3);
  EXPECT_EQ(cfg["num_experts_per_tok"], 2);
  EXPECT_EQ(cfg["intermediate_size"], kInter);
  EXPECT_EQ(cfg["hidden_size"], kHidden);
  EXPECT_EQ(cfg["num_hidden_layers"], kLayers);
  EXPECT_TRUE(cfg["sliding_window"].is_null());
  EXPECT_EQ(cfg["torch_dtype"], "float32");
  EXPECT_TRUE(std::filesystem::exists(work_ / "out" / "mergekit_moe_config.yml"));
  EXPECT_FALSE(std::filesystem::exists(work_ / "out" / "mergekit_config.yml"));
  EXPECT_TRUE(std::filesystem::exists(work_ / "out" / "README.md"));
  EXPECT_TRUE(std::filesystem::exists(work_ / "out" / "tokenizer.json") ||
              std::filesystem::exists(work_ / "out" / "tokenizer_config.json"));
}

TEST_F(MoeTest, ExpertBytesExactInInputDtype) {
  // No dtype: the base's torch_dtype (bfloat16, as the inputs): every byte copied unchanged.
  const auto r = moe(config("uniform_random"), "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work_ / "out").string());
  auto base = io::Model::open(p("base").string());
  auto ft2 = io::Model::open(p("ft2").string());
  EXPECT_EQ(tensor_bytes(*out, "model.layers.1.block_sparse_moe.experts.2.w2.weight"),
            tensor_bytes(*ft2, "model.layers.1.mlp.down_proj.weight"));
  EXPECT_EQ(tensor_bytes(*out, "model.layers.0.block_sparse_moe.experts.2.w1.weight"),
            tensor_bytes(*ft2, "model.layers.0.mlp.gate_proj.weight"));
  EXPECT_EQ(tensor_bytes(*out, "model.embed_tokens.weight"),
            tensor_bytes(*base, "model.embed_tokens.weight"));
  EXPECT_EQ(tensor_bytes(*out, "model.layers.0.self_attn.q_proj.weight"),
            tensor_bytes(*base, "model.layers.0.self_attn.q_proj.weight"));
  // uniform_random: within +-1/sqrt(h), spread over most of it.
  const auto g = tensor_f32(*out, "model.layers.0.block_sparse_moe.gate.weight");
  ASSERT_EQ(g.size(), 3u * kHidden);
  const float bound = 1.0f / std::sqrt(static_cast<float>(kHidden));
  float lo = 1, hi = -1;
  for (float x : g) {
    EXPECT_LE(std::fabs(x), bound * 1.01f);
    lo = std::min(lo, x), hi = std::max(hi, x);
  }
  EXPECT_LT(lo, -0.7f * bound);
  EXPECT_GT(hi, 0.7f * bound);
}

TEST_F(MoeTest, DeterministicPerSeedAndThreadCount) {
  const std::string y = config("random");
  ASSERT_EQ(moe(y, "a", "--random-seed 7 -j1").exit_code, 0);
  ASSERT_EQ(moe(y, "b", "--random-seed 7 -j2").exit_code, 0);
  ASSERT_EQ(moe(y, "c", "--random-seed 8 -j2").exit_code, 0);
  auto files = [&](const std::string& d) {
    std::map<std::string, std::string> m;
    for (const auto& f : std::filesystem::directory_iterator(work_ / d)) {
      m[f.path().filename().string()] = read_bytes(f.path());
    }
    return m;
  };
  EXPECT_EQ(files("a"), files("b"));
  auto a = io::Model::open((work_ / "a").string());
  auto c = io::Model::open((work_ / "c").string());
  EXPECT_NE(tensor_bytes(*a, "model.layers.0.block_sparse_moe.gate.weight"),
            tensor_bytes(*c, "model.layers.0.block_sparse_moe.gate.weight"));
  EXPECT_EQ(tensor_bytes(*a, "model.layers.0.block_sparse_moe.experts.1.w3.weight"),
            tensor_bytes(*c, "model.layers.0.block_sparse_moe.experts.1.w3.weight"));
}

TEST_F(MoeTest, ResidualScaleMultipliesDownProj) {
  const std::string y =
      "base_model: " + p("base").string() +
      "\ngate_mode: random\ndtype: float32\nexperts:\n  - source_model: " + p("ft0").string() +
      "\n    residual_scale: 0.5\n  - source_model: " + p("ft1").string() + "\n";
  const auto r = moe(y, "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work_ / "out").string());
  auto ft0 = io::Model::open(p("ft0").string());
  auto got = tensor_f32(*out, "model.layers.0.block_sparse_moe.experts.0.w2.weight");
  auto src = tensor_f32(*ft0, "model.layers.0.mlp.down_proj.weight");
  ASSERT_EQ(got.size(), src.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], src[i] * 0.5f) << i;
  EXPECT_EQ(tensor_f32(*out, "model.layers.0.block_sparse_moe.experts.0.w1.weight"),
            tensor_f32(*ft0, "model.layers.0.mlp.gate_proj.weight"));
}

TEST_F(MoeTest, NoiseScaleAddsGaussianNoiseDeterministically) {
  const std::string y =
      "base_model: " + p("base").string() +
      "\ngate_mode: random\ndtype: float32\nexperts:\n  - source_model: " + p("ft0").string() +
      "\n    noise_scale: 0.01\n    residual_scale: 2\n" +
      "  - source_model: " + p("ft1").string() + "\n";
  ASSERT_EQ(moe(y, "a", "-j1").exit_code, 0);
  ASSERT_EQ(moe(y, "b", "-j2").exit_code, 0);
  EXPECT_EQ(read_bytes(work_ / "a" / "model.safetensors"),
            read_bytes(work_ / "b" / "model.safetensors"));
  auto out = io::Model::open((work_ / "a").string());
  auto ft0 = io::Model::open(p("ft0").string());
  auto ft1 = io::Model::open(p("ft1").string());
  // w1: x + 0.01 N(0, 1); w2: (x + 0.01 N(0, 1)) * 2; expert 1 untouched.
  auto stats = [](const std::vector<float>& got, const std::vector<float>& src, float scale) {
    double s = 0, sq = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double d = got[i] / scale - src[i];
      s += d, sq += d * d;
    }
    const double mean = s / got.size();
    return std::pair{mean, std::sqrt(sq / got.size() - mean * mean)};
  };
  auto [m1, sd1] = stats(tensor_f32(*out, "model.layers.0.block_sparse_moe.experts.0.w1.weight"),
                         tensor_f32(*ft0, "model.layers.0.mlp.gate_proj.weight"), 1.0f);
  EXPECT_NEAR(m1, 0.0, 0.002);
  EXPECT_NEAR(sd1, 0.01, 0.002);
  auto [m2, sd2] = stats(tensor_f32(*out, "model.layers.1.block_sparse_moe.experts.0.w2.weight"),
                         tensor_f32(*ft0, "model.layers.1.mlp.down_proj.weight"), 2.0f);
  EXPECT_NEAR(m2, 0.0, 0.002);
  EXPECT_NEAR(sd2, 0.01, 0.002);
  EXPECT_EQ(tensor_f32(*out, "model.layers.0.block_sparse_moe.experts.1.w3.weight"),
            tensor_f32(*ft1, "model.layers.0.mlp.up_proj.weight"));
  EXPECT_EQ(tensor_f32(*out, "model.embed_tokens.weight"),
            tensor_f32(*io::Model::open(p("base").string()), "model.embed_tokens.weight"));
}

TEST_F(MoeTest, ValidationErrorsNameTheYamlPath) {
  struct Case {
    std::string yaml;
    std::string expect;
  };
  const std::string b = "base_model: " + p("base").string() + "\n";
  const std::string ft0 = "  - source_model: " + p("ft0").string() + "\n";
  const std::string ft1 = "  - source_model: " + p("ft1").string() + "\n";
  const std::vector<Case> cases = {
      {b + "gate_mode: random\nexperts_per_token: 0\nexperts:\n" + ft0 + ft1, "experts_per_token"},
      {b + "gate_mode: random\nexperts_per_token: 3\nexperts:\n" + ft0 + ft1,
       "experts_per_token: 3 is more than the 2 experts"},
      {b + "gate_mode: random\nexperts:\n" + ft0 + "  - source_model: " + p("wide").string() + "\n",
       "experts[1].source_model"},
      {b + "gate_mode: random\nexperts:\n" + ft0 + "  - source_model: " + p("nope").string() + "\n",
       "experts[1].source_model"},
      {b + "gate_mode: random\nexperts:\n" + ft0 + ft0, "--i-understand-this-is-not-useful"},
      {b + "gate_mode: random\nexperts:\n" + ft0 + "  - positive_prompts: [x]\n",
       "experts[1].source_model: missing"},
      {"gate_mode: random\nexperts:\n" + ft0 + ft1, "base_model: missing"},
      {b + "gate_mode: random\ndtype: int3\nexperts:\n" + ft0 + ft1, "dtype: unknown dtype"},
      {b + "gate_mode: random\nexperts: []\n", "experts:"},
      {b + "gate_mode: random\nexperts:\n" + ft0 + "    noise_scale: -1\n" + ft1,
       "experts[0].noise_scale: must be >= 0"},
      {b + "gate_mode: random\nexperts:\n" + ft0 + "    residual_scale: x\n" + ft1,
       "experts[0].residual_scale: expected a number"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto r = moe(cases[i].yaml, "bad" + std::to_string(i));
    EXPECT_EQ(r.exit_code, 1) << cases[i].yaml << r.output;
    EXPECT_NE(r.output.find(cases[i].expect), std::string::npos)
        << "case " << i << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(work_ / ("bad" + std::to_string(i))));
  }
  // The same model twice is allowed with mergekit-moe's flag.
  const auto r = moe(b + "gate_mode: random\nexperts:\n" + ft0 + ft0, "same",
                     "--i-understand-this-is-not-useful-without-training");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(MoeTest, NotesForPromptsUnknownKeysAndIgnoredFlags) {
  const std::string y =
      "base_model: " + p("base").string() +
      "\ngate_mode: random\nexperts_per_tokn: 1\nexperts:\n  - source_model: " + p("ft0").string() +
      "\n    positive_prompts: [code]\n  - source_model: " + p("ft1").string() + "\n";
  testing::write_bytes(work_ / "n.yml", y);
  const auto r = run_smelt("moe " + quote(work_ / "n.yml") + " " + quote(work_ / "n") +
                           " --load-in-4bit --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("experts_per_tokn: unknown key"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("did you mean 'experts_per_token'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("positive_prompts"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--load-in-4bit"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  // Config warnings come before the models are opened, so a failing plan still shows them.
  testing::write_bytes(
      work_ / "m.yml",
      "base_model: " + p("base").string() +
          "\ngate_mode: random\nexprts: 1\nexperts:\n  - source_model: " + p("ft0").string() +
          "\n  - source_model: " + p("missing").string() + "\n");
  const auto m = run_smelt("moe " + quote(work_ / "m.yml") + " " + quote(work_ / "m"));
  EXPECT_EQ(m.exit_code, 1);
  EXPECT_NE(m.output.find("exprts: unknown key"), std::string::npos) << m.output;
  EXPECT_NE(m.output.find("experts[1].source_model"), std::string::npos) << m.output;
}

}  // namespace
}  // namespace smelt
