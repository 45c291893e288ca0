// Tests of the HF -> GGUF mapping (names, Q/K permutation, types, KVs, tokenizers) and that
// llama.cpp (node-llama-cpp in tests/node, which scripts/setup.sh installs) loads and runs a tiny
// exported llama exactly like a reference forward pass.
#include "smelt/io/gguf_export.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "llama_cpp_client.h"
#include "reference_forward.h"
#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"
#include "test_util.h"

namespace smelt::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using smelt::testing::llama_cpp_log_softmax;
using smelt::testing::llama_cpp_log_softmax_all;
using smelt::testing::load_tiny_model;
using smelt::testing::quote;
using smelt::testing::reference_log_softmax;
using smelt::testing::reference_log_softmax_all;
using smelt::testing::ReferenceOptions;
using smelt::testing::run_smelt;
using smelt::testing::TempDir;
using smelt::testing::TinyModel;
using smelt::testing::write_bytes;

// The message of the smelt::Error `f` throws ("" when it throws nothing).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const GgufValue* kv(const std::vector<GgufKv>& kvs, const std::string& key) {
  for (const auto& k : kvs) {
    if (k.key == key) return &k.value;
  }
  return nullptr;
}

json read_json_file(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

json llama_config(int heads = 4, int kv_heads = 2) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"hidden_size", 64},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads},
          {"num_hidden_layers", 2},
          {"intermediate_size", 128},
          {"max_position_embeddings", 2048},
          {"rms_norm_eps", 1e-5},
          {"vocab_size", 320}};
}

// ---- architecture and names ---------------------------------------------------------------------

TEST(GgufExport, ArchForLlamaMistralQwen2Qwen3Gemma2) {
  EXPECT_EQ(gguf_arch_for({{"architectures", {"LlamaForCausalLM"}}}), "llama");
  EXPECT_EQ(gguf_arch_for({{"architectures", {"MistralForCausalLM"}}}), "llama");
  EXPECT_EQ(gguf_arch_for({{"architectures", {"MixtralForCausalLM"}}}), "llama");
  EXPECT_EQ(gguf_arch_for({{"architectures", {"Qwen2ForCausalLM"}}}), "qwen2");
  EXPECT_EQ(gguf_arch_for({{"architectures", {"Qwen3ForCausalLM"}}}), "qwen3");
  EXPECT_EQ(gguf_arch_for({{"architectures", {"Gemma2ForCausalLM"}}}), "gemma2");
  EXPECT_EQ(error_of([] {
              gguf_arch_for({{"architectures", {"GPT2LMHeadModel"}}});
            }),
            "GGUF export supports llama, mistral, mixtral, qwen2, qwen3 and gemma2 models; "
            "GPT2LMHeadModel is not supported yet");
  EXPECT_NE(error_of([] { gguf_arch_for(json::object()); }).find("architectures"),
            std::string::npos);
}

TEST(GgufExport, TensorNamesCoverEveryLlamaKind) {
  const std::pair<const char*, const char*> cases[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight"},
      {"model.layers.12.self_attn.k_proj.weight", "blk.12.attn_k.weight"},
      {"model.layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight"},
      {"model.layers.4.self_attn.o_proj.weight", "blk.4.attn_output.weight"},
      {"model.layers.5.post_attention_layernorm.weight", "blk.5.ffn_norm.weight"},
      {"model.layers.6.mlp.gate_proj.weight", "blk.6.ffn_gate.weight"},
      {"model.layers.7.mlp.up_proj.weight", "blk.7.ffn_up.weight"},
      {"model.layers.8.mlp.down_proj.weight", "blk.8.ffn_down.weight"},
      // Optional biases llama.cpp's llama architecture loads (attention_bias / mlp_bias).
      {"model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"},
      {"model.layers.0.self_attn.o_proj.bias", "blk.0.attn_output.bias"},
      {"model.layers.0.mlp.down_proj.bias", "blk.0.ffn_down.bias"},
  };
  for (const auto& [hf, gguf] : cases) {
    auto name = gguf_tensor_name("llama", hf);
    ASSERT_TRUE(name.has_value()) << hf;
    EXPECT_EQ(*name, gguf) << hf;
  }
  EXPECT_FALSE(gguf_tensor_name("llama", "model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(gguf_tensor_name("llama", "model.layers.0.attention.masked_bias"));
  // Anything else is an error naming the tensor: llama.cpp refuses files with unused tensors.
  for (const char* bad :
       {"model.layers.0.mlp.experts.0.w1.weight", "model.layers.01.mlp.up_proj.weight",
        "model.layers.x.mlp.up_proj.weight", "model.embed_tokens.bias",
        "model.layers.0.mlp.up_proj.weightx", "lm_head.bias"}) {
    EXPECT_NE(error_of([&] { gguf_tensor_name("llama", bad); }).find(bad), std::string::npos)
        << bad;
  }
}

TEST(GgufExport, TensorNamesQwen2HasQkvBiasesOnly) {
  EXPECT_EQ(*gguf_tensor_name("qwen2", "model.layers.2.self_attn.q_proj.bias"),
            "blk.2.attn_q.bias");
  EXPECT_EQ(*gguf_tensor_name("qwen2", "model.layers.2.self_attn.k_proj.bias"),
            "blk.2.attn_k.bias");
  EXPECT_EQ(*gguf_tensor_name("qwen2", "model.layers.2.self_attn.v_proj.bias"),
            "blk.2.attn_v.bias");
  EXPECT_EQ(*gguf_tensor_name("qwen2", "model.layers.2.self_attn.o_proj.weight"),
            "blk.2.attn_output.weight");
  // llama.cpp's qwen2 loads no o_proj or MLP biases.
  EXPECT_NE(error_of([] { gguf_tensor_name("qwen2", "model.layers.2.self_attn.o_proj.bias"); }),
            "");
  EXPECT_NE(error_of([] { gguf_tensor_name("qwen2", "model.layers.2.mlp.up_proj.bias"); }), "");
  EXPECT_NE(error_of([] { gguf_tensor_name("gpt2", "model.norm.weight"); }), "");
}

TEST(GgufExport, TensorNamesQwen3HasHeadNormsAndNoBiases) {
  EXPECT_EQ(*gguf_tensor_name("qwen3", "model.layers.1.self_attn.q_norm.weight"),
            "blk.1.attn_q_norm.weight");
  EXPECT_EQ(*gguf_tensor_name("qwen3", "model.layers.1.self_attn.k_norm.weight"),
            "blk.1.attn_k_norm.weight");
  EXPECT_EQ(*gguf_tensor_name("qwen3", "model.layers.1.post_attention_layernorm.weight"),
            "blk.1.ffn_norm.weight");
  EXPECT_EQ(*gguf_tensor_name("qwen3", "lm_head.weight"), "output.weight");
  for (const char* bad : {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.mlp.up_proj.bias",
                          "lm_head.bias", "model.layers.0.pre_feedforward_layernorm.weight"}) {
    EXPECT_NE(error_of([&] { gguf_tensor_name("qwen3", bad); }).find(bad), std::string::npos)
        << bad;
  }
  // The head norms exist only in qwen3.
  EXPECT_NE(error_of([] { gguf_tensor_name("llama", "model.layers.0.self_attn.q_norm.weight"); }),
            "");
}

TEST(GgufExport, TensorNamesGemma2HasFourNormsAndDropsTheHead) {
  const std::pair<const char*, const char*> cases[] = {
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.0.post_attention_layernorm.weight", "blk.0.post_attention_norm.weight"},
      {"model.layers.0.pre_feedforward_layernorm.weight", "blk.0.ffn_norm.weight"},
      {"model.layers.0.post_feedforward_layernorm.weight", "blk.0.post_ffw_norm.weight"},
      {"model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"},
      {"model.norm.weight", "output_norm.weight"},
  };
  for (const auto& [hf, gguf] : cases) {
    auto name = gguf_tensor_name("gemma2", hf);
    ASSERT_TRUE(name.has_value()) << hf;
    EXPECT_EQ(*name, gguf) << hf;
  }
  EXPECT_FALSE(gguf_tensor_name("gemma2", "lm_head.weight"));  // llama.cpp reuses token_embd
  EXPECT_NE(error_of([] { gguf_tensor_name("gemma2", "model.layers.0.self_attn.q_proj.bias"); }),
            "");
  // +1 on exactly the norms (HF applies them as 1 + w).
  EXPECT_EQ(gguf_value_offset("gemma2", "model.layers.0.pre_feedforward_layernorm.weight"), 1.0f);
  EXPECT_EQ(gguf_value_offset("gemma2", "model.norm.weight"), 1.0f);
  EXPECT_EQ(gguf_value_offset("gemma2", "model.layers.0.mlp.up_proj.weight"), 0.0f);
  EXPECT_EQ(gguf_value_offset("gemma2", "model.embed_tokens.weight"), 0.0f);
  EXPECT_EQ(gguf_value_offset("llama", "model.norm.weight"), 0.0f);
  EXPECT_EQ(gguf_value_offset("qwen3", "model.layers.0.self_attn.q_norm.weight"), 0.0f);
}

// ---- Q/K permutation ----------------------------------------------------------------------------

TEST(GgufExport, PermuteHeadsQUsesHeadsKUsesKvHeads) {
  const json c = llama_config(8, 2);  // hidden 64: head dim 8, so q has 64 rows and k 16
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.q_proj.weight", 64, c), 8);
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.q_proj.bias", 64, c), 8);
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.k_proj.weight", 16, c), 2);
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.k_proj.bias", 16, c), 2);
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.v_proj.weight", 16, c), 0);
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.o_proj.weight", 64, c), 0);
  EXPECT_EQ(gguf_qk_permute_heads("qwen2", "model.layers.0.self_attn.q_proj.weight", 64, c), 0);
  json no_kv = c;
  no_kv.erase("num_key_value_heads");
  EXPECT_EQ(gguf_qk_permute_heads("llama", "model.layers.0.self_attn.k_proj.weight", 64, no_kv), 8);
}

TEST(GgufExport, PermuteHeadsRefusesHeadCountsThatDoNotMatchTheTensor) {
  const json c = llama_config(8, 2);  // head dim 8
  // k_proj of 4 kv heads (32 rows) with a config saying 2: names the tensor and the key.
  const std::string k = "model.layers.1.self_attn.k_proj.weight";
  std::string e = error_of([&] { gguf_qk_permute_heads("llama", k, 32, c); });
  EXPECT_NE(e.find(k), std::string::npos) << e;
  EXPECT_NE(e.find("num_key_value_heads"), std::string::npos) << e;
  // Without num_key_value_heads, k uses (and the message names) num_attention_heads.
  json no_kv = c;
  no_kv.erase("num_key_value_heads");
  e = error_of([&] { gguf_qk_permute_heads("llama", k, 32, no_kv); });
  EXPECT_NE(e.find("'num_attention_heads'"), std::string::npos) << e;
  // q rows that are no multiple of the head dim, and an explicit head_dim that disagrees.
  const std::string q = "model.layers.0.self_attn.q_proj.bias";
  e = error_of([&] { gguf_qk_permute_heads("llama", q, 60, c); });
  EXPECT_NE(e.find(q), std::string::npos) << e;
  EXPECT_NE(e.find("num_attention_heads"), std::string::npos) << e;
  json hd = c;
  hd["head_dim"] = 4;
  EXPECT_NE(error_of([&] { gguf_qk_permute_heads("llama", q, 64, hd); }).find("head_dim"),
            std::string::npos);
  // An odd head dimension has no RoPE pairs.
  hd["head_dim"] = 7;
  e = error_of([&] { gguf_qk_permute_heads("llama", q, 56, hd); });
  EXPECT_NE(e.find("odd"), std::string::npos) << e;
  EXPECT_NE(e.find(q), std::string::npos) << e;
  // qwen2 permutes nothing, so nothing is checked.
  EXPECT_EQ(gguf_qk_permute_heads("qwen2", q, 60, c), 0);
}

TEST(GgufExport, PermuteRowsMatchesConverterReshape) {
  // 2 heads of 4 rows: each head's rows (0 1 | 2 3) become (0 2 1 3), interleaving the halves.
  std::vector<uint64_t> got;
  for (uint64_t r = 0; r < 8; ++r) got.push_back(gguf_qk_source_row(r, 8, 2));
  EXPECT_EQ(got, (std::vector<uint64_t>{0, 2, 1, 3, 4, 6, 5, 7}));

  // reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols), written out as loops.
  const int n_head = 3, hd = 8, cols = 5, rows = n_head * hd;
  std::vector<float> w(rows * cols), expected(rows * cols), out(rows * cols);
  for (int i = 0; i < rows * cols; ++i) w[i] = static_cast<float>(i);
  for (int h = 0; h < n_head; ++h)
    for (int j = 0; j < 2; ++j)
      for (int i = 0; i < hd / 2; ++i)
        for (int c = 0; c < cols; ++c)
          expected[((h * (hd / 2) + i) * 2 + j) * cols + c] =
              w[((h * 2 + j) * (hd / 2) + i) * cols + c];
  for (int r = 0; r < rows; ++r) {
    const uint64_t src = gguf_qk_source_row(r, rows, n_head);
    std::copy_n(w.begin() + src * cols, cols, out.begin() + r * cols);
  }
  EXPECT_EQ(out, expected);

  EXPECT_NE(error_of([] { gguf_qk_source_row(0, 10, 4); }), "");  // 10 rows: not 4 even heads
  EXPECT_NE(error_of([] { gguf_qk_source_row(8, 8, 2); }), "");
}

// A config.json whose head count does not match the tensors is refused by the plan, before any
// data is read, instead of writing rows permuted across the wrong heads.
TEST(GgufExport, MergeWithWrongKvHeadCountFailsInThePlanNamingTensorAndKey) {
  TempDir dir;
  const fs::path m = dir / "m";
  ASSERT_EQ(run_smelt("dev make-model " + quote(m) +
                      " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320")
                .exit_code,
            0);
  json config = read_json_file(m / "config.json");
  config["num_key_value_heads"] = 4;  // the tensors have 2 kv heads of 16 rows
  write_bytes(m / "config.json", config.dump());
  write_bytes(dir / "c.yml", "models:\n  - model: " + m.string() + "\nmerge_method: passthrough\n");
  auto r = run_smelt("merge -q " + quote(dir / "c.yml") + " " + quote(dir / "out.gguf"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("num_key_value_heads"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out.gguf"));
  auto plan = run_smelt("plan " + quote(dir / "c.yml") + " --format gguf");
  EXPECT_NE(plan.exit_code, 0) << plan.output;
}

TEST(GgufExport, DefaultTypesFollowConverter) {
  using kernels::GgmlType;
  EXPECT_EQ(gguf_default_type("blk.0.attn_norm.weight", {64}, DType::kBF16), GgmlType::kF32);
  EXPECT_EQ(gguf_default_type("output_norm.weight", {64}, DType::kF16), GgmlType::kF32);
  EXPECT_EQ(gguf_default_type("blk.0.attn_q.bias", {64}, DType::kBF16), GgmlType::kF32);
  EXPECT_EQ(gguf_default_type("blk.0.attn_q.weight", {64, 64}, DType::kBF16), GgmlType::kBF16);
  EXPECT_EQ(gguf_default_type("blk.0.attn_q.weight", {64, 64}, DType::kF16), GgmlType::kF16);
  EXPECT_EQ(gguf_default_type("token_embd.weight", {320, 64}, DType::kF32), GgmlType::kF16);
  EXPECT_EQ(gguf_file_type_for(GgmlType::kF32), 0u);
  EXPECT_EQ(gguf_file_type_for(GgmlType::kF16), 1u);
  EXPECT_EQ(gguf_file_type_for(GgmlType::kQ8_0), 7u);
  EXPECT_EQ(gguf_file_type_for(GgmlType::kBF16), 32u);
  EXPECT_FALSE(gguf_file_type_for(GgmlType::kI32));
}

TEST(GgufExport, RopeFreqsOnlyForLlama3Scaling) {
  json c = llama_config();
  EXPECT_FALSE(gguf_rope_freqs(c));
  c["rope_theta"] = 500000.0;
  c["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  auto f = gguf_rope_freqs(c);
  ASSERT_TRUE(f);
  ASSERT_EQ(f->size(), 8u);     // head_dim 16 / 2
  EXPECT_EQ(f->front(), 1.0f);  // short wavelengths are kept
  EXPECT_EQ(f->back(), 8.0f);   // long ones are divided by the factor
}

// The converter's L for llama3 is rope_scaling's original_max_position_embeddings, else the
// top-level key, else 8192; the divisors match HF's frequencies computed independently.
TEST(GgufExport, RopeFreqsLlama3MatchHfFrequenciesAndReadTheOriginalContext) {
  json c = llama_config();
  c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  c["original_max_position_embeddings"] = 64;  // top level only
  const int hd = 16;
  auto check = [&](const json& config, double expected_l) {
    const auto f = gguf_rope_freqs(config);
    EXPECT_TRUE(f && f->size() == static_cast<size_t>(hd / 2));
    if (!f || f->size() != static_cast<size_t>(hd / 2)) return -1;
    json with_l = config;
    with_l["rope_scaling"]["original_max_position_embeddings"] = expected_l;
    const auto scaled = smelt::testing::reference_inv_freq(with_l, hd, 10000.0);
    const auto plain = smelt::testing::reference_inv_freq(json::object(), hd, 10000.0);
    int smoothed = 0;
    for (int i = 0; i < hd / 2; ++i) {
      EXPECT_NEAR((*f)[i], plain[i] / scaled[i], 1e-5 * plain[i] / scaled[i]) << i;
      smoothed += (*f)[i] > 1.0f && (*f)[i] < 8.0f;
    }
    return smoothed;
  };
  // L = 64 puts wavelengths 19.9 and 62.8 in the smoothed band.
  EXPECT_EQ(check(c, 64.0), 2);
  c["rope_scaling"]["original_max_position_embeddings"] = 32;  // rope_scaling's wins
  EXPECT_EQ(check(c, 32.0), 1);
  c.erase("original_max_position_embeddings");
  c["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_EQ(check(c, 8192.0), 1);  // default: only wavelength 6283 lies in (2048, 8192)
  // llama.cpp's qwen2/qwen3/gemma2 graphs have no frequency factors.
  c["architectures"] = {"Qwen3ForCausalLM"};
  EXPECT_NE(error_of([&] { gguf_rope_freqs(c); }).find("llama3"), std::string::npos);
  std::vector<GgufKv> kvs;
  EXPECT_NE(error_of([&] { gguf_add_hparam_kvs(kvs, "qwen3", c, -1); }).find("llama3"),
            std::string::npos);
}

json gemma2_config() {
  return {{"architectures", {"Gemma2ForCausalLM"}},
          {"model_type", "gemma2"},
          {"hidden_size", 64},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"num_hidden_layers", 2},
          {"intermediate_size", 128},
          {"max_position_embeddings", 8192},
          {"rms_norm_eps", 1e-6},
          {"query_pre_attn_scalar", 256},
          {"vocab_size", 320}};
}

TEST(GgufExport, Gemma2KvsDefaultsAndQueryScaleCheck) {
  json c = gemma2_config();  // head_dim, caps and window absent: Gemma2Config's defaults
  std::vector<GgufKv> kvs;
  gguf_add_hparam_kvs(kvs, "gemma2", c, -1);
  auto u32 = [&](const std::string& key) { return kv(kvs, key)->as_uint().value_or(0); };
  auto f32 = [&](const std::string& key) { return kv(kvs, key)->as_float().value_or(0); };
  EXPECT_EQ(u32("gemma2.attention.key_length"), 256u);
  EXPECT_EQ(u32("gemma2.attention.value_length"), 256u);
  EXPECT_EQ(u32("gemma2.rope.dimension_count"), 256u);
  EXPECT_EQ(u32("gemma2.attention.sliding_window"), 4096u);
  EXPECT_FLOAT_EQ(f32("gemma2.attn_logit_softcapping"), 50.0f);
  EXPECT_FLOAT_EQ(f32("gemma2.final_logit_softcapping"), 30.0f);
  c["head_dim"] = 16;
  c["query_pre_attn_scalar"] = 16;
  c["sliding_window"] = 5;
  c["attn_logit_softcapping"] = 7.5;
  c["final_logit_softcapping"] = 3.0;
  kvs.clear();
  gguf_add_hparam_kvs(kvs, "gemma2", c, -1);
  EXPECT_EQ(u32("gemma2.attention.key_length"), 16u);
  EXPECT_EQ(u32("gemma2.attention.sliding_window"), 5u);
  EXPECT_FLOAT_EQ(f32("gemma2.attn_logit_softcapping"), 7.5f);
  EXPECT_FLOAT_EQ(f32("gemma2.final_logit_softcapping"), 3.0f);
  // llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) at 46 layers): another
  // query_pre_attn_scalar cannot be represented.
  c["query_pre_attn_scalar"] = 32;
  EXPECT_NE(
      error_of([&] { gguf_add_hparam_kvs(kvs, "gemma2", c, -1); }).find("query_pre_attn_scalar"),
      std::string::npos);
  c["query_pre_attn_scalar"] = 16;  // hidden / heads: right only for a 46-layer model
  c["head_dim"] = 32;
  EXPECT_NE(error_of([&] { gguf_add_hparam_kvs(kvs, "gemma2", c, -1); }), "");
  EXPECT_EQ(error_of([&] { gguf_add_hparam_kvs(kvs, "gemma2", c, 46); }), "");
  c["head_dim"] = 16;
  for (const char* key : {"attn_logit_softcapping", "final_logit_softcapping", "sliding_window"}) {
    json n = c;
    n[key] = nullptr;
    EXPECT_NE(error_of([&] { gguf_add_hparam_kvs(kvs, "gemma2", n, -1); }).find(key),
              std::string::npos)
        << key;
  }
}

// `smelt merge` of gemma2 models to GGUF merges the HF values w and adds the converter's 1 once,
// to the merged norms only.
TEST(GgufExport, Gemma2MergeAddsOneToTheMergedNorms) {
  TempDir dir;
  const std::string shape =
      " --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --layers 2 --dtype F32"
      " --arch Gemma2ForCausalLM --model-type gemma2";
  auto made = run_smelt("dev make-model " + quote(dir / "a") + shape);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  made = run_smelt("dev make-model " + quote(dir / "b") + " --base " + quote(dir / "a") +
                   " --delta-scale 0.05 --seed 3");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  write_bytes(dir / "avg.yml",
              fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.25}}\n"
                          "  - model: {}\n    parameters: {{weight: 0.75}}\n"
                          "merge_method: linear\ndtype: float32\n",
                          (dir / "a").string(), (dir / "b").string()));
  auto r = run_smelt("merge -q --out-type F32 " + quote(dir / "avg.yml") + " " +
                     quote(dir / "avg.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const TinyModel a = load_tiny_model(dir / "a", 1.0f), b = load_tiny_model(dir / "b", 1.0f);
  auto file = GgufFile::open(dir / "avg.gguf");
  EXPECT_EQ(file->find_kv("tokenizer.ggml.add_space_prefix")->as_bool(), false);
  auto expect_merged = [&](const std::string& gguf, const std::string& hf, float offset) {
    const TensorInfo* t = file->find(gguf);
    ASSERT_TRUE(t) << gguf;
    ASSERT_EQ(t->ggml_type, 0) << gguf;
    std::vector<float> got(t->numel());
    file->read(*t, 0, got.data(), got.size() * sizeof(float));
    const auto& wa = a.w.at(hf);
    const auto& wb = b.w.at(hf);
    ASSERT_EQ(got.size(), wa.size()) << gguf;
    double max_err = 0, max_delta = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double want = 0.25 * wa[i] + 0.75 * wb[i] + offset;
      max_err = std::max(max_err, std::abs(got[i] - want));
      max_delta = std::max(max_delta, std::abs(double(wa[i]) - wb[i]));
    }
    EXPECT_LT(max_err, 1e-6) << gguf;
    EXPECT_GT(max_delta, 0.01) << gguf << ": the two models do not differ";
  };
  expect_merged("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", 1.0f);
  expect_merged("blk.1.post_attention_norm.weight",
                "model.layers.1.post_attention_layernorm.weight", 1.0f);
  expect_merged("blk.1.ffn_norm.weight", "model.layers.1.pre_feedforward_layernorm.weight", 1.0f);
  expect_merged("blk.0.post_ffw_norm.weight", "model.layers.0.post_feedforward_layernorm.weight",
                1.0f);
  expect_merged("output_norm.weight", "model.norm.weight", 1.0f);
  expect_merged("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", 0.0f);
  expect_merged("token_embd.weight", "model.embed_tokens.weight", 0.0f);
  EXPECT_FALSE(file->find("output.weight"));
}

// The reference's sliding window (Mistral: every layer): a query sees itself and the W - 1 keys
// before it, so positions < W are untouched and a window as long as the prompt changes nothing.
TEST(GgufExport, ReferenceSlidingWindowMasksOnlyKeysOutsideTheWindow) {
  TempDir dir;
  auto made = run_smelt("dev make-model " + quote(dir / "m") +
                        " --dtype F32 --weight-std 0.2 --arch MistralForCausalLM"
                        " --model-type mistral --sliding-window 3");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  TinyModel m = load_tiny_model(dir / "m", 1.0f);
  ASSERT_EQ(m.sliding_window, 3);
  const std::vector<int> ids = {1, 70, 80, 90, 100, 110, 120};
  ReferenceOptions off;
  off.ignore_sliding_window = true;
  const auto windowed = reference_log_softmax_all(m, ids);
  const auto full = reference_log_softmax_all(m, ids, off);
  for (size_t t = 0; t < ids.size(); ++t) {
    double gap = 0;
    for (size_t i = 0; i < full[t].size(); ++i)
      gap = std::max(gap, std::abs(full[t][i] - windowed[t][i]));
    if (t < 3) {
      EXPECT_EQ(gap, 0.0) << t;
    } else {
      EXPECT_GT(gap, 1e-3) << t;
    }
  }
  m.sliding_window = static_cast<int>(ids.size());
  EXPECT_EQ(reference_log_softmax_all(m, ids), full);
  // gemma2's query_pre_attn_scalar option reaches the config and the reference's scale.
  made = run_smelt("dev make-model " + quote(dir / "g") +
                   " --arch Gemma2ForCausalLM --model-type gemma2 --query-pre-attn-scalar 144");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  EXPECT_DOUBLE_EQ(load_tiny_model(dir / "g", 1.0f).query_scale, 1.0 / 12.0);
}

// make-model's new families: the tensors and config keys each one has.
TEST(GgufExport, MakeModelQwen3Gemma2AndMistralShapes) {
  TempDir dir;
  auto made = run_smelt("dev make-model " + quote(dir / "q") +
                        " --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --layers 2"
                        " --dtype F32 --arch Qwen3ForCausalLM --model-type qwen3");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  TinyModel q = load_tiny_model(dir / "q", 1.0f);
  EXPECT_EQ(q.config["head_dim"], 32);
  EXPECT_EQ(q.config["attention_bias"], false);
  EXPECT_EQ(q.shape.at("model.layers.1.self_attn.q_proj.weight"), (std::vector<uint64_t>{128, 64}));
  EXPECT_EQ(q.shape.at("model.layers.1.self_attn.k_proj.weight"), (std::vector<uint64_t>{64, 64}));
  EXPECT_EQ(q.shape.at("model.layers.1.self_attn.o_proj.weight"), (std::vector<uint64_t>{64, 128}));
  EXPECT_EQ(q.shape.at("model.layers.1.self_attn.q_norm.weight"), (std::vector<uint64_t>{32}));
  EXPECT_EQ(q.shape.at("model.layers.1.self_attn.k_norm.weight"), (std::vector<uint64_t>{32}));
  for (const auto& [name, shape] : q.shape) EXPECT_EQ(name.find(".bias"), std::string::npos);
  EXPECT_EQ(q.w.at("model.layers.0.self_attn.q_norm.weight").size(), 32u);

  made = run_smelt("dev make-model " + quote(dir / "g") +
                   " --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --layers 2 --dtype F32"
                   " --arch Gemma2ForCausalLM --model-type gemma2 --sliding-window 5");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  TinyModel g = load_tiny_model(dir / "g", 1.0f);
  EXPECT_EQ(g.config["hidden_activation"], "gelu_pytorch_tanh");
  EXPECT_EQ(g.config["tie_word_embeddings"], true);
  EXPECT_EQ(g.config["query_pre_attn_scalar"], 32);
  EXPECT_EQ(g.config["sliding_window"], 5);
  EXPECT_EQ(g.config["attn_logit_softcapping"], 50.0);
  EXPECT_EQ(g.config["final_logit_softcapping"], 30.0);
  EXPECT_FALSE(g.w.count("lm_head.weight"));
  for (const char* norm : {"input_layernorm", "post_attention_layernorm",
                           "pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
    const auto& w = g.w.at(std::string("model.layers.1.") + norm + ".weight");
    ASSERT_EQ(w.size(), 64u) << norm;
    // Stored as w (applied as 1 + w): spread around 0, so a missing +1 cannot go unnoticed.
    double mean = 0, max_abs = 0;
    for (float v : w) mean += v / 64.0, max_abs = std::max(max_abs, std::abs(double(v)));
    EXPECT_LT(std::abs(mean), 0.05) << norm;
    EXPECT_GT(max_abs, 0.05) << norm;
  }

  made = run_smelt("dev make-model " + quote(dir / "m") +
                   " --arch MistralForCausalLM --model-type mistral --sliding-window 8"
                   " --rope-theta 1000000 --rope-scaling linear --rope-factor 2");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const json mc = read_json_file(dir / "m" / "config.json");
  EXPECT_EQ(mc["sliding_window"], 8);
  EXPECT_EQ(mc["rope_theta"], 1000000.0);
  EXPECT_EQ(mc["rope_scaling"], json({{"rope_type", "linear"}, {"factor", 2.0}}));
  // A plain llama config has neither key it did not have before.
  made = run_smelt("dev make-model " + quote(dir / "l"));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const json lc = read_json_file(dir / "l" / "config.json");
  EXPECT_FALSE(lc.contains("sliding_window"));
  EXPECT_TRUE(lc["rope_scaling"].is_null());
}

// ---- KVs of a generated tiny llama --------------------------------------------------------------

TEST(GgufExport, KvsOfTinyLlama) {
  TempDir dir;
  const fs::path m = dir / "m";
  auto made = run_smelt("dev make-model " + quote(m) +
                        " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const json config = read_json_file(m / "config.json");
  const auto kvs = gguf_export_kvs(m, config, "tiny", -1);

  auto u32 = [&](const std::string& key) -> uint64_t {
    const GgufValue* v = kv(kvs, key);
    EXPECT_TRUE(v && v->type() == GgufType::kU32) << key;
    return v ? v->as_uint().value_or(0) : 0;
  };
  auto str = [&](const std::string& key) -> std::string {
    const GgufValue* v = kv(kvs, key);
    EXPECT_TRUE(v && v->type() == GgufType::kString) << key;
    return v ? std::string(v->as_string().value_or("")) : "";
  };
  auto f32 = [&](const std::string& key) -> double {
    const GgufValue* v = kv(kvs, key);
    EXPECT_TRUE(v && v->type() == GgufType::kF32) << key;
    return v ? v->as_float().value_or(0) : 0;
  };
  EXPECT_EQ(kvs.front().key, "general.architecture");
  EXPECT_EQ(str("general.architecture"), "llama");
  EXPECT_EQ(str("general.name"), "tiny");
  EXPECT_EQ(u32("general.quantization_version"), 2u);
  EXPECT_EQ(kv(kvs, "general.file_type"), nullptr);  // the caller's choice
  EXPECT_EQ(u32("llama.context_length"), 2048u);
  EXPECT_EQ(u32("llama.embedding_length"), 64u);
  EXPECT_EQ(u32("llama.block_count"), 2u);
  EXPECT_EQ(u32("llama.feed_forward_length"), 128u);
  EXPECT_EQ(u32("llama.attention.head_count"), 4u);
  EXPECT_EQ(u32("llama.attention.head_count_kv"), 2u);
  EXPECT_FLOAT_EQ(f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_FLOAT_EQ(f32("llama.rope.freq_base"), 10000.0f);
  EXPECT_EQ(u32("llama.rope.dimension_count"), 16u);
  EXPECT_EQ(u32("llama.attention.key_length"), 16u);  // config has head_dim
  EXPECT_EQ(u32("llama.vocab_size"), 320u);

  EXPECT_EQ(str("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(str("tokenizer.ggml.pre"), "gpt-2");  // ByteLevel with the GPT-2 regex
  const auto tokens = kv(kvs, "tokenizer.ggml.tokens")->string_array().value();
  ASSERT_EQ(tokens.size(), 320u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(tokens[3 + 'a'], "a");         // byte tokens follow the specials
  EXPECT_EQ(tokens[3 + ' '], "\xc4\xa0");  // ' ' as byte-level 'Ġ'
  const GgufValue* types = kv(kvs, "tokenizer.ggml.token_type");
  ASSERT_EQ(types->elem_type(), GgufType::kI32);
  ASSERT_EQ(types->size(), 320u);
  EXPECT_EQ(types->at(0).as_int(), kGgufTokenControl);
  EXPECT_EQ(types->at(2).as_int(), kGgufTokenControl);
  EXPECT_EQ(types->at(3).as_int(), kGgufTokenNormal);
  EXPECT_EQ(types->at(319).as_int(), kGgufTokenNormal);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.scores"), nullptr);
  const auto merges = kv(kvs, "tokenizer.ggml.merges")->string_array().value();
  const json tj = read_json_file(m / "tokenizer.json");
  ASSERT_EQ(merges.size(), tj["model"]["merges"].size());
  EXPECT_EQ(merges[0], tj["model"]["merges"][0].get<std::string>());
  EXPECT_EQ(u32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(u32("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(u32("tokenizer.ggml.unknown_token_id"), 0u);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.padding_token_id"), nullptr);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.add_bos_token")->as_bool(), true);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.add_eos_token")->as_bool(), false);
  EXPECT_EQ(kv(kvs, "tokenizer.chat_template"), nullptr);

  // A layer-surgery merge can change the block count; a chat template is carried.
  json tc = read_json_file(m / "tokenizer_config.json");
  tc["chat_template"] = "{{ messages }}";
  std::ofstream(m / "tokenizer_config.json") << tc.dump();
  const auto kvs3 = gguf_export_kvs(m, config, "", 3);
  EXPECT_EQ(kv(kvs3, "llama.block_count")->as_uint(), 3u);
  EXPECT_EQ(kv(kvs3, "general.name"), nullptr);
  EXPECT_EQ(kv(kvs3, "tokenizer.chat_template")->as_string(), "{{ messages }}");
}

TEST(GgufExport, KvsPadMissingIdsAndReportConfigErrors) {
  TempDir dir;
  const fs::path m = dir / "m";
  ASSERT_EQ(run_smelt("dev make-model " + quote(m) + " --vocab 300").exit_code, 0);
  json config = read_json_file(m / "config.json");
  config["vocab_size"] = 304;  // embedding rows beyond the tokenizer's ids
  const auto kvs = gguf_export_kvs(m, config, "x", -1);
  const auto tokens = kv(kvs, "tokenizer.ggml.tokens")->string_array().value();
  ASSERT_EQ(tokens.size(), 304u);
  EXPECT_EQ(tokens[303], "[PAD303]");
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.token_type")->at(303).as_int(), kGgufTokenUnused);

  json small = config;
  small["vocab_size"] = 200;
  EXPECT_NE(error_of([&] { gguf_export_kvs(m, small, "x", -1); }).find("vocab_size"),
            std::string::npos);
  json no_eps = config;
  no_eps.erase("rms_norm_eps");
  EXPECT_NE(error_of([&] { gguf_export_kvs(m, no_eps, "x", -1); }).find("rms_norm_eps"),
            std::string::npos);
  json bad_heads = config;
  bad_heads["num_attention_heads"] = "4";
  EXPECT_NE(error_of([&] { gguf_export_kvs(m, bad_heads, "x", -1); }).find("num_attention_heads"),
            std::string::npos);
  json longrope = config;
  longrope["rope_scaling"] = {{"rope_type", "longrope"}};
  EXPECT_NE(error_of([&] { gguf_export_kvs(m, longrope, "x", -1); }).find("longrope"),
            std::string::npos);
  json linear = config;
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const auto lkvs = gguf_export_kvs(m, linear, "x", -1);
  EXPECT_EQ(kv(lkvs, "llama.rope.scaling.type")->as_string(), "linear");
  EXPECT_EQ(kv(lkvs, "llama.rope.scaling.factor")->as_float(), 2.0);
  EXPECT_NE(error_of([&] { gguf_export_kvs(m, config, "x", 0); }), "");
  fs::remove(m / "tokenizer.json");
  EXPECT_NE(error_of([&] { gguf_export_kvs(m, config, "x", -1); }).find("tokenizer"),
            std::string::npos);
}

TEST(GgufExport, BpePreTypeFromPreTokenizer) {
  EXPECT_EQ(gguf_bpe_pre_type({{"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", true}}}}),
            "gpt-2");
  EXPECT_EQ(gguf_bpe_pre_type({{"pre_tokenizer", {{"type", "ByteLevel"}}}}), "gpt-2");
  EXPECT_EQ(gguf_bpe_pre_type({{"pre_tokenizer", nullptr}}), "default");
  auto split_then_bytes = [](const std::string& regex) {
    return json{{"pre_tokenizer",
                 {{"type", "Sequence"},
                  {"pretokenizers",
                   {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}},
                    {{"type", "ByteLevel"}, {"use_regex", false}}}}}}};
  };
  EXPECT_EQ(
      gguf_bpe_pre_type(split_then_bytes(
          R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)")),
      "llama-bpe");
  EXPECT_EQ(
      gguf_bpe_pre_type(split_then_bytes(
          R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)")),
      "qwen2");
  EXPECT_EQ(gguf_bpe_pre_type(split_then_bytes("\\p{N}")), "default");
}

TEST(GgufExport, CorruptTokenizerJsonNamesFile) {
  TempDir dir;
  const fs::path m = dir / "m";
  ASSERT_EQ(run_smelt("dev make-model " + quote(m)).exit_code, 0);
  const json config = read_json_file(m / "config.json");
  const json good = read_json_file(m / "tokenizer.json");
  const fs::path tf = m / "tokenizer.json";
  auto error_with = [&](const std::string& text) {
    write_bytes(tf, text);
    return error_of([&] { gguf_export_kvs(m, config, "x", -1); });
  };
  std::string e = error_with(good.dump().substr(0, 500));  // truncated
  EXPECT_NE(e.find(tf.string()), std::string::npos) << e;
  EXPECT_NE(e.find("JSON"), std::string::npos) << e;

  json bad = good;
  bad["model"]["vocab"]["zzz"] = 5000;
  e = error_with(bad.dump());
  EXPECT_NE(e.find(tf.string()), std::string::npos) << e;
  bad = good;
  bad["model"]["vocab"]["zzz"] = -1;
  EXPECT_NE(error_with(bad.dump()).find(tf.string()), std::string::npos);
  bad = good;
  bad["model"]["merges"][0] = 7;
  EXPECT_NE(error_with(bad.dump()).find("merges[0]"), std::string::npos);
  bad = good;
  bad["model"]["type"] = "Unigram";  // with BPE's vocab object: refused by the engine
  EXPECT_NE(error_with(bad.dump()).find(tf.string()), std::string::npos);
  // A valid Unigram model: loaded by the engine, refused by GGUF export.
  bad = good;
  std::vector<std::pair<int, std::string>> by_id;
  for (const auto& [token, id] : good["model"]["vocab"].items()) by_id.emplace_back(id, token);
  std::sort(by_id.begin(), by_id.end());
  json pieces = json::array();
  for (const auto& [id, token] : by_id) pieces.push_back({token, -1.0});
  bad["model"] = {{"type", "Unigram"}, {"vocab", pieces}, {"unk_id", nullptr}};
  e = error_with(bad.dump());
  EXPECT_NE(e.find(tf.string()), std::string::npos) << e;
  EXPECT_NE(e.find("Unigram"), std::string::npos) << e;
  // An added token spelled like a vocab token but with another id: the engine refuses the ids.
  bad = good;
  bad["added_tokens"][0]["content"] = "a";
  e = error_with(bad.dump());
  EXPECT_NE(e.find(tf.string()), std::string::npos) << e;
  EXPECT_NE(e.find("added_tokens[0]"), std::string::npos) << e;
  bad = good;
  bad["added_tokens"] = "nope";
  EXPECT_NE(error_with(bad.dump()).find("added_tokens"), std::string::npos);
}

TEST(GgufExport, ByteLevelBpeWithNoMergesIsAcceptedAndWritesAnEmptyMergesList) {
  // Every token a byte or an added token: no merges at all is a valid byte-level BPE.
  TempDir dir;
  const fs::path m = dir / "m";
  ASSERT_EQ(run_smelt("dev make-model " + quote(m)).exit_code, 0);
  const json config = read_json_file(m / "config.json");
  json tj = read_json_file(m / "tokenizer.json");
  ASSERT_FALSE(tj["model"]["merges"].empty());
  tj["model"]["merges"] = json::array();
  write_bytes(m / "tokenizer.json", tj.dump());
  std::vector<GgufKv> kvs;
  ASSERT_EQ(error_of([&] { kvs = gguf_export_kvs(m, config, "x", -1); }), "");
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.model")->as_string(), "gpt2");
  // llama.cpp needs the key for a "gpt2" vocabulary, so it is written, empty.
  const GgufValue* merges = kv(kvs, "tokenizer.ggml.merges");
  ASSERT_NE(merges, nullptr);
  EXPECT_EQ(merges->elem_type(), GgufType::kString);
  EXPECT_EQ(merges->size(), 0u);
}

// ---- SentencePiece tokenizer.model --------------------------------------------------------------

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_key(std::string& out, uint32_t field, uint32_t wire) {
  put_varint(out, field << 3 | wire);
}
void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_float(std::string& out, uint32_t field, float f) {
  put_key(out, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  for (int i = 0; i < 4; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}
// One ModelProto.pieces entry; type 0 = leave the field out (NORMAL).
std::string sp_piece(const std::string& text, float score, int type) {
  std::string p;
  put_bytes(p, 1, text);
  put_float(p, 2, score);
  if (type) {
    put_key(p, 3, 0);
    put_varint(p, static_cast<uint64_t>(type));
  }
  return p;
}

// trainer_spec with byte_fallback = true (field 35): libsentencepiece accepts byte pieces only so.
std::string byte_fallback_trainer_spec() {
  std::string spec;
  put_key(spec, 35, 0);
  put_varint(spec, 1);
  std::string out;
  put_bytes(out, 2, spec);
  return out;
}

// A tiny SentencePiece model that libsentencepiece loads: <unk> <s> </s>, the 256 byte pieces,
// ▁a (with an unknown field, which readers must skip), b, a user-defined <|u|>, a one-character
// user-defined Q, an unused zz, then a normalizer_spec.
std::string tiny_sentencepiece() {
  std::string model = byte_fallback_trainer_spec();
  put_bytes(model, 1, sp_piece("<unk>", 0.0f, 2));
  put_bytes(model, 1, sp_piece("<s>", 0.0f, 3));
  put_bytes(model, 1, sp_piece("</s>", 0.0f, 3));
  for (int b = 0; b < 256; ++b)
    put_bytes(model, 1, sp_piece(fmt::format("<0x{:02X}>", b), 0.0f, 6));
  std::string a = sp_piece(
      "\xe2\x96\x81"
      "a",
      -1.5f, 0);
  put_key(a, 9, 0);  // unknown varint field
  put_varint(a, 300);
  put_bytes(model, 1, a);
  put_bytes(model, 1, sp_piece("b", -2.25f, 1));
  put_bytes(model, 1, sp_piece("<|u|>", 0.0f, 4));
  put_bytes(model, 1, sp_piece("Q", 0.0f, 4));
  put_bytes(model, 1, sp_piece("zz", -9.0f, 5));
  std::string normalizer;
  put_bytes(normalizer, 1, "identity");  // NormalizerSpec.name
  put_bytes(model, 3, normalizer);
  return model;
}
constexpr size_t kTinyPieces = 264;

TEST(GgufExport, SentencePieceModelParsedIntoTokensScoresTypes) {
  TempDir dir;
  const fs::path f = dir / "tokenizer.model";
  write_bytes(f, tiny_sentencepiece());
  const GgufVocab v = gguf_sentencepiece_vocab(f, kTinyPieces + 2);
  EXPECT_EQ(v.model, "llama");
  EXPECT_EQ(v.pre, "default");
  ASSERT_EQ(v.tokens.size(), kTinyPieces + 2);
  ASSERT_EQ(v.scores.size(), kTinyPieces + 2);
  ASSERT_EQ(v.token_types.size(), kTinyPieces + 2);
  const std::vector<std::string> head(v.tokens.begin(), v.tokens.begin() + 4);
  EXPECT_EQ(head, (std::vector<std::string>{"<unk>", "<s>", "</s>", "<0x00>"}));
  const std::vector<std::string> tail(v.tokens.begin() + 258, v.tokens.end());
  EXPECT_EQ(tail, (std::vector<std::string>{"<0xFF>",
                                            "\xe2\x96\x81"
                                            "a",
                                            "b", "<|u|>", "Q", "zz", "[PAD264]", "[PAD265]"}));
  const std::vector<float> tail_scores(v.scores.begin() + 258, v.scores.end());
  EXPECT_EQ(tail_scores, (std::vector<float>{0, -1.5f, -2.25f, 0, 0, -9, -10000, -10000}));
  EXPECT_EQ(v.token_types[0], kGgufTokenUnknown);
  EXPECT_EQ(v.token_types[1], kGgufTokenControl);
  EXPECT_EQ(v.token_types[2], kGgufTokenControl);
  EXPECT_EQ(v.token_types[3], kGgufTokenByte);
  const std::vector<int32_t> tail_types(v.token_types.begin() + 258, v.token_types.end());
  // A one-character user-defined piece reads as normal: libsentencepiece's API cannot tell the
  // two apart (docs/tokenizer-sentencepiece.md, "Vocabulary").
  EXPECT_EQ(tail_types,
            (std::vector<int32_t>{kGgufTokenByte, kGgufTokenNormal, kGgufTokenNormal,
                                  kGgufTokenUserDefined, kGgufTokenNormal, kGgufTokenUnused,
                                  kGgufTokenUnused, kGgufTokenUnused}));
  EXPECT_EQ(gguf_sentencepiece_vocab(f, -1).tokens.size(), kTinyPieces);
  EXPECT_EQ(gguf_sentencepiece_vocab(f, 3).tokens.size(), 3u);  // the converter drops extra pieces

  // Through gguf_export_kvs: tokenizer.model wins over tokenizer.json, as in the converter.
  const fs::path m = dir / "m";
  ASSERT_EQ(run_smelt("dev make-model " + quote(m)).exit_code, 0);
  json config = read_json_file(m / "config.json");
  config["vocab_size"] = kTinyPieces;
  fs::copy_file(f, m / "tokenizer.model");
  const auto kvs = gguf_export_kvs(m, config, "sp", -1);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.model")->as_string(), "llama");
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.scores")->size(), kTinyPieces);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.scores")->at(260).as_float(), -2.25);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.merges"), nullptr);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.bos_token_id")->as_uint(), 1u);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.eos_token_id")->as_uint(), 2u);
  EXPECT_EQ(kv(kvs, "tokenizer.ggml.unknown_token_id")->as_uint(), 0u);
}

// Whatever libsentencepiece refuses is an error naming the file (docs/tokenizer-sentencepiece.md).
TEST(GgufExport, CorruptSentencePieceModelNamesFile) {
  TempDir dir;
  const fs::path f = dir / "tokenizer.model";
  const std::string good = tiny_sentencepiece();
  auto error_with = [&](const std::string& bytes) {
    write_bytes(f, bytes);
    return error_of([&] { gguf_sentencepiece_vocab(f, -1); });
  };
  // Every truncation is an error naming the file, or (cut between fields) a model of fewer
  // pieces; the whole file has them all.
  for (size_t cut = 0; cut < good.size(); ++cut) {
    std::string e;
    size_t pieces = 0;
    try {
      write_bytes(f, good.substr(0, cut));
      pieces = gguf_sentencepiece_vocab(f, -1).tokens.size();
    } catch (const Error& err) {
      e = err.what();
    }
    if (e.empty()) {
      EXPECT_LE(pieces, kTinyPieces) << "cut at " << cut;
    } else {
      EXPECT_NE(e.find(f.string()), std::string::npos) << e;
    }
  }
  EXPECT_EQ(error_with(good), "");
  std::string e = error_with("");
  EXPECT_NE(e.find(f.string()), std::string::npos) << e;  // no pieces, so no <unk>
  e = error_with("not a model");
  EXPECT_NE(e.find(f.string()), std::string::npos) << e;
  EXPECT_NE(e.find("not a SentencePiece model"), std::string::npos) << e;
  e = error_with(good.substr(0, good.size() - 3));
  EXPECT_NE(e.find(f.string()), std::string::npos) << e;

  std::string huge;  // a piece claiming 2^40 bytes
  put_key(huge, 1, 2);
  put_varint(huge, uint64_t{1} << 40);
  EXPECT_NE(error_with(huge).find(f.string()), std::string::npos);
  std::string group;  // wire type 3 (groups) is not accepted
  put_key(group, 5, 3);
  EXPECT_NE(error_with(group).find(f.string()), std::string::npos);
  std::string no_text = byte_fallback_trainer_spec();
  put_bytes(no_text, 1, sp_piece("<unk>", 0.0f, 2));
  std::string p;
  put_float(p, 2, 1.0f);
  put_bytes(no_text, 1, p);
  EXPECT_NE(error_with(no_text).find(f.string()), std::string::npos);
  std::string long_varint(11, '\xff');
  EXPECT_NE(error_with(long_varint).find(f.string()), std::string::npos);
  // Byte pieces need byte_fallback and all 256 of them, as the library (and the converter,
  // which loads the file with it) require.
  std::string one_byte;
  put_bytes(one_byte, 1, sp_piece("<unk>", 0.0f, 2));
  put_bytes(one_byte, 1, sp_piece("<0x0A>", 0.0f, 6));
  EXPECT_NE(error_with(one_byte).find(f.string()), std::string::npos);
  // libsentencepiece throws (not a Status) for a piece that starts with a NUL byte (found by
  // fuzz/sentencepiece_fuzz.cpp); still an error naming the file, not a crash.
  std::string nul_piece;
  put_bytes(nul_piece, 1, sp_piece("<unk>", 0.0f, 2));
  put_bytes(nul_piece, 1, sp_piece(std::string(1, '\0'), 0.0f, 1));
  EXPECT_NE(error_with(nul_piece).find(f.string()), std::string::npos);
  std::string nan_score;
  put_bytes(nan_score, 1, sp_piece("<unk>", 0.0f, 2));
  put_bytes(nan_score, 1, sp_piece("x", std::nanf(""), 1));
  e = error_with(nan_score);
  EXPECT_NE(e.find(f.string()), std::string::npos) << e;
  EXPECT_NE(e.find("not finite"), std::string::npos) << e;
}

// ---- the real client: llama.cpp via node-llama-cpp ----------------------------------------------

// Writes `m` as an all-F32 GGUF the way an exporter would: KVs from gguf_export_kvs, names from
// gguf_tensor_name, Q/K rows permuted.
void write_gguf(const TinyModel& m, const fs::path& dir, const fs::path& out) {
  const std::string arch = gguf_arch_for(m.config);
  auto kvs = gguf_export_kvs(dir, m.config, "smelt tiny llama", -1);
  gguf_set_kv(kvs, "general.file_type",
              GgufValue::of(*gguf_file_type_for(kernels::GgmlType::kF32)));
  std::vector<GgufTensorSpec> specs;
  std::vector<std::vector<float>> data;
  for (const auto& [name, values] : m.w) {
    auto gguf_name = gguf_tensor_name(arch, name);
    if (!gguf_name) continue;
    const auto& shape = m.shape.at(name);
    std::vector<float> v = values;
    for (float& x : v) x += gguf_value_offset(arch, name);
    if (int64_t heads = gguf_qk_permute_heads(arch, name, shape[0], m.config)) {
      const uint64_t row = shape.size() == 2 ? shape[1] : 1;
      for (uint64_t r = 0; r < shape[0]; ++r) {
        std::copy_n(values.begin() + gguf_qk_source_row(r, shape[0], heads) * row, row,
                    v.begin() + r * row);
      }
    }
    specs.push_back({*gguf_name, kernels::GgmlType::kF32, shape});
    data.push_back(std::move(v));
  }
  GgufWriter writer(out, kvs, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    writer.write(i, 0, data[i].data(), data[i].size() * sizeof(float));
  }
  writer.finish();
}

// Exports the model in `m` (with matrices scaled by 10) to GGUF, runs it through llama.cpp with
// tests/node/llama_eval.mjs and checks the next-token log-softmax against the HF reference, and
// that the reference with the other RoPE pairing differs clearly (so a Q/K layout mistake shows).
void expect_llama_cpp_matches_reference(const fs::path& m, const fs::path& work) {
  const TinyModel model = load_tiny_model(m, 10.0f);
  const fs::path gguf = work / "model.gguf";
  write_gguf(model, m, gguf);

  const std::vector<int> ids = {1, 3 + 'h', 3 + 'e', 3 + 'l', 3 + 'l', 3 + 'o', 300, 42};
  const json out = smelt::testing::llama_cpp_eval(gguf, ids, work);
  ASSERT_TRUE(out.is_object());
  ASSERT_EQ(out["n_vocab"], model.vocab);
  ASSERT_EQ(out["logits"].size(), static_cast<size_t>(model.vocab));
  const auto ref = reference_log_softmax(model, ids);
  const auto wrong_layout = reference_log_softmax(model, ids, /*interleaved_rope=*/true);
  double max_err = 0, layout_gap = 0;
  for (int i = 0; i < model.vocab; ++i) {
    ASSERT_TRUE(out["logits"][i].is_number()) << "logit " << i << " is " << out["logits"][i];
    const double got = out["logits"][i].get<double>();
    ASSERT_TRUE(std::isfinite(got));
    max_err = std::max(max_err, std::abs(got - ref[i]));
    layout_gap = std::max(layout_gap, std::abs(wrong_layout[i] - ref[i]));
  }
  // llama_eval.mjs runs with an F32 KV cache and no flash attention: f32 rounding only (3e-6 seen).
  EXPECT_LT(max_err, 1e-4) << "llama.cpp disagrees with the HF reference forward pass";
  EXPECT_GT(layout_gap, 0.5) << "the test model cannot tell the Q/K layouts apart";
  const int ref_argmax = static_cast<int>(std::max_element(ref.begin(), ref.end()) - ref.begin());
  EXPECT_EQ(out["argmax"], ref_argmax);
  std::cout << "node-llama-cpp: max |log_softmax - reference| = " << max_err
            << " (a wrong Q/K layout would be off by " << layout_gap << ")\n";
}

TEST(GgufExport, NodeLlamaCppLoadsTinyLlama) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  const fs::path m = dir / "m";
  auto made = run_smelt("dev make-model " + quote(m) +
                        " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320 --dtype F32");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  expect_llama_cpp_matches_reference(m, dir.path());
}

// A SentencePiece vocabulary of `n` pieces: <unk> <s> </s>, the 256 byte pieces, then words.
std::string sentencepiece_of_size(int n) {
  std::string model = byte_fallback_trainer_spec();
  put_bytes(model, 1, sp_piece("<unk>", 0.0f, 2));
  put_bytes(model, 1, sp_piece("<s>", 0.0f, 3));
  put_bytes(model, 1, sp_piece("</s>", 0.0f, 3));
  for (int b = 0; b < 256; ++b)
    put_bytes(model, 1, sp_piece(fmt::format("<0x{:02X}>", b), 0.0f, 6));
  for (int i = 259; i < n; ++i) {
    put_bytes(model, 1, sp_piece("\xe2\x96\x81w" + std::to_string(i), -static_cast<float>(i), 0));
  }
  return model;
}

// qwen2 (HF's RoPE layout, no permutation) with a SentencePiece tokenizer ("llama" vocabulary).
TEST(GgufExport, NodeLlamaCppLoadsTinyQwen2WithSentencePiece) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  const fs::path m = dir / "m";
  auto made = run_smelt("dev make-model " + quote(m) +
                        " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320 --dtype F32"
                        " --arch Qwen2ForCausalLM --model-type qwen2");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  write_bytes(m / "tokenizer.model", sentencepiece_of_size(320));
  const auto kvs = gguf_export_kvs(m, read_json_file(m / "config.json"), "q", -1);
  ASSERT_EQ(kv(kvs, "general.architecture")->as_string(), "qwen2");
  ASSERT_EQ(kv(kvs, "tokenizer.ggml.model")->as_string(), "llama");
  expect_llama_cpp_matches_reference(m, dir.path());
}

}  // namespace
}  // namespace smelt::io

namespace smelt::io {
namespace {

// `smelt merge ... out.gguf` exports a safetensors merge that llama.cpp loads and runs like the HF
// model, and a linear merge of a model with itself gives the model's own logits.
TEST(GgufExport, SmeltMergeExportRunsInLlamaCppAndSelfMergeKeepsTheLogits) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  const fs::path m = dir / "m";
  auto made = run_smelt("dev make-model " + quote(m) +
                        " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320 --dtype F32");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  smelt::testing::write_bytes(
      dir / "copy.yml",
      fmt::format("models:\n  - model: {}\nmerge_method: passthrough\n", m.string()));
  smelt::testing::write_bytes(
      dir / "self.yml",
      fmt::format("models:\n  - model: {0}\n    parameters: {{weight: 0.5}}\n  - model: {0}\n"
                  "    parameters: {{weight: 0.5}}\nmerge_method: linear\ndtype: float32\n",
                  m.string()));
  for (const char* name : {"copy", "self"}) {
    // F32 tensors, so the export can be compared with the f64 reference at f32 rounding.
    auto r = run_smelt(fmt::format("merge -q --out-type F32 {} {}",
                                   quote(dir / (std::string(name) + ".yml")),
                                   quote(dir / (std::string(name) + ".gguf"))));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  auto file = GgufFile::open(dir / "copy.gguf");
  EXPECT_EQ(file->find_kv("general.architecture")->as_string(), "llama");
  EXPECT_TRUE(file->find("blk.1.attn_q.weight"));
  EXPECT_EQ(file->find("blk.1.attn_norm.weight")->ggml_type, 0);  // F32 norms
  const std::vector<int> ids = {1, 3 + 'h', 3 + 'e', 3 + 'l', 3 + 'l', 3 + 'o', 300, 42};
  const auto copy = llama_cpp_log_softmax(dir / "copy.gguf", ids, dir.path());
  const auto self = llama_cpp_log_softmax(dir / "self.gguf", ids, dir.path());
  ASSERT_EQ(copy.size(), 320u);
  ASSERT_EQ(self.size(), 320u);
  // The export matches an independent double-precision forward pass of the HF weights.
  const auto ref = reference_log_softmax(load_tiny_model(m, 1.0f), ids);
  double export_err = 0, self_err = 0;
  for (size_t i = 0; i < copy.size(); ++i) {
    export_err = std::max(export_err, std::abs(copy[i] - ref[i]));
    self_err = std::max(self_err, std::abs(copy[i] - self[i]));
  }
  EXPECT_LT(export_err, 1e-4);
  EXPECT_EQ(self_err, 0.0) << "the self-merge changed the logits";
}

// ---- llama.cpp as the reference of every exported family ----------------------------------------

// The largest |a - b| over every position and token (infinity when the shapes differ).
double max_abs_diff(const std::vector<std::vector<double>>& a,
                    const std::vector<std::vector<double>>& b, size_t from_position = 0) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t t = from_position; t < a.size(); ++t) {
    if (a[t].size() != b[t].size()) return INFINITY;
    for (size_t i = 0; i < a[t].size(); ++i) m = std::max(m, std::abs(a[t][i] - b[t][i]));
  }
  return m;
}

// A 20-token prompt: longer than the small sliding windows the tests use.
const std::vector<int> kLongPrompt = {1,   3 + 'h', 3 + 'e', 3 + 'l', 3 + 'l', 3 + 'o', 300,
                                      42,  3 + ' ', 3 + 'w', 3 + 'o', 3 + 'r', 3 + 'l', 3 + 'd',
                                      271, 17,      299,     3 + 'a', 64,      5};

// Makes a model with `make_args` (F32, sharp weights), exports it with `smelt merge`
// (passthrough, F32, the real exporter) to dir/model.gguf and returns llama.cpp's log-softmax at
// every position of kLongPrompt.
std::vector<std::vector<double>> export_and_run(const TempDir& dir, const std::string& make_args) {
  const fs::path m = dir / "m";
  auto made =
      run_smelt("dev make-model " + quote(m) + " --dtype F32 --weight-std 0.2 " + make_args);
  EXPECT_EQ(made.exit_code, 0) << made.output;
  write_bytes(dir / "copy.yml",
              fmt::format("models:\n  - model: {}\nmerge_method: passthrough\n", m.string()));
  auto r = run_smelt("merge -q --out-type F32 " + quote(dir / "copy.yml") + " " +
                     quote(dir / "model.gguf"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return llama_cpp_log_softmax_all(dir / "model.gguf", kLongPrompt, dir.path());
}

TEST(GgufExport, NodeLlamaCppRunsTinyQwen3LikeHf) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  const auto got =
      export_and_run(dir,
                     "--hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --layers 2 --vocab 320"
                     " --arch Qwen3ForCausalLM --model-type qwen3 --rope-theta 1000");
  auto file = GgufFile::open(dir / "model.gguf");
  EXPECT_EQ(file->find_kv("general.architecture")->as_string(), "qwen3");
  EXPECT_EQ(file->find_kv("qwen3.attention.key_length")->as_uint(), 32u);
  ASSERT_TRUE(file->find("blk.1.attn_q_norm.weight"));
  EXPECT_EQ(file->find("blk.1.attn_k_norm.weight")->shape, (std::vector<uint64_t>{32}));
  const TinyModel model = load_tiny_model(dir / "m", 1.0f);
  const auto ref = reference_log_softmax_all(model, kLongPrompt);
  ReferenceOptions no_norm, interleaved;
  no_norm.skip_qk_norm = true;
  interleaved.interleaved_rope = true;
  const double err = max_abs_diff(got, ref);
  const double norm_gap = max_abs_diff(reference_log_softmax_all(model, kLongPrompt, no_norm), ref);
  const double rope_gap =
      max_abs_diff(reference_log_softmax_all(model, kLongPrompt, interleaved), ref);
  EXPECT_LT(err, 1e-4) << "llama.cpp disagrees with the HF qwen3 reference";
  EXPECT_GT(norm_gap, 0.1) << "the test model cannot tell q_norm/k_norm from none";
  EXPECT_GT(rope_gap, 0.1) << "the test model cannot tell the RoPE layouts apart";
  std::cout << "qwen3: max |llama.cpp - reference| = " << err << " over " << kLongPrompt.size()
            << " positions (without q/k norms: " << norm_gap << ", interleaved RoPE: " << rope_gap
            << ")\n";
}

TEST(GgufExport, NodeLlamaCppRunsTinyGemma2LikeHf) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  // Window 5 < the 20-token prompt; soft caps small enough to change the result.
  const auto got =
      export_and_run(dir,
                     "--hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --layers 3 --vocab 320"
                     " --arch Gemma2ForCausalLM --model-type gemma2 --sliding-window 5"
                     " --attn-softcap 2 --final-softcap 3");
  auto file = GgufFile::open(dir / "model.gguf");
  EXPECT_EQ(file->find_kv("general.architecture")->as_string(), "gemma2");
  EXPECT_EQ(file->find_kv("gemma2.attention.sliding_window")->as_uint(), 5u);
  EXPECT_FALSE(file->find("output.weight"));
  ASSERT_TRUE(file->find("blk.0.post_ffw_norm.weight"));
  ASSERT_TRUE(file->find("blk.0.post_attention_norm.weight"));
  const TinyModel model = load_tiny_model(dir / "m", 1.0f);
  ASSERT_EQ(model.sliding_window, 5);
  ASSERT_EQ(model.attn_softcap, 2.0);
  ReferenceOptions hf, as_llama_cpp, no_one, no_window, no_cap;
  as_llama_cpp.llama_cpp_gelu = true;
  no_one.gemma_norm_without_one = no_one.llama_cpp_gelu = true;
  no_window.ignore_sliding_window = no_window.llama_cpp_gelu = true;
  no_cap.skip_softcapping = no_cap.llama_cpp_gelu = true;
  const auto ref = reference_log_softmax_all(model, kLongPrompt, as_llama_cpp);
  const double err = max_abs_diff(got, ref);
  const double hf_err = max_abs_diff(got, reference_log_softmax_all(model, kLongPrompt, hf));
  const double one_gap = max_abs_diff(reference_log_softmax_all(model, kLongPrompt, no_one), ref);
  const double cap_gap = max_abs_diff(reference_log_softmax_all(model, kLongPrompt, no_cap), ref);
  const auto full = reference_log_softmax_all(model, kLongPrompt, no_window);
  // The window only matters once a query has more than 5 keys.
  const double early_window_gap =
      max_abs_diff(std::vector<std::vector<double>>(full.begin(), full.begin() + 5),
                   std::vector<std::vector<double>>(ref.begin(), ref.begin() + 5));
  const double window_gap = max_abs_diff(full, ref);
  // The exported norms are the HF weights plus 1.
  const auto& norm = *file->find("blk.1.ffn_norm.weight");
  std::vector<float> stored(64);
  ASSERT_EQ(norm.ggml_type, 0);
  file->read(norm, 0, stored.data(), stored.size() * sizeof(float));
  const auto& hf_norm = model.w.at("model.layers.1.pre_feedforward_layernorm.weight");
  for (size_t i = 0; i < stored.size(); ++i) EXPECT_EQ(stored[i], hf_norm[i] + 1.0f) << i;

  EXPECT_LT(err, 1e-4) << "llama.cpp disagrees with the HF gemma2 reference";
  EXPECT_LT(hf_err, 1e-2) << "llama.cpp's F16 gelu table should be the only difference";
  EXPECT_GT(one_gap, 0.5) << "the test model cannot tell 1 + w from w";
  EXPECT_GT(cap_gap, 0.05) << "the soft caps do not matter in the test model";
  EXPECT_EQ(early_window_gap, 0.0);
  EXPECT_GT(window_gap, 0.05) << "the sliding window does not matter in the test model";
  std::cout << "gemma2: max |llama.cpp - reference (F16 gelu table)| = " << err
            << ", vs exact HF gelu " << hf_err << "; gaps: norms as w " << one_gap
            << ", no soft-capping " << cap_gap << ", no sliding window " << window_gap << "\n";
}

// llama with RoPE scaling: linear (rope.scaling.* keys) and llama3 (rope_freqs.weight).
TEST(GgufExport, NodeLlamaCppRunsLlamaRopeScalingLikeHf) {
  REQUIRE_NODE_LLAMA_CPP();
  for (const char* scaling : {"linear", "llama3"}) {
    SCOPED_TRACE(scaling);
    TempDir dir;
    const auto got = export_and_run(
        dir, fmt::format("--hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320"
                         " --rope-scaling {} --rope-factor 4 --rope-original-context 64",
                         scaling));
    auto file = GgufFile::open(dir / "model.gguf");
    EXPECT_EQ(file->find("rope_freqs.weight") != nullptr, std::string(scaling) == "llama3");
    if (std::string(scaling) == "linear") {
      EXPECT_EQ(file->find_kv("llama.rope.scaling.type")->as_string(), "linear");
      EXPECT_EQ(file->find_kv("llama.rope.scaling.factor")->as_float(), 4.0f);
    }
    const TinyModel model = load_tiny_model(dir / "m", 1.0f);
    const auto ref = reference_log_softmax_all(model, kLongPrompt);
    ReferenceOptions plain;
    plain.skip_rope_scaling = true;
    const double err = max_abs_diff(got, ref);
    const double gap = max_abs_diff(reference_log_softmax_all(model, kLongPrompt, plain), ref);
    EXPECT_LT(err, 1e-4) << "llama.cpp disagrees with the HF reference";
    EXPECT_GT(gap, 0.05) << "the scaling does not matter in the test model";
    std::cout << scaling << " RoPE: max |llama.cpp - reference| = " << err
              << " (unscaled RoPE would be off by " << gap << ")\n";
  }
}

}  // namespace
}  // namespace smelt::io
