// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available) with the find-all the
// tokenizer components use (docs/tokenizer.md).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smelt::tok {

// Byte ranges [begin, end) of matches.
using Ranges = std::vector<std::pair<size_t, size_t>>;

class Regex {
 public:
  // Compiles `pattern`; a pattern PCRE2 rejects throws smelt::Error "<where>: regex <pattern> does
  // not compile: <PCRE2 message> at offset N".
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every non-overlapping match in valid UTF-8 `text`, left to right (an empty match
  // advances by one character, as Rust's find_iter does).
  void find_all(std::string_view text, Ranges& out) const;
  const std::string& pattern() const { return pattern_; }

  // `literal` escaped so that it matches itself.
  static std::string escape(std::string_view literal);

 private:
  struct Impl;
  std::string pattern_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace smelt::tok
