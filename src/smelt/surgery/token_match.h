// Which donor token corresponds to which model token when a model is re-targeted to another
// tokenizer (docs/tokensurgeon.md, "Matching"): tokens normalised (word-start markers `Ġ` and `▁`
// equivalent, special tokens by role), then exact, byte and prefix matches.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "smelt/tokenizer/tokenizer.h"

namespace smelt::surgery {

// Roles of special tokens ("bos", "eos", "unk", "pad", "sep", "cls", "mask") by token content, as
// a model folder's special_tokens_map.json and tokenizer_config.json declare them (the map file
// wins where both name a role). Missing files give no roles; a file that is not valid JSON throws
// smelt::Error naming it.
std::map<std::string, std::vector<std::string>> read_special_roles(
    const std::filesystem::path& folder);

// The content of the token declared for `role` ("bos"), "" when none is.
std::string token_for_role(const std::map<std::string, std::vector<std::string>>& roles,
                           const std::string& role);

// A vocabulary under normalised keys. Per id: its keys in lookup order (one per special role,
// then the normalised text); an id without a token, or at or beyond `rows`, has none.
struct NormalizedVocab {
  std::vector<std::vector<std::string>> keys;    // indexed by id
  std::unordered_map<std::string, int32_t> ids;  // key -> the lowest id having it
  std::string word_start;                        // "Ġ" or "▁" (the marker this vocabulary uses)
  bool byte_level = false;  // token strings spell bytes in the byte-level alphabet
  size_t size() const { return keys.size(); }
};

// Normalises every id of `tokenizer` below min(vocab_size, rows) (`rows`: the embedding rows that
// exist for it; ids beyond get no keys). The word-start marker is whichever of `Ġ`/`▁` starts more
// tokens (`Ġ` on a tie); `Ġ` vocabularies are taken as byte-level.
NormalizedVocab normalize_vocab(const tok::Tokenizer& tokenizer,
                                const std::map<std::string, std::vector<std::string>>& roles,
                                size_t rows);

// Where a donor id's row comes from.
enum class MatchKind : uint8_t {
  kExact,   // the same normalised token in the model
  kByte,    // `<0xNN>` against the one-byte character token (either way round)
  kPrefix,  // the longest prefix of the token that the model has
  kNew,     // none: approximated
  kNone,    // the donor has no token at this id (row left zero)
};

struct Match {
  MatchKind kind = MatchKind::kNone;
  int32_t model_id = -1;  // for kExact, kByte, kPrefix
};

struct MatchOptions {
  bool byte_match = false;
  bool prefix_match = false;
};

// One Match per donor id: exact first, then byte, then prefix, else kNew.
std::vector<Match> match_tokens(const NormalizedVocab& model, const NormalizedVocab& donor,
                                const MatchOptions& options);

// Counts per kind.
struct MatchCounts {
  size_t exact = 0, byte = 0, prefix = 0, approximated = 0, none = 0;
};
MatchCounts count_matches(const std::vector<Match>& matches);

}  // namespace smelt::surgery
