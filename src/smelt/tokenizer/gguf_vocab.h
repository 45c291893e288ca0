// Tokenizers from a GGUF file's own vocabulary (tokenizer.ggml.*), tokenizing text the way
// llama.cpp does for that file: "gpt2" (byte-level BPE with merges) through the tokenizer.json
// engine, "llama" (SentencePiece scores and byte tokens) through libsentencepiece
// (docs/tokenizer.md, "Tokenizers from GGUF files").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "smelt/tokenizer/tokenizer.h"

namespace smelt::io {
class GgufFile;
}

namespace smelt::tok {

// What a GGUF file says about its tokenizer beyond the vocabulary, with llama.cpp's defaults for
// absent keys already applied.
struct GgufTokenizerInfo {
  std::string model;  // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;    // tokenizer.ggml.pre ("default" when absent); "default" for "llama"
  size_t vocab_size = 0;
  std::optional<int32_t> bos_id, eos_id, unk_id, pad_id;
  bool add_bos = false;           // encode(add_special_tokens=true) prepends bos_id
  bool add_eos = false;           // ... and appends eos_id
  bool add_space_prefix = false;  // "llama": a space before every piece of plain text
  // The pre-tokenizer names tokenizer.ggml.pre may hold for "gpt2".
  static std::vector<std::string> known_pre_types();
};

// Reads and checks the tokenizer keys of `file` (see load_gguf_tokenizer). Throws smelt::Error
// naming the file and the key.
GgufTokenizerInfo read_gguf_tokenizer_info(const io::GgufFile& file);

struct GgufTokenizerOptions {
  // llama_tokenize's parse_special: control and unknown tokens written in the text are split out
  // too (chat templates); false (llama.cpp's perplexity) tokenizes them as text.
  bool parse_special = false;
};

// The tokenizer of a GGUF file, built from tokenizer.ggml.* alone. encode() gives the ids
// llama.cpp's llama_tokenize(text, add_special, parse_special) gives: user-defined tokens
// (type 4) are split out of the text, control tokens (type 3) only with parse_special (after
// llama.cpp's retyping of tokens by their text, docs/tokenizer.md); add_special_tokens adds
// BOS/EOS as add_bos_token / add_eos_token say. decode() follows llama.cpp's pieces: byte tokens
// become bytes, "▁" a space, control tokens of "llama" vocabularies nothing; is_special() is true
// for control and unknown tokens. kind() is "gguf". Throws smelt::Error naming the file and the
// GGUF key for a missing or malformed key (array lengths that disagree, token types or special
// ids out of range, duplicate tokens, merges of unknown tokens, an unknown tokenizer.ggml.pre).
// The tokenizer copies what it needs: `file` may be closed afterwards.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const io::GgufFile& file,
                                               const GgufTokenizerOptions& options = {});

}  // namespace smelt::tok
