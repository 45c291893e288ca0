// SentencePiece tokenizer.model files, run through libsentencepiece (docs/tokenizer.md).
#pragma once

#include <filesystem>
#include <memory>

#include "smelt/tokenizer/tokenizer.h"

namespace smelt::tok {

// Loads a SentencePiece model file; `config_dir` (may be empty) holds tokenizer_config.json
// (add_bos_token / add_eos_token). Throws smelt::Error naming the file when it is not a
// SentencePiece model.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file,
                                              const std::filesystem::path& config_dir);

}  // namespace smelt::tok
