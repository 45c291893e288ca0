// The tokenizer.json engine: every component type of Hugging Face's tokenizer.json format
// (normalizers, pre-tokenizers, models, post-processors, decoders, added tokens), loaded and run
// as the reference library runs them, plus the edits the vocabulary work needs (docs/tokenizer.md).
#pragma once

#include <filesystem>
#include <memory>

#include "smelt/tokenizer/tokenizer.h"

namespace smelt::tok {

// Loads `tokenizer_json`; `config_dir` (may be empty) holds tokenizer_config.json and
// special_tokens_map.json when present. Throws smelt::Error naming the file.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json,
                                               const std::filesystem::path& config_dir);

}  // namespace smelt::tok
