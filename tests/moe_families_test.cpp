// smelt moe's output families besides Mixtral (docs/moe.md, "Output architectures"): the Qwen MoE,
// DeepSeek MoE and Qwen3 MoE layouts and config.json keys, the choice among the families, and
// the refusals that name the YAML key.
#include <fmt/format.h>
#include <gtest/gtest.h>

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

std::vector<float> tensor_f32(const io::Model& m, const std::string& name) {
  const io::ModelTensor t = m.find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return {};
  std::string raw(t.info->nbytes, '\0');
  t.file->read(*t.info, 0, raw.data(), raw.size());
  std::vector<float> v(t.info->numel());
  kernels::to_f32(t.info->dtype, raw.data(), v.data(), v.size());
  return v;
}

// llama models (a base and three fine-tunes), qwen3 models and a qwen2 model, made once.
class MoeFamilies : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string common =
        fmt::format("--hidden {} --intermediate {} --layers {} --heads 4 --kv-heads 2", kHidden,
                    kInter, kLayers);
    auto mk = [&](const std::string& name, const std::string& extra) {
      const auto r =
          run_smelt("dev make-model " + quote(*dir_ / name) + " " + common + " " + extra);
      ASSERT_EQ(r.exit_code, 0) << r.output;
    };
    mk("base", "--seed 1");
    for (int i = 0; i < 3; ++i) mk("ft" + std::to_string(i), fmt::format("--seed {}", 10 + i));
    const std::string q3 = "--arch Qwen3ForCausalLM --model-type qwen3";
    mk("q3base", q3 + " --seed 20");
    mk("q3a", q3 + " --seed 21");
    mk("q3b", q3 + " --seed 22");
    mk("q2", "--arch Qwen2ForCausalLM --model-type qwen2 --seed 30");
    mk("q2b", "--arch Qwen2ForCausalLM --model-type qwen2 --seed 31");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string p(const std::string& name) { return (*dir_ / name).string(); }

  testing::CommandResult moe(const std::string& yaml, const std::string& out,
                             const std::string& flags = "") {
    const auto cfg = work_ / (out + ".yml");
    testing::write_bytes(cfg, yaml);
    return run_smelt("moe " + quote(cfg) + " " + quote(work_ / out) + " " + flags);
  }
  nlohmann::json out_config(const std::string& out) {
    return nlohmann::json::parse(read_bytes(work_ / out / "config.json"));
  }

  // Every expert's (and the shared expert's) MLP under `prefix`-relative names equals its source.
  void expect_experts(const io::Model& out, const std::vector<std::string>& experts,
                      const std::string& shared, const std::string& shared_name) {
    for (int l = 0; l < kLayers; ++l) {
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        const std::string src = fmt::format("model.layers.{}.mlp.{}.weight", l, proj);
        for (size_t e = 0; e < experts.size(); ++e) {
          auto m = io::Model::open(p(experts[e]));
          const std::string name =
              fmt::format("model.layers.{}.mlp.experts.{}.{}.weight", l, e, proj);
          EXPECT_EQ(tensor_f32(out, name), tensor_f32(*m, src)) << name;
        }
        if (!shared.empty()) {
          auto m = io::Model::open(p(shared));
          const std::string name =
              fmt::format("model.layers.{}.mlp.{}.{}.weight", l, shared_name, proj);
          EXPECT_EQ(tensor_f32(out, name), tensor_f32(*m, src)) << name;
        }
      }
    }
  }

  TempDir work_;
  static TempDir* dir_;
};
TempDir* MoeFamilies::dir_ = nullptr;

std::string experts_yaml(const std::vector<std::string>& paths, const std::string& key) {
  std::string y = key + ":\n";
  for (const auto& s : paths) y += "  - source_model: " + s + "\n";
  return y;
}

TEST_F(MoeFamilies, QwenMoeLayoutConfigAndZeroBiases) {
  const std::string y =
      "base_model: " + p("base") + "\ngate_mode: random\ndtype: float32\narchitecture: qwen\n" +
      experts_yaml({p("ft0"), p("ft1")}, "experts") + experts_yaml({p("ft2")}, "shared_experts");
  const auto r = moe(y, "out", "-q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work_ / "out").string());
  auto base = io::Model::open(p("base"));
  for (const auto& t : base->tensors()) {
    if (t.info->name.find(".mlp.") != std::string::npos) {
      EXPECT_FALSE(out->has(t.info->name)) << t.info->name;
      continue;
    }
    EXPECT_EQ(tensor_f32(*out, t.info->name), tensor_f32(*base, t.info->name)) << t.info->name;
  }
  expect_experts(*out, {"ft0", "ft1"}, "ft2", "shared_expert");
  const int hd = kHidden / 4;
  for (int l = 0; l < kLayers; ++l) {
    const std::string m = fmt::format("model.layers.{}.mlp.", l);
    EXPECT_EQ(out->find(m + "gate.weight").info->shape, (std::vector<uint64_t>{2, kHidden}));
    EXPECT_EQ(out->find(m + "shared_expert_gate.weight").info->shape,
              (std::vector<uint64_t>{1, kHidden}));
    const std::string a = fmt::format("model.layers.{}.self_attn.", l);
    EXPECT_EQ(tensor_f32(*out, a + "q_proj.bias"), std::vector<float>(4 * hd, 0.0f));
    EXPECT_EQ(tensor_f32(*out, a + "k_proj.bias"), std::vector<float>(2 * hd, 0.0f));
    EXPECT_EQ(tensor_f32(*out, a + "v_proj.bias"), std::vector<float>(2 * hd, 0.0f));
    EXPECT_FALSE(out->has(a + "o_proj.bias"));
  }
  // 2 layers x (router, shared gate, 3 biases, 3 x 3 MLPs) + the base's non-MLP tensors.
  size_t non_mlp = 0;
  for (const auto& t : base->tensors()) non_mlp += t.info->name.find(".mlp.") == std::string::npos;
  EXPECT_EQ(out->tensors().size(), non_mlp + kLayers * (2 + 3 + 9));
  const auto c = out_config("out");
  EXPECT_EQ(c["architectures"], nlohmann::json::array({"Qwen2MoeForCausalLM"}));
  EXPECT_EQ(c["model_type"], "qwen2_moe");
  EXPECT_EQ(c["num_experts"], 2);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(c["decoder_sparse_step"], 1);
  EXPECT_EQ(c["norm_topk_prob"], true);
  EXPECT_EQ(c["moe_intermediate_size"], kInter);
  EXPECT_EQ(c["shared_expert_intermediate_size"], kInter);
  EXPECT_EQ(c["use_sliding_window"], false);
  EXPECT_TRUE(c["sliding_window"].is_null());
  EXPECT_EQ(c["mlp_only_layers"], nlohmann::json::array());
  EXPECT_EQ(c["torch_dtype"], "float32");
  EXPECT_FALSE(c.contains("num_local_experts"));
}

TEST_F(MoeFamilies, QwenMoeTakesQwen2Inputs) {
  // dev make-model's qwen2 models have no biases: zeros are added as for llama inputs.
  const std::string y = "base_model: " + p("q2") + "\ngate_mode: uniform_random\n" +
                        experts_yaml({p("q2"), p("q2b")}, "experts") +
                        experts_yaml({p("q2b")}, "shared_experts");
  const auto r = moe(y, "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(out_config("out")["model_type"], "qwen2_moe");
  auto out = io::Model::open((work_ / "out").string());
  EXPECT_TRUE(out->has("model.layers.1.self_attn.v_proj.bias"));
}

TEST_F(MoeFamilies, DeepseekIsChosenForAnUngatedSharedExpert) {
  // random router, shared expert without prompts: DeepSeek MoE and Qwen MoE both take it;
  // mergekit's order picks DeepSeek and says so.
  const std::string y = "base_model: " + p("base") + "\ngate_mode: random\ndtype: float32\n" +
                        experts_yaml({p("ft0"), p("ft1")}, "experts") +
                        experts_yaml({p("ft2")}, "shared_experts");
  const auto r = moe(y, "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("DeepSeek MoE, Qwen MoE"), std::string::npos) << r.output;
  auto out = io::Model::open((work_ / "out").string());
  expect_experts(*out, {"ft0", "ft1"}, "ft2", "shared_experts");
  EXPECT_EQ(out->find("model.layers.1.mlp.gate.weight").info->shape,
            (std::vector<uint64_t>{2, kHidden}));
  EXPECT_FALSE(out->has("model.layers.0.mlp.shared_expert_gate.weight"));
  EXPECT_FALSE(out->has("model.layers.0.self_attn.q_proj.bias"));
  const auto c = out_config("out");
  EXPECT_EQ(c["architectures"], nlohmann::json::array({"DeepseekForCausalLM"}));
  EXPECT_EQ(c["model_type"], "deepseek");
  EXPECT_EQ(c["n_routed_experts"], 2);
  EXPECT_EQ(c["n_shared_experts"], 1);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(c["first_k_dense_replace"], 0);
  EXPECT_EQ(c["moe_layer_freq"], 1);
  EXPECT_EQ(c["scoring_func"], "softmax");
  EXPECT_EQ(c["norm_topk_prob"], true);
  EXPECT_EQ(c["moe_intermediate_size"], kInter);
  EXPECT_EQ(c["auto_map"]["AutoModelForCausalLM"],
            "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM");
  // Without a shared expert, architecture: deepseek writes n_shared_experts null.
  const std::string y2 = "base_model: " + p("base") +
                         "\ngate_mode: random\narchitecture: DeepSeek\n" +
                         experts_yaml({p("ft0"), p("ft1")}, "experts");
  ASSERT_EQ(moe(y2, "out2", "-q").exit_code, 0);
  EXPECT_TRUE(out_config("out2")["n_shared_experts"].is_null());
  EXPECT_FALSE(io::Model::open((work_ / "out2").string())
                   ->has("model.layers.0.mlp.shared_experts.up_proj.weight"));
}

TEST_F(MoeFamilies, Qwen3MoeForQwen3Inputs) {
  const std::string y = "base_model: " + p("q3base") +
                        "\ngate_mode: random\ndtype: float32\nexperts_per_token: 1\n" +
                        experts_yaml({p("q3a"), p("q3b")}, "experts");
  const auto r = moe(y, "out", "-q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work_ / "out").string());
  auto base = io::Model::open(p("q3base"));
  expect_experts(*out, {"q3a", "q3b"}, "", "");
  EXPECT_EQ(tensor_f32(*out, "model.layers.1.self_attn.q_norm.weight"),
            tensor_f32(*base, "model.layers.1.self_attn.q_norm.weight"));
  EXPECT_EQ(out->find("model.layers.0.mlp.gate.weight").info->shape,
            (std::vector<uint64_t>{2, kHidden}));
  const auto c = out_config("out");
  EXPECT_EQ(c["architectures"], nlohmann::json::array({"Qwen3MoeForCausalLM"}));
  EXPECT_EQ(c["model_type"], "qwen3_moe");
  EXPECT_EQ(c["num_experts"], 2);
  EXPECT_EQ(c["num_experts_per_tok"], 1);
  EXPECT_EQ(c["decoder_sparse_step"], 1);
  EXPECT_EQ(c["norm_topk_prob"], true);
  EXPECT_EQ(c["moe_intermediate_size"], kInter);
}

TEST_F(MoeFamilies, RefusalsNameTheKeyAndTheFamilies) {
  const std::string b = "base_model: " + p("base") + "\n";
  const std::string ex = experts_yaml({p("ft0"), p("ft1")}, "experts");
  const std::string sh = experts_yaml({p("ft2")}, "shared_experts");
  const std::string sh_prompts = sh + "    positive_prompts: [hello]\n";
  struct Case {
    std::string yaml, expect, flags = "";
  };
  const std::vector<Case> cases = {
      {b + "gate_mode: random\narchitecture: gpt\n" + ex,
       "architecture: \"gpt\" matches no output architecture; give a prefix of one of "
       "\"Mixtral\", \"DeepSeek MoE\", \"Qwen MoE\", \"Qwen3 MoE\""},
      {b + "gate_mode: random\n" + ex + sh + "  - source_model: " + p("ft0") + "\n",
       "shared_experts: 2 shared experts listed"},
      {b + "gate_mode: random\narchitecture: deepseek\n" + ex + sh_prompts,
       "DeepSeek MoE: its shared expert is not gated, so shared_experts[0] takes no prompts"},
      {b + "gate_mode: hidden\narchitecture: qwen\n" + ex + "    positive_prompts: [a]\n" + sh,
       "experts[0].positive_prompts: missing"},
      {b + "gate_mode: random\narchitecture: qwen\n" + ex,
       "Qwen MoE: it needs exactly one shared expert (shared_experts)"},
      {"base_model: " + p("q2") + "\ngate_mode: random\n" +
           experts_yaml({p("q2"), p("q2b")}, "experts"),
       "Mixtral: it takes llama or mistral models"},
      {"base_model: " + p("q3base") + "\ngate_mode: random\narchitecture: mix\n" +
           experts_yaml({p("q3a"), p("q3b")}, "experts"),
       "architecture: no output architecture takes this config (model_type qwen3"},
      {"base_model: " + p("q3base") + "\ngate_mode: random\n" +
           experts_yaml({p("q3a"), p("q3b")}, "experts") + sh,
       "shared_experts[0].source_model: "},
      {b + "gate_mode: random\narchitecture: deepseek\n" + ex + sh,
       "GGUF output of a DeepSeek MoE model", "--format gguf"},
      {b + "gate_mode: random\n" + ex + sh + "    negative_prompts: [x]\n",
       "shared_experts[0].negative_prompts: given without positive_prompts"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto r = moe(cases[i].yaml, "bad" + std::to_string(i), cases[i].flags);
    EXPECT_EQ(r.exit_code, 1) << cases[i].yaml << r.output;
    EXPECT_NE(r.output.find(cases[i].expect), std::string::npos)
        << "case " << i << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(work_ / ("bad" + std::to_string(i))));
  }
  // Qwen MoE with a prompt router needs prompts on the shared expert: said when it is asked for.
  const auto r = moe(
      b + "gate_mode: cheap_embed\narchitecture: qwen\nexperts:\n  - source_model: " + p("ft0") +
          "\n    positive_prompts: [a]\n  - source_model: " + p("ft1") +
          "\n    positive_prompts: [b]\n" + sh,
      "noprompt");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("needs shared_experts[0].positive_prompts with gate_mode cheap_embed"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace smelt
