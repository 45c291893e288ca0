// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): ByteLevel, Split, Metaspace, Digits,
// Punctuation, Whitespace, WhitespaceSplit, BertPreTokenizer, CharDelimiterSplit, Sequence, as the
// reference library defines them (docs/tokenizer.md).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "smelt/tokenizer/json_where.h"

namespace smelt::tok {

// One piece of the normalized text on its way to the model. `at_start`: the piece begins at
// offset 0 of the input (Metaspace's prepend_scheme "first" looks at it).
struct PreToken {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may rewrite) the pieces in place; empty pieces are dropped.
  virtual void pre_tokenize(std::vector<PreToken>& pieces) const = 0;
};

// Builds the pre-tokenizer described at `w` (null gives nullptr); an unknown "type" throws naming
// the type and its JSON path.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& value, const Where& w);

// GPT-2's byte-to-character table: the UTF-8 spelling of the character that stands for each byte.
const std::array<std::string, 256>& byte_level_chars();
// The byte a byte-level character stands for, or -1 when `cp` is not one of the 256.
int byte_level_byte(char32_t cp);

}  // namespace smelt::tok
