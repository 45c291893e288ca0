// Generator of tiny llama-shaped Hugging Face model folders for tests, benchmarks and the demo.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "smelt/dtype.h"

namespace smelt::dev {

struct MakeModelOptions {
  int hidden_size = 64;
  int intermediate_size = 0;  // 0 = 2 * hidden_size (rounded to a multiple of 8)
  int num_layers = 2;
  int num_heads = 4;
  int num_kv_heads = 0;  // 0 = num_heads
  int vocab_size = 320;  // >= 259: 3 special tokens + 256 byte tokens + merges
  DType dtype = DType::kBF16;
  int shards = 1;
  uint64_t seed = 0;
  bool tied_embeddings = false;
  std::string architecture = "LlamaForCausalLM";  // written to config.json "architectures"
  std::string model_type = "llama";
  // Family extras, keyed on `architecture`: Qwen3ForCausalLM adds per-head q_norm/k_norm;
  // Gemma2ForCausalLM adds its four norms per layer (stored as w, applied as 1 + w), GeGLU
  // config keys, soft-capping and a tied head. Anything else is llama-shaped.
  int head_dim = 0;        // 0 = hidden_size / num_heads; written as config "head_dim"
  int sliding_window = 0;  // 0 = none (gemma2: 4096, its default); > 0 writes "sliding_window"
  double rope_theta = 10000.0;
  // "" = none (config "rope_scaling": null), "linear" or "llama3" (with rope_factor and, for
  // llama3, Llama 3.1's low/high frequency factors 1 and 4 and original_max_position_embeddings
  // rope_original_context, written inside rope_scaling).
  std::string rope_scaling;
  double rope_factor = 8.0;
  int rope_original_context = 8192;
  // Standard deviation of the random matrices (norm weights are 1 + 0.1 N(0,1), gemma2's
  // 0.1 N(0,1)); larger values make attention sharper, so test models can tell layouts apart.
  double weight_std = 0.02;
  // Gemma2 only (config.json): tanh soft-capping of attention scores and of the final logits.
  double attn_logit_softcapping = 50.0;
  double final_logit_softcapping = 30.0;
  int query_pre_attn_scalar = 0;  // 0 = head_dim (what llama.cpp's gemma2 uses)
  // Tensor naming: "llama" (model.layers.N.self_attn...) or "gpt2" (transformer.h.N.attn.c_attn,
  // config key n_layer, output head tied to transformer.wte).
  std::string style = "llama";
  // When non-empty: a fine-tune of the model in this folder. Its shapes are taken from that
  // model's config.json and every tensor is base + delta_scale * N(0,1) noise where a fraction
  // `sparsity` of the delta elements are zero.
  std::filesystem::path base;
  double delta_scale = 0.01;
  double sparsity = 0.0;
};

// Writes config.json, tokenizer.json (a minimal valid byte-level BPE), tokenizer_config.json,
// special_tokens_map.json, generation_config.json and the safetensors weights into `out`
// (created; must not exist or be empty). Values are deterministic in (seed, tensor name).
void make_model(const MakeModelOptions& options, const std::filesystem::path& out);

}  // namespace smelt::dev
