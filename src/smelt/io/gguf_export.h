// What a Hugging Face llama / mistral / qwen2 model becomes in GGUF so that llama.cpp loads it,
// following llama.cpp's convert_hf_to_gguf (docs/gguf.md): the Q/K row permutation, tensor types
// and the metadata KVs. Names are in gguf_names.h, hyper-parameters in gguf_hparams.h and the
// tokenizer in gguf_tokenizer.h (all included here). Pure functions; the only I/O is reading the
// model folder's tokenizer files, every byte of which is checked.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/io/gguf.h"
#include "smelt/io/gguf_hparams.h"
#include "smelt/io/gguf_names.h"
#include "smelt/io/gguf_tokenizer.h"
#include "smelt/kernels/ggml_type.h"

namespace smelt::io {

// What the converter adds to every value of HF tensor `hf_name` for architecture `arch`: 1 for
// gemma2's norms (names ending in "norm.weight"; HF applies them as 1 + w, llama.cpp as w), 0
// for everything else (docs/gguf.md, "Gemma2"). Added after merging, to the merged values.
float gguf_value_offset(const std::string& arch, const std::string& hf_name);

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
