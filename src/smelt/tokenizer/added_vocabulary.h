// Added tokens (tokenizer.json "added_tokens"): found in the text before the model runs, either in
// the raw text (normalized=false) or in the normalized text (normalized=true), with the
// single_word / lstrip / rstrip rules of the reference library (docs/tokenizer.md).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smelt/tokenizer/json_where.h"

namespace smelt::tok {

class Normalizer;

// One added token and its flags, as tokenizer.json spells them.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// Reads one "added_tokens" entry; `normalized` defaults to !special as in the reference library.
AddedToken read_added_token(const Json& value, const Where& w);
// The JSON object of one added token, with the reference library's field order.
Json added_token_json(const AddedToken& token);

// A part of the input after added-token matching: text for the model, or one added token.
struct Segment {
  size_t begin = 0;
  size_t end = 0;
  int32_t token = -1;  // index into tokens(), or -1 for plain text
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) spells the normalized=true tokens as they appear after
  // normalization.
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Splits `text` at the tokens of one kind (normalized or not), left to right, longest first.
  void split(std::string_view text, bool normalized, std::vector<Segment>& out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find_id(int32_t id) const;
  const AddedToken* find_content(std::string_view content) const;
  bool empty() const { return tokens_.empty(); }

 private:
  // A byte trie per kind; node values are indices into tokens_.
  struct Trie {
    std::unordered_map<uint64_t, uint32_t> edges;
    std::vector<int32_t> value{-1};
    std::array<bool, 256> starts{};  // bytes some token begins with: the scan skips the others
    void insert(std::string_view s, int32_t v);
    // The longest token at text[pos...], as (length, index); length 0 when none.
    std::pair<size_t, int32_t> longest(std::string_view text, size_t pos) const;
  };

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie raw_;
  Trie normalized_;
  bool has_raw_ = false;
  bool has_normalized_ = false;
};

}  // namespace smelt::tok
