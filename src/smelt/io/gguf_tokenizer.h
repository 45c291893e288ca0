// A model folder's tokenizer as GGUF metadata (tokenizer.ggml.*): SentencePiece tokenizer.model
// or tokenizers' tokenizer.json (their vocabularies read by the tokenizer module, which checks
// them), special tokens and chat templates, as llama.cpp's converter reads them (docs/gguf.md,
// "Tokenizer").
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "smelt/io/gguf.h"
#include "smelt/tokenizer/json_where.h"

namespace smelt::io {

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

// Reads a SentencePiece tokenizer.model into a "llama" vocabulary through the tokenizer module
// (libsentencepiece): piece, score and type of each piece, types kept as SentencePiece numbers them
// (which are llama.cpp's numbers). With `vocab_size` >= 0 the list is cut or padded to that size
// (padding "[PAD{id}]", score -10000, type unused), as the converter does. Throws smelt::Error
// naming the file for a file libsentencepiece refuses or a score that is not finite.
GgufVocab gguf_sentencepiece_vocab(const std::filesystem::path& tokenizer_model,
                                   int64_t vocab_size);

// llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) for the pre_tokenizer of a byte-level BPE
// tokenizer.json: "gpt-2" for a plain ByteLevel with its GPT-2 regex, "llama-bpe" / "qwen2" for a
// Split on the Llama 3 / Qwen2 regex followed by ByteLevel without regex, and "default"
// (llama.cpp's generic splitting; tokenization may differ from HF's) for anything else. The
// converter instead hashes the tokens of a test string and refuses unknown hashes, which a merged
// model's tokenizer usually is not.
std::string gguf_bpe_pre_type(const tok::Json& tokenizer_json);

// Appends to `kvs` the tokenizer KVs of the model in `model_dir` (config.json parsed as `config`)
// with exactly `vocab_size` tokens: tokenizer.ggml.model/pre/tokens/token_type (+ scores for
// "llama", merges for "gpt2", possibly empty), special token ids, add_bos/add_eos/add_space_prefix
// and the chat templates (see gguf_export_kvs). Throws smelt::Error naming the file and key for
// malformed tokenizer files or a folder with no tokenizer.
void gguf_add_tokenizer_kvs(std::vector<GgufKv>& kvs, const std::filesystem::path& model_dir,
                            const nlohmann::json& config, uint32_t vocab_size);

}  // namespace smelt::io
