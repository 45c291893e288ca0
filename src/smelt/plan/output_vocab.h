// The output vocabulary of a merge with `tokenizer_source` or a `tokenizer:` block
// (docs/tokenizer-merge.md): the output tokenizer (the stripped base's, a named model's, or the
// union of every input's), and for each input the permutation from output token ids to its own.
// Built from tokenizer files and config.json only, before any tensor is read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "smelt/config/config.h"

namespace smelt::plan {

// One model of the merge, as the vocabulary builder sees it.
struct VocabInput {
  std::string ref;               // how messages name it
  std::filesystem::path folder;  // its model folder; empty when it has none
  int64_t config_vocab = -1;     // config.json's vocabulary size; -1 when unknown
};

struct OutputVocab {
  std::string tokenizer_json;           // the output tokenizer.json
  std::string tokenizer_config_json;    // the output tokenizer_config.json ("" when none)
  std::filesystem::path source_folder;  // where special_tokens_map.json etc. are copied from
  std::vector<std::string> tokens;      // output id -> token
  uint64_t padded_size = 0;             // tokens.size() rounded up to pad_to_multiple_of
  // Per input: output id -> the input's id of the same token, -1 when it lacks the token.
  std::vector<std::vector<int64_t>> permutation;
  // Per input: its original vocabulary (token -> id), for `kind: model_token` sources.
  std::vector<std::unordered_map<std::string, int64_t>> original;
  size_t added = 0;  // tokens the output has beyond the reference tokenizer's
  // False when the output tokenizer is a source tokenizer as it stands (nothing stripped or
  // added): its files are then copied unchanged.
  bool edited = false;
};

// Builds the output vocabulary. `reference` indexes the base model (else the first model);
// `source` says which tokenizer; `extra_tokens` (the keys of tokenizer.tokens) are added when
// missing; `source_folder` is the folder of a `source: <model>` that is not an input. Warnings
// (conflicting added tokens, an input without tokenizer.json) go to `warn`. Throws smelt::Error
// naming the YAML key and the file for a missing or malformed tokenizer.json, or a stripped
// tokenizer that is not BPE.
OutputVocab build_output_vocab(const std::vector<VocabInput>& inputs, size_t reference,
                               const config::TokenizerSource& source,
                               const std::vector<std::string>& extra_tokens,
                               std::optional<int64_t> pad_to_multiple_of,
                               const std::filesystem::path& source_folder,
                               const std::function<void(const std::string&)>& warn);

}  // namespace smelt::plan
