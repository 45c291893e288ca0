// SentencePiece tokenizer.model files, run through libsentencepiece (docs/tokenizer.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "smelt/tokenizer/tokenizer.h"

namespace smelt::tok {

// Loads a SentencePiece model file; `config_dir` (may be empty) holds tokenizer_config.json
// (add_bos_token / add_eos_token). Throws smelt::Error naming the file when it is not a
// SentencePiece model.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file,
                                              const std::filesystem::path& config_dir);

// The pieces of a SentencePiece model in id order, with their scores and types.
struct SentencePieceVocab {
  // SentencePiece's piece types, numbered as its ModelProto numbers them (which are llama.cpp's
  // token types too).
  enum Type : int32_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<Type> types;
};

// Reads the vocabulary of a SentencePiece model file through libsentencepiece, which validates
// the model as it loads it (docs/tokenizer-sentencepiece.md, "Vocabulary"). Throws smelt::Error
// naming the file when it is not a SentencePiece model.
SentencePieceVocab read_sentencepiece_vocab(const std::filesystem::path& model_file);

}  // namespace smelt::tok
