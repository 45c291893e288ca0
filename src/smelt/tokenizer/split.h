// Splitting a string at pattern matches with the reference library's five delimiter behaviors
// (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous) and invert (docs/tokenizer.md).
#pragma once

#include <string>
#include <string_view>

#include "smelt/tokenizer/json_where.h"
#include "smelt/tokenizer/regex.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Reads a behavior name ("Removed", ...); anything else throws naming `w`.
SplitBehavior parse_split_behavior(const Json& value, const Where& w);

// Given the sorted, non-overlapping `matches` of a text of `size` bytes, appends the byte ranges of
// the non-empty pieces the behavior keeps (matches become non-matches and back when `invert`).
void split_ranges(size_t size, const Ranges& matches, SplitBehavior behavior, bool invert,
                  Ranges& out);

// Appends every occurrence of `literal` (non-overlapping, left to right); empty finds nothing.
void find_literal(std::string_view text, std::string_view literal, Ranges& out);

// Appends one match per character for which `pred(code point)` holds.
template <typename Pred>
void find_chars(std::string_view text, Pred pred, Ranges& out) {
  for (size_t i = 0; i < text.size();) {
    size_t len = 0;
    char32_t cp = decode_utf8(text, i, len);
    if (pred(cp)) out.emplace_back(i, i + len);
    i += len;
  }
}

// A split pattern as tokenizer.json spells it: {"String": "..."} or {"Regex": "..."}.
class SplitPattern {
 public:
  // Compiles the pattern at `w` (a bad regex throws with PCRE2's message).
  SplitPattern(const Json& value, const Where& w);
  void find(std::string_view text, Ranges& out) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

}  // namespace smelt::tok
