// Mixture-of-experts routers from prompts and the MoE forward pass (docs/moe.md, "Routers";
// docs/inference.md), on the repository's trained zoo (examples/zoo): router rows against an
// independent double-precision forward pass (tests/reference_forward.h), routing of held-out
// prompts, and Mixtral logits against the reference and against the dense model.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>

#include "forward_util.h"
#include "llama_cpp_client.h"
#include "reference_forward.h"
#include "smelt/config/moe_config.h"
#include "smelt/error.h"
#include "smelt/infer/model.h"
#include "smelt/io/safetensors.h"
#include "smelt/moe/gate_vectors.h"
#include "smelt/plan/moe_plan.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using smelt::testing::quote;
using smelt::testing::run_command;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

const fs::path kZoo = fs::path(SMELT_SOURCE_DIR) / "examples" / "zoo";

// The zoo's tokenizer (examples/zoo/README.md): <s> = 0, then id 3 + b for byte b. Written out
// here so the reference does not use smelt's tokenizer.
std::vector<int> zoo_ids(const std::string& text) {
  std::vector<int> ids = {0};
  for (const unsigned char c : text) ids.push_back(3 + c);
  return ids;
}

struct Expert {
  std::vector<std::string> positive, negative;
};

const std::vector<Expert> kExperts = {
    {{"12+35=", "40+17=", "3+88="}, {}},
    {{"rev abcd=", "rev house="}, {"up abcd="}},
    {{"up abcd=", "up word="}, {}},
    {{"next abcz=", "next dog="}, {}},
};

std::string moe_yaml(const std::string& mode, const std::string& extra = "",
                     bool negatives = true) {
  std::string y = fmt::format("base_model: {}\ngate_mode: {}\n{}experts:\n",
                              (kZoo / "base").string(), mode, extra);
  const char* ft[] = {"ft-add", "ft-rev", "ft-up", "ft-next"};
  for (size_t e = 0; e < kExperts.size(); ++e) {
    y += fmt::format("  - source_model: {}\n    positive_prompts:\n", (kZoo / ft[e]).string());
    for (const auto& p : kExperts[e].positive) y += fmt::format("      - \"{}\"\n", p);
    if (negatives && !kExperts[e].negative.empty()) {
      y += "    negative_prompts:\n";
      for (const auto& p : kExperts[e].negative) y += fmt::format("      - \"{}\"\n", p);
    }
  }
  return y;
}

// The reference rows: layers × experts × hidden, in double.
std::vector<double> reference_rows(const smelt::testing::TinyModel& m, const std::string& mode) {
  const int L = m.layers, H = m.hidden, X = static_cast<int>(kExperts.size());
  auto vectors = [&](const std::vector<std::string>& prompts) {
    std::vector<double> acc(static_cast<size_t>(L) * H, 0.0);
    if (mode == "cheap_embed") {
      std::vector<double> sum(H, 0.0);
      for (const auto& p : prompts)
        for (const int t : zoo_ids(p))
          for (int i = 0; i < H; ++i) sum[i] += m.w.at("model.embed_tokens.weight")[t * H + i];
      double ss = 0;
      for (double v : sum) ss += v * v;
      for (int l = 0; l < L; ++l)
        for (int i = 0; i < H; ++i) acc[l * H + i] = sum[i] / std::sqrt(ss);
      return acc;
    }
    for (const auto& p : prompts) {
      smelt::testing::ReferenceOptions opt;
      opt.on_layer_input = [&](int l, const std::vector<std::vector<double>>& x) {
        for (int i = 0; i < H; ++i) {
          double v = 0;
          if (mode == "hidden_avg") {
            for (const auto& row : x) v += row[i];
            v /= static_cast<double>(x.size());
          } else {
            v = x.back()[i];
          }
          acc[l * H + i] += v / static_cast<double>(prompts.size());
        }
      };
      smelt::testing::reference_log_softmax_all(m, zoo_ids(p), opt);
    }
    return acc;
  };
  std::vector<double> rows(static_cast<size_t>(L) * X * H);
  for (int e = 0; e < X; ++e) {
    auto v = vectors(kExperts[e].positive);
    if (!kExperts[e].negative.empty()) {
      const auto n = vectors(kExperts[e].negative);
      for (size_t i = 0; i < v.size(); ++i) v[i] -= n[i];
    }
    for (int l = 0; l < L; ++l) {
      double ss = 0;
      for (int i = 0; i < H; ++i) ss += v[l * H + i] * v[l * H + i];
      for (int i = 0; i < H; ++i) rows[(l * X + e) * H + i] = v[l * H + i] / std::sqrt(ss);
    }
  }
  return rows;
}

TEST(MoeRouter, PromptRowsEqualAnIndependentForwardPass) {
  const auto ref_model = smelt::testing::load_tiny_model(kZoo / "base", 1.0f);
  for (const std::string mode : {"hidden", "hidden_avg", "hidden_last", "cheap_embed"}) {
    const auto cfg = smelt::config::parse_moe_config(moe_yaml(mode));
    const auto got = smelt::moe::compute_gate_vectors(cfg, kZoo / "base", 2);
    ASSERT_EQ(got.layers, 4);
    ASSERT_EQ(got.experts, 4);
    ASSERT_EQ(got.hidden, 96);
    const auto want = reference_rows(ref_model, mode == "hidden_last" ? "hidden" : mode);
    ASSERT_EQ(got.values.size(), want.size());
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i)
      worst = std::max(worst, std::abs(got.values[i] - want[i]));
    EXPECT_LT(worst, 2e-5) << mode;
    // cheap_embed: one vector for every layer.
    if (mode == "cheap_embed")
      EXPECT_EQ(std::vector<float>(got.values.begin(), got.values.begin() + 4 * 96),
                std::vector<float>(got.values.begin() + 4 * 96, got.values.begin() + 8 * 96));
  }
  // hidden and hidden_avg differ (a test that could not tell them apart would prove nothing).
  const auto a = smelt::moe::compute_gate_vectors(
      smelt::config::parse_moe_config(moe_yaml("hidden")), kZoo / "base", 2);
  const auto b = smelt::moe::compute_gate_vectors(
      smelt::config::parse_moe_config(moe_yaml("hidden_avg")), kZoo / "base", 2);
  EXPECT_NE(a.values, b.values);
}

// Held-out prompts of each expert's task route to that expert: at every layer, the router
// logit (row · hidden state at the prompt's last token) is largest for the expert whose prompts
// describe the task.
// The router logit (row · hidden state) is largest for the expert whose prompts describe a
// prompt's task. hidden_avg: for the experts' own prompts and held-out ones, at every layer.
// hidden (last token): for the experts' own prompts from layer 1 on (layer 0's input at the last
// token is the embedding of the final "=", the same for every prompt).
TEST(MoeRouter, PromptsRouteToTheirExpert) {
  auto model = smelt::infer::Model::load(kZoo / "base", {.threads = 2});
  const std::vector<std::pair<std::string, int>> own = {
      {"12+35=", 0}, {"rev abcd=", 1}, {"up word=", 2}, {"next dog=", 3}};
  const std::vector<std::pair<std::string, int>> held_out = {
      {"55+21=", 0}, {"rev plane=", 1}, {"up table=", 2}, {"next hello=", 3}};
  auto check = [&](const std::string& mode, const std::vector<std::pair<std::string, int>>& prompts,
                   int64_t first_layer) {
    const auto cfg = smelt::config::parse_moe_config(moe_yaml(mode, "", /*negatives=*/false));
    const auto g = smelt::moe::compute_gate_vectors(cfg, kZoo / "base", 2);
    for (const auto& [prompt, expert] : prompts) {
      const auto ids = zoo_ids(prompt);
      const auto h =
          model->layer_inputs(std::vector<int32_t>(ids.begin(), ids.end()), mode == "hidden_avg");
      for (int64_t l = first_layer; l < g.layers; ++l) {
        int best = -1;
        double best_logit = -std::numeric_limits<double>::infinity();
        for (int64_t e = 0; e < g.experts; ++e) {
          double d = 0;
          for (int64_t i = 0; i < g.hidden; ++i)
            d += g.values[(l * g.experts + e) * g.hidden + i] * h[l * g.hidden + i];
          if (d > best_logit) best_logit = d, best = static_cast<int>(e);
        }
        EXPECT_EQ(best, expert) << mode << ": " << prompt << " at layer " << l;
      }
    }
  };
  check("hidden_avg", own, 0);
  check("hidden_avg", held_out, 0);
  check("hidden", own, 1);
}

TEST(MoeRouter, ConditionNumberAsTorchComputesIt) {
  const float diag[] = {3, 0, 0, 0, 1, 0};  // 2 × 3: singular values 3 and 1
  EXPECT_NEAR(smelt::moe::condition_number(diag, 2, 3), 3.0, 1e-9);
  const float diag_t[] = {3, 0, 0, 1, 0, 0};  // its transpose, 3 × 2
  EXPECT_NEAR(smelt::moe::condition_number(diag_t, 3, 2), 3.0, 1e-9);
  const float rot[] = {0.6f, 0.8f, -0.8f, 0.6f};
  EXPECT_NEAR(smelt::moe::condition_number(rot, 2, 2), 1.0, 1e-6);
  const float same[] = {1, 2, 3, 1, 2, 3};
  EXPECT_TRUE(std::isinf(smelt::moe::condition_number(same, 2, 3)));
  const float m[] = {2, 1, 1, 3};  // eigenvalues (5 ± √5)/2
  EXPECT_NEAR(smelt::moe::condition_number(m, 2, 2), (5 + std::sqrt(5.0)) / (5 - std::sqrt(5.0)),
              1e-9);
}

using smelt::testing::max_diff;
using smelt::testing::smelt_log_softmax_all;

// smelt moe writes the routers it computed; the MoE runs in smelt's forward pass as the
// reference computes Mixtral (softmax, top 2, renormalised), in f32 and two threads.
TEST(MoeForward, MixtralFromPromptsMatchesTheReference) {
  TempDir dir;
  write_bytes(dir / "moe.yml", moe_yaml("hidden", "dtype: float32\nexperts_per_token: 2\n"));
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                       quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto cfg = smelt::config::parse_moe_config(moe_yaml("hidden"));
  const auto g = smelt::moe::compute_gate_vectors(cfg, kZoo / "base", 2);
  const auto ref = smelt::testing::load_tiny_model(dir / "out", 1.0f);
  ASSERT_EQ(ref.experts, 4);
  for (int l = 0; l < 4; ++l) {
    const auto& w = ref.w.at(fmt::format("model.layers.{}.block_sparse_moe.gate.weight", l));
    ASSERT_EQ(w.size(), 4u * 96);
    EXPECT_TRUE(std::equal(w.begin(), w.end(), g.values.begin() + l * 4 * 96)) << l;
  }
  const std::vector<int> ids = zoo_ids("12+35=47\nrev abcd=dcba\nup cat=CAT");
  auto model = smelt::infer::Model::load(dir / "out", {.threads = 2});
  EXPECT_EQ(model->info().n_expert, 4);
  EXPECT_EQ(model->info().n_expert_used, 2);
  const double d = max_diff(smelt_log_softmax_all(*model, ids),
                            smelt::testing::reference_log_softmax_all(ref, ids));
  EXPECT_LT(d, 1e-3);
  // The experts differ, so routing matters: the same MoE with every token sent to expert 0
  // (its router's other rows zeroed... here: the dense ft-add) gives other log-probabilities.
  auto dense = smelt::infer::Model::load(kZoo / "ft-add", {.threads = 2});
  EXPECT_GT(max_diff(smelt_log_softmax_all(*dense, ids), smelt_log_softmax_all(*model, ids)), 0.05);
}

// An MoE whose experts are all one dense model computes that model (routing weights sum to one).
TEST(MoeForward, IdenticalExpertsGiveTheDenseModel) {
  TempDir dir;
  std::string y = fmt::format("base_model: {}\ngate_mode: random\ndtype: float32\nexperts:\n",
                              (kZoo / "base").string());
  for (int e = 0; e < 4; ++e) y += fmt::format("  - source_model: {}\n", (kZoo / "base").string());
  write_bytes(dir / "moe.yml", y);
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                       quote(dir / "out") + " --i-understand-this-is-not-useful-without-training");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<int> ids = zoo_ids("The cat sat on the mat. 12+35=47");
  auto moe = smelt::infer::Model::load(dir / "out", {.threads = 2});
  auto dense = smelt::infer::Model::load(kZoo / "base", {.threads = 2});
  EXPECT_LT(max_diff(smelt_log_softmax_all(*moe, ids), smelt_log_softmax_all(*dense, ids)), 1e-4);
}

// A Qwen MoE (a shared expert with prompts, so mergekit's rules choose Qwen MoE): the shared
// expert's prompts give its gate (the last row of gate_config's router rows), and smelt's forward
// pass equals the reference (softmax, top 2, renormalised only with norm_topk_prob, plus
// sigmoid(shared_expert_gate · x) times the shared expert), with norm_topk_prob true (as written)
// and false.
TEST(MoeForward, QwenMoeFromPromptsMatchesTheReference) {
  TempDir dir;
  const std::string shared = fmt::format(
      "shared_experts:\n  - source_model: {}\n    positive_prompts: [\"The cat sat\", "
      "\"12+35=\"]\n",
      (kZoo / "base").string());
  const std::string y = moe_yaml("hidden_avg", "dtype: float32\n") + shared;
  write_bytes(dir / "moe.yml", y);
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                       quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto cfg = smelt::config::parse_moe_config(y);
  const auto g = smelt::moe::compute_gate_vectors(smelt::plan::gate_config(cfg), kZoo / "base", 2);
  ASSERT_EQ(g.experts, 5);
  auto ref = smelt::testing::load_tiny_model(dir / "out", 1.0f);
  ASSERT_TRUE(ref.qwen2_moe);
  ASSERT_EQ(ref.experts, 4);
  EXPECT_TRUE(ref.norm_topk);
  for (int l = 0; l < 4; ++l) {
    const auto& w = ref.w.at(fmt::format("model.layers.{}.mlp.gate.weight", l));
    const auto& s = ref.w.at(fmt::format("model.layers.{}.mlp.shared_expert_gate.weight", l));
    ASSERT_EQ(w.size(), 4u * 96);
    ASSERT_EQ(s.size(), 96u);
    EXPECT_TRUE(std::equal(w.begin(), w.end(), g.values.begin() + l * 5 * 96)) << l;
    EXPECT_TRUE(std::equal(s.begin(), s.end(), g.values.begin() + (l * 5 + 4) * 96)) << l;
  }
  const std::vector<int> ids = zoo_ids("12+35=47\nrev abcd=dcba\nup cat=CAT");
  auto model = smelt::infer::Model::load(dir / "out", {.threads = 2});
  EXPECT_EQ(model->info().family, "qwen2_moe");
  EXPECT_EQ(model->info().n_expert, 4);
  const auto normed = smelt_log_softmax_all(*model, ids);
  EXPECT_LT(max_diff(normed, smelt::testing::reference_log_softmax_all(ref, ids)), 1e-3);
  // transformers' default, norm_topk_prob false: the top-k weights are not renormalised.
  auto c = nlohmann::json::parse(smelt::testing::read_bytes(dir / "out" / "config.json"));
  c["norm_topk_prob"] = false;
  write_bytes(dir / "out" / "config.json", c.dump(2));
  ref = smelt::testing::load_tiny_model(dir / "out", 1.0f);
  EXPECT_FALSE(ref.norm_topk);
  model = smelt::infer::Model::load(dir / "out", {.threads = 2});
  const auto raw = smelt_log_softmax_all(*model, ids);
  EXPECT_LT(max_diff(raw, smelt::testing::reference_log_softmax_all(ref, ids)), 1e-3);
  EXPECT_GT(max_diff(raw, normed), 1e-3);
}

// `smelt moe ... out.gguf` of a Qwen MoE writes llama.cpp's qwen2moe layout (stacked experts,
// the shared expert and its vector gate): llama.cpp runs it as the reference runs the folder
// with norm_topk_prob false (llama.cpp never renormalises qwen2moe's top-k weights), and so does
// smelt's forward pass on the GGUF.
TEST(MoeGguf, LlamaCppRunsTheExportedQwenMoe) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  const std::string y =
      moe_yaml("hidden_avg", "dtype: float32\n") +
      fmt::format("shared_experts:\n  - source_model: {}\n    positive_prompts: [\"The cat\"]\n",
                  (kZoo / "base").string());
  write_bytes(dir / "moe.yml", y);
  for (const char* out : {"moe.gguf", "moe"}) {
    auto r =
        run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                    quote(dir / out) + (std::string(out) == "moe.gguf" ? " --out-type F32" : ""));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  auto c = nlohmann::json::parse(smelt::testing::read_bytes(dir / "moe" / "config.json"));
  c["norm_topk_prob"] = false;
  write_bytes(dir / "moe" / "config.json", c.dump(2));
  const auto ref_model = smelt::testing::load_tiny_model(dir / "moe", 1.0f);
  ASSERT_TRUE(ref_model.qwen2_moe);
  const std::vector<int> ids = zoo_ids("12+35=47\nrev abcd=dcba");
  const auto ref = smelt::testing::reference_log_softmax_all(ref_model, ids);
  EXPECT_LT(
      max_diff(smelt::testing::llama_cpp_log_softmax_all(dir / "moe.gguf", ids, dir.path()), ref),
      2e-3);
  auto gguf = smelt::infer::Model::load(dir / "moe.gguf", {.threads = 2});
  EXPECT_EQ(gguf->info().family, "qwen2_moe");
  EXPECT_EQ(gguf->info().n_expert, 4);
  EXPECT_LT(max_diff(smelt_log_softmax_all(*gguf, ids), ref), 1e-3);
}

// A Qwen MoE whose routed experts and shared expert are all one dense model computes
// dense + sigmoid(g · x) · dense_mlp per layer, so it is not the dense model; with the shared
// expert's down_proj scaled to 0 (residual_scale: 0) it is (the routed weights sum to one).
TEST(MoeForward, QwenMoeOfOneDenseModel) {
  TempDir dir;
  const auto dense = smelt::infer::Model::load(kZoo / "base", {.threads = 2});
  const std::vector<int> ids = zoo_ids("The cat sat on the mat. 12+35=47");
  const auto want = smelt_log_softmax_all(*dense, ids);
  for (const char* residual : {"0", "1"}) {
    std::string y = fmt::format(
        "base_model: {0}\ngate_mode: random\ndtype: float32\narchitecture: qwen\n"
        "shared_experts:\n  - source_model: {0}\n    residual_scale: {1}\nexperts:\n",
        (kZoo / "base").string(), residual);
    for (int e = 0; e < 4; ++e)
      y += fmt::format("  - source_model: {}\n", (kZoo / "base").string());
    const fs::path out = dir / (std::string("out") + residual);
    write_bytes(dir / "moe.yml", y);
    auto r = run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                         quote(out) + " --i-understand-this-is-not-useful-without-training");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto moe = smelt::infer::Model::load(out, {.threads = 2});
    const auto got = smelt_log_softmax_all(*moe, ids);
    const auto ref = smelt::testing::load_tiny_model(out, 1.0f);
    EXPECT_LT(max_diff(got, smelt::testing::reference_log_softmax_all(ref, ids)), 1e-3);
    if (std::string(residual) == "0") {
      EXPECT_LT(max_diff(got, want), 1e-4);
    } else {
      EXPECT_GT(max_diff(got, want), 0.01);
    }
  }
}

// `smelt moe ... out.gguf` writes llama.cpp's Mixtral layout (experts stacked per layer, F32
// routers): llama.cpp runs it to the logits of the same MoE written as a folder and run by the
// reference, and an MoE of one dense model to that model's.
TEST(MoeGguf, LlamaCppRunsTheExportedMixtral) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  write_bytes(dir / "moe.yml", moe_yaml("hidden_avg", "dtype: float32\nexperts_per_token: 2\n"));
  for (const char* out : {"moe.gguf", "moe"}) {
    auto r =
        run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                    quote(dir / out) + (std::string(out) == "moe.gguf" ? " --out-type F32" : ""));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const std::vector<int> ids = zoo_ids("12+35=47\nrev abcd=dcba");
  const auto ref = smelt::testing::reference_log_softmax_all(
      smelt::testing::load_tiny_model(dir / "moe", 1.0f), ids, {.interleaved_rope = false});
  const auto cpp = smelt::testing::llama_cpp_log_softmax_all(dir / "moe.gguf", ids, dir.path());
  EXPECT_LT(max_diff(cpp, ref), 2e-3);
  // smelt's forward pass reads the GGUF (3-D expert tensors) to the same logits.
  auto gguf = smelt::infer::Model::load(dir / "moe.gguf", {.threads = 2});
  EXPECT_EQ(gguf->info().n_expert, 4);
  EXPECT_LT(max_diff(smelt_log_softmax_all(*gguf, ids), ref), 1e-3);
}

// Two Mixtral models merge expert by expert with smelt merge (linear here): every tensor is the
// weighted mean of the inputs', and the result runs as a Mixtral.
TEST(MoeMerge, TwoMixtralsMergeTensorByTensor) {
  TempDir dir;
  std::string y = fmt::format("base_model: {}\ngate_mode: random\ndtype: float32\nexperts:\n",
                              (kZoo / "base").string());
  for (const char* ft : {"ft-add", "ft-rev", "ft-up", "ft-next"})
    y += fmt::format("  - source_model: {}\n", (kZoo / ft).string());
  write_bytes(dir / "moe.yml", y);
  for (const char* seed : {"1", "2"}) {
    auto r = run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                         quote(dir / (std::string("m") + seed)) + " --random-seed " + seed);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  write_bytes(dir / "merge.yml",
              fmt::format("merge_method: linear\nmodels:\n  - model: {}\n    parameters: "
                          "{{weight: 0.25}}\n  - model: {}\n    parameters: {{weight: 0.75}}\n",
                          (dir / "m1").string(), (dir / "m2").string()));
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " merge -q " + quote(dir / "merge.yml") + " " +
                       quote(dir / "merged"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto a = smelt::testing::load_tiny_model(dir / "m1", 1.0f);
  const auto b = smelt::testing::load_tiny_model(dir / "m2", 1.0f);
  const auto m = smelt::testing::load_tiny_model(dir / "merged", 1.0f);
  ASSERT_EQ(m.w.size(), a.w.size());
  const auto& router = m.w.at("model.layers.2.block_sparse_moe.gate.weight");
  EXPECT_NE(a.w.at("model.layers.2.block_sparse_moe.gate.weight"),
            b.w.at("model.layers.2.block_sparse_moe.gate.weight"));
  for (const auto& [name, values] : m.w) {
    ASSERT_EQ(values.size(), a.w.at(name).size()) << name;
    for (size_t i = 0; i < values.size(); ++i) {
      const double want = 0.25 * a.w.at(name)[i] + 0.75 * b.w.at(name)[i];
      ASSERT_NEAR(values[i], want, 1e-6 * (1 + std::abs(want))) << name << "[" << i << "]";
    }
  }
  EXPECT_EQ(router.size(), 4u * 96);
  auto model = smelt::infer::Model::load(dir / "merged", {.threads = 2});
  EXPECT_EQ(model->info().n_expert, 4);
  const std::vector<int> ids = zoo_ids("up cat=CAT");
  EXPECT_LT(max_diff(smelt_log_softmax_all(*model, ids),
                     smelt::testing::reference_log_softmax_all(m, ids)),
            1e-3);
}

// transformers 5's fused expert layout (mlp.experts.gate_up_proj [E, 2I, H], down_proj
// [E, H, I], router mlp.gate) runs to the same logits as the per-expert layout it was made from.
TEST(MoeForward, FusedTransformersLayoutRunsLikeThePerExpertOne) {
  TempDir dir;
  std::string y = fmt::format("base_model: {}\ngate_mode: random\ndtype: float32\nexperts:\n",
                              (kZoo / "base").string());
  for (const char* ft : {"ft-add", "ft-rev", "ft-up", "ft-next"})
    y += fmt::format("  - source_model: {}\n", (kZoo / ft).string());
  write_bytes(dir / "moe.yml", y);
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " moe -q " + quote(dir / "moe.yml") + " " +
                       quote(dir / "moe"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto m = smelt::testing::load_tiny_model(dir / "moe", 1.0f);
  const int E = 4, I = m.inter, H = m.hidden;
  std::map<std::string, std::vector<float>> out;
  std::vector<smelt::io::TensorSpec> specs;
  for (const auto& [name, values] : m.w) {
    if (name.find("block_sparse_moe") == std::string::npos) {
      out[name] = values;
      specs.push_back({name, smelt::DType::kF32, m.shape.at(name)});
    }
  }
  for (int l = 0; l < m.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    std::vector<float> gate_up, down;
    for (int e = 0; e < E; ++e) {
      const std::string x = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
      for (const char* w : {"w1", "w3"}) {
        const auto& v = m.w.at(x + w + ".weight");
        gate_up.insert(gate_up.end(), v.begin(), v.end());
      }
      const auto& d = m.w.at(x + "w2.weight");
      down.insert(down.end(), d.begin(), d.end());
    }
    out[p + "mlp.experts.gate_up_proj"] = gate_up;
    specs.push_back({p + "mlp.experts.gate_up_proj",
                     smelt::DType::kF32,
                     {uint64_t(E), uint64_t(2 * I), uint64_t(H)}});
    out[p + "mlp.experts.down_proj"] = down;
    specs.push_back(
        {p + "mlp.experts.down_proj", smelt::DType::kF32, {uint64_t(E), uint64_t(H), uint64_t(I)}});
    out[p + "mlp.gate.weight"] = m.w.at(p + "block_sparse_moe.gate.weight");
    specs.push_back({p + "mlp.gate.weight", smelt::DType::kF32, {uint64_t(E), uint64_t(H)}});
  }
  fs::create_directories(dir / "fused");
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(dir / "moe" / f)) fs::copy_file(dir / "moe" / f, dir / "fused" / f);
  {
    smelt::io::SafetensorsWriter w(dir / "fused" / "model.safetensors", specs, {});
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto& v = out.at(specs[i].name);
      w.write(i, 0, v.data(), v.size() * sizeof(float));
    }
    w.finish();
  }
  const std::vector<int> ids = zoo_ids("12+35=47\nrev abcd=dcba");
  auto per_expert = smelt::infer::Model::load(dir / "moe", {.threads = 2});
  auto fused = smelt::infer::Model::load(dir / "fused", {.threads = 2});
  EXPECT_EQ(max_diff(smelt_log_softmax_all(*fused, ids), smelt_log_softmax_all(*per_expert, ids)),
            0.0);
}

TEST(MoeRouter, PromptErrorsNameTheYamlPath) {
  auto error = [](const std::string& yaml) {
    try {
      smelt::config::parse_moe_config(yaml);
    } catch (const smelt::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string base = "base_model: b\n";
  EXPECT_NE(error(base + "experts:\n  - source_model: a\n    positive_prompts: [x]\n"
                         "  - source_model: c\n")
                .find("experts[1].positive_prompts: missing"),
            std::string::npos);
  EXPECT_NE(error(base + "experts:\n  - source_model: a\n    positive_prompts: [x, y]\n"
                         "  - source_model: c\n    positive_prompts: [y, x]\n")
                .find("same prompts"),
            std::string::npos);
  EXPECT_NE(error(base + "gate_mode: hiden\nexperts:\n  - source_model: a\n")
                .find("did you mean \"hidden\""),
            std::string::npos);
  EXPECT_NE(error(base + "experts:\n  - source_model: a\n    positive_prompts: [\"\"]\n")
                .find("experts[0].positive_prompts[0]: the prompt is empty"),
            std::string::npos);
}

}  // namespace
