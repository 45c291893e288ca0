// What a Hugging Face llama / mistral / qwen2 model becomes in GGUF so that llama.cpp loads it:
// the architecture name, tensor names, the Q/K row permutation, tensor types and the metadata KVs
// (hyperparameters and tokenizer), following llama.cpp's convert_hf_to_gguf. Pure functions; the
// only I/O is reading the model folder's tokenizer files, every byte of which is checked.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/io/gguf.h"
#include "smelt/kernels/ggml_type.h"

namespace smelt::io {

// The GGUF architecture of the model described by `config` (config.json): "llama" for
// LlamaForCausalLM and MistralForCausalLM (llama.cpp runs Mistral with the llama architecture),
// "qwen2" for Qwen2ForCausalLM. Throws smelt::Error ("GGUF export supports llama, mistral and
// qwen2 models; <arch> is not supported yet") for anything else or a config without
// "architectures".
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
// Returns nullopt for tensors the converter drops (names ending in .rotary_emb.inv_freq,
// .attention.masked_bias, .attention.bias). Throws smelt::Error naming the tensor for any other
// name: llama.cpp refuses a file with tensors it does not load, so nothing may be passed through.
std::optional<std::string> gguf_tensor_name(const std::string& arch, const std::string& hf_name);

// The number of heads to permute HF tensor `hf_name` of `rows` rows by for the llama
// architecture, or 0 for no permutation: q_proj.weight/bias -> num_attention_heads,
// k_proj.weight/bias -> num_key_value_heads (num_attention_heads when absent). Other
// architectures (qwen2 runs RoPE in the NEOX layout HF uses) and other tensors return 0.
// Throws smelt::Error naming the tensor and the config.json key unless rows = heads × head_dim
// with an even head_dim (head_dim from config.json, else hidden_size / num_attention_heads).
//
// The permutation turns HF's rotate-half pairing (dimension i pairs with i + hd/2) into the
// interleaved pairs (2i, 2i+1) of llama.cpp's llama RoPE (docs/gguf.md, "Q/K permutation").
// With hd = rows / n_head, output row h*hd + 2*i + j is input row h*hd + j*(hd/2) + i, for
// h < n_head, i < hd/2, j in {0, 1}. It moves whole rows (a bias is a tensor of 1-element rows),
// so it commutes with elementwise merges.
int64_t gguf_qk_permute_heads(const std::string& arch, const std::string& hf_name, uint64_t rows,
                              const nlohmann::json& config);

// The input row that output row `out_row` of a `rows`-row tensor comes from under the Q/K
// permutation with `n_head` heads (formula above): the one implementation of the permutation.
// Throws smelt::Error unless rows is a positive multiple of 2 * n_head and out_row < rows.
uint64_t gguf_qk_source_row(uint64_t out_row, uint64_t rows, int64_t n_head);

// The tensor type llama.cpp's converter gives a tensor by default ("--outtype auto"): F32 for
// 1-D tensors and names ending in "_norm.weight" (llama.cpp needs 1-D tensors in F32); otherwise
// BF16 for BF16 sources and F16 for everything else (F16, F32, F64, FP8 sources).
kernels::GgmlType gguf_default_type(const std::string& gguf_name,
                                    const std::vector<uint64_t>& shape, DType stored);

// The general.file_type value (llama.cpp's LLAMA_FTYPE) of a file whose 2-D weights are all
// `type`: F32 0, F16 1, Q4_0 2, Q4_1 3, Q8_0 7, Q5_0 8, Q5_1 9, Q2_K 10, Q3_K 11 (Q3_K_S), Q4_K 14
// (Q4_K_S), Q5_K 16 (Q5_K_S), Q6_K 18, BF16 32. nullopt for other types. llama.cpp only prints it.
std::optional<uint32_t> gguf_file_type_for(kernels::GgmlType type);

// Llama 3.x RoPE ("rope_scaling": {"rope_type": "llama3", ...}) needs an extra F32 tensor
// "rope_freqs.weight" of head_dim/2 frequency factors, computed from factor, low_freq_factor,
// high_freq_factor and original_max_position_embeddings as the converter computes them. Returns
// the factors for such a config, nullopt for every other config.
std::optional<std::vector<float>> gguf_rope_freqs(const nlohmann::json& config);

// A tokenizer as GGUF stores it.
struct GgufVocab {
  std::string model;                // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;                  // tokenizer.ggml.pre
  std::vector<std::string> tokens;  // id order
  std::vector<float> scores;        // empty for "gpt2"
  std::vector<int32_t>
      token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;  // "gpt2" only: "left right", in rank order
};

// llama.cpp token types (tokenizer.ggml.token_type).
inline constexpr int32_t kGgufTokenNormal = 1;
inline constexpr int32_t kGgufTokenUnknown = 2;
inline constexpr int32_t kGgufTokenControl = 3;
inline constexpr int32_t kGgufTokenUserDefined = 4;
inline constexpr int32_t kGgufTokenUnused = 5;
inline constexpr int32_t kGgufTokenByte = 6;

// Reads a SentencePiece tokenizer.model (protobuf ModelProto) into a "llama" vocabulary: piece,
// score and type of each ModelProto.pieces entry, types kept as SentencePiece numbers them (which
// are llama.cpp's numbers). With `vocab_size` >= 0 the list is cut or padded to that size (padding
// "[PAD{id}]", score -10000, type unused), as the converter does. Throws smelt::Error naming the
// file for a truncated or malformed protobuf, an unknown piece type, or no pieces.
GgufVocab gguf_sentencepiece_vocab(const std::filesystem::path& tokenizer_model,
                                   int64_t vocab_size);

// llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) for the pre_tokenizer of a byte-level BPE
// tokenizer.json: "gpt-2" for a plain ByteLevel with its GPT-2 regex, "llama-bpe" / "qwen2" for a
// Split on the Llama 3 / Qwen2 regex followed by ByteLevel without regex, and "default"
// (llama.cpp's generic splitting; tokenization may differ from HF's) for anything else. The
// converter instead hashes the tokens of a test string and refuses unknown hashes, which a merged
// model's tokenizer usually is not.
std::string gguf_bpe_pre_type(const nlohmann::json& tokenizer_json);

// The metadata KVs of the GGUF file for the model in `model_dir` (config.json parsed as `config`),
// with general.name = `name` (omitted when empty) and block_count = `block_count_override`, or the
// config's num_hidden_layers when it is -1:
//   general.architecture, general.name, general.quantization_version (u32 2);
//   <arch>.context_length, .embedding_length, .block_count, .feed_forward_length,
//   .attention.head_count, .attention.head_count_kv, .attention.layer_norm_rms_epsilon (f32),
//   .rope.freq_base (f32, rope_theta, default 10000), .rope.dimension_count (head_dim or
//   hidden/heads), .vocab_size, .attention.key_length/.value_length (when config has head_dim),
//   .rope.scaling.* (linear and yarn scaling) -- all u32 unless noted;
//   tokenizer.ggml.model/pre/tokens/token_type (+ scores for "llama", merges for "gpt2"),
//   bos/eos/unknown/seperator/padding/mask token ids (u32), add_bos_token/add_eos_token (bool),
//   add_space_prefix (bool, when tokenizer_config.json sets add_prefix_space), chat_template
//   (tokenizer_config.json, chat_template.jinja or chat_template.json).
// The tokenizer comes, as in the converter, from tokenizer.model (SentencePiece) when present,
// else from tokenizer.json: a byte-level BPE becomes "gpt2"; a BPE with byte_fallback (a
// SentencePiece model in tokenizers' form) becomes "llama" with scores -1000. The token list has
// exactly vocab_size entries (config's vocab_size, the embedding rows), missing ids padded as
// "[PAD{id}]" of type unused.
//
// general.file_type is NOT included: it describes the tensor types the caller picks, so the caller
// adds it (gguf_set_kv(kvs, "general.file_type", GgufValue::of(*gguf_file_type_for(t)))).
// Throws smelt::Error naming the file and key for missing or malformed config values or tokenizer
// files, an unsupported RoPE scaling, or a model folder with no tokenizer.
std::vector<GgufKv> gguf_export_kvs(const std::filesystem::path& model_dir,
                                    const nlohmann::json& config, const std::string& name,
                                    int64_t block_count_override);

}  // namespace smelt::io
