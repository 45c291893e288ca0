// The hyper-parameters of a Hugging Face llama / mistral / qwen2 / qwen3 / gemma2 config.json as
// GGUF metadata (docs/gguf.md, "Hyper-parameters" and "Gemma2"), and the head counts the Q/K
// permutation needs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "smelt/io/gguf.h"

namespace smelt::io {

// num_attention_heads; num_key_value_heads (num_attention_heads when absent); head_dim when the
// config gives it, else 256 for gemma2 (Gemma2Config's default) and hidden_size /
// num_attention_heads for the others. Throw smelt::Error naming the key
// when a value is missing, not a positive integer, or hidden_size is no multiple of the heads.
uint32_t gguf_head_count(const nlohmann::json& config);
uint32_t gguf_head_count_kv(const nlohmann::json& config);
uint32_t gguf_head_dim(const nlohmann::json& config);

// config.json's vocab_size (the embedding rows); throws smelt::Error when it is missing or more
// tokens than a GGUF array can hold.
uint32_t gguf_vocab_size(const nlohmann::json& config);

// Appends to `kvs` the <arch>.* hyper-parameter KVs of `config` (see gguf_export_kvs), with
// block_count = `block_count_override`, or the config's num_hidden_layers when it is -1. Throws
// smelt::Error naming the key for missing or malformed values or an unsupported RoPE scaling.
void gguf_add_hparam_kvs(std::vector<GgufKv>& kvs, const std::string& arch,
                         const nlohmann::json& config, int64_t block_count_override);

// Llama 3.x RoPE ("rope_scaling": {"rope_type": "llama3", ...}) needs an extra F32 tensor
// "rope_freqs.weight" of head_dim/2 frequency factors, computed from factor, low_freq_factor,
// high_freq_factor and original_max_position_embeddings as the converter computes them. Returns
// the factors for such a config, nullopt for every other config.
std::optional<std::vector<float>> gguf_rope_freqs(const nlohmann::json& config);

}  // namespace smelt::io
