// Tokenizers as Hugging Face's library runs them: text -> token ids exactly as the model was
// trained, and back (docs/tokenizer.md). One interface, two engines: tokenizer.json (every
// component type the reference library defines; tokenizer_json.h) and SentencePiece
// tokenizer.model files (libsentencepiece; sentencepiece_model.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::tok {

// What encode() returns: ids and their token strings (as the vocabulary spells them).
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
};

struct EncodeOptions {
  // Add the post-processor's special tokens (BOS/EOS, templates), as the reference library's
  // encode(text, add_special_tokens=True) does; tokenizer_config.json's add_bos_token /
  // add_eos_token override the template where present.
  bool add_special_tokens = true;
};

struct DecodeOptions {
  bool skip_special_tokens = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads the tokenizer of a model folder: tokenizer.json (with tokenizer_config.json and
  // special_tokens_map.json when present), else tokenizer.model. A path to one tokenizer.json
  // or tokenizer.model file loads that file; a .gguf file loads the vocabulary it holds
  // (load_gguf_tokenizer in gguf_vocab.h). Throws smelt::Error naming the file and the
  // problem (unknown component type, bad regex, colliding ids, ...).
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& path);

  // Encodes `text` (UTF-8; invalid bytes are handled as docs/tokenizer.md says).
  virtual Encoding encode(std::string_view text, const EncodeOptions& options = {}) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids,
                             const DecodeOptions& options = {}) const = 0;

  // The number of ids (the largest id + 1, added tokens included).
  virtual size_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // "tokenizer.json", "sentencepiece" or "gguf".
  virtual std::string_view kind() const = 0;
};

}  // namespace smelt::tok
