// Hugging Face -> GGUF names for export: the GGUF architecture of a config.json and the GGUF
// name of each tensor, both read from data tables in gguf_names.cpp (docs/gguf.md, "Tensor
// names").
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace smelt::io {

// The GGUF architecture of the model described by `config` (config.json): "llama" for
// LlamaForCausalLM and MistralForCausalLM (llama.cpp runs Mistral with the llama architecture),
// "qwen2", "qwen3" and "gemma2" for Qwen2ForCausalLM, Qwen3ForCausalLM and Gemma2ForCausalLM.
// Throws smelt::Error ("GGUF export supports llama, mistral, qwen2, qwen3 and gemma2 models;
// <arch> is not supported yet") for anything else or a config without "architectures".
std::string gguf_arch_for(const nlohmann::json& config);

// The GGUF name of HF tensor `hf_name` in a model of GGUF architecture `arch`:
//   model.embed_tokens.weight -> token_embd.weight     model.norm.weight -> output_norm.weight
//   lm_head.weight -> output.weight                     (qwen2 also lm_head.bias -> output.bias)
//   model.layers.N.input_layernorm.weight -> blk.N.attn_norm.weight
//   model.layers.N.self_attn.{q,k,v}_proj.{weight,bias} -> blk.N.attn_{q,k,v}.{weight,bias}
//   model.layers.N.self_attn.o_proj.weight -> blk.N.attn_output.weight
//   model.layers.N.post_attention_layernorm.weight -> blk.N.ffn_norm.weight
//   model.layers.N.mlp.{gate,up,down}_proj.weight -> blk.N.ffn_{gate,up,down}.weight
//   llama only (optional biases llama.cpp loads): o_proj.bias -> attn_output.bias,
//   mlp.{gate,up,down}_proj.bias -> ffn_{gate,up,down}.bias
//   qwen3: self_attn.{q,k}_norm.weight -> attn_{q,k}_norm.weight (no biases)
//   gemma2: post_attention_layernorm -> post_attention_norm, pre_feedforward_layernorm ->
//   ffn_norm, post_feedforward_layernorm -> post_ffw_norm (no biases)
// Returns nullopt for tensors the converter drops (names ending in .rotary_emb.inv_freq,
// .attention.masked_bias, .attention.bias; gemma2's lm_head.weight). Throws smelt::Error naming the
// tensor for any other name: llama.cpp refuses a file with tensors it does not load, so nothing may
// be passed through.
std::optional<std::string> gguf_tensor_name(const std::string& arch, const std::string& hf_name);

// A Mixtral expert matrix "model.layers.N.block_sparse_moe.experts.E.w1|w2|w3.weight": the GGUF
// tensor stacking every expert's (blk.N.ffn_gate_exps / ffn_down_exps / ffn_up_exps.weight) and E.
struct GgufExpertSlice {
  std::string name;
  int expert = 0;
};
std::optional<GgufExpertSlice> gguf_expert_slice(const std::string& hf_name);

}  // namespace smelt::io
