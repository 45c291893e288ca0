// UTF-8 and Unicode helpers for the tokenizer engines: decoding, the invalid-byte policy, character
// classes as the reference library's Rust code defines them, normalization forms
// (docs/tokenizer.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace smelt::tok {

// Decodes the code point at s[i] of a valid UTF-8 string and returns it; `len` gets its byte count.
char32_t decode_utf8(std::string_view s, size_t i, size_t& len);
// Appends the UTF-8 bytes of `cp`.
void append_utf8(std::string& out, char32_t cp);
// The byte length of the UTF-8 sequence starting with `lead` (1 for continuation bytes).
inline size_t utf8_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// True when `s` is valid UTF-8.
bool is_valid_utf8(std::string_view s);
// Replaces each maximal invalid byte subsequence by U+FFFD, exactly as Rust's
// String::from_utf8_lossy does; valid input comes back unchanged.
std::string utf8_lossy(std::string_view s);

// Rust's char::is_whitespace (the Unicode White_Space property).
bool is_whitespace(char32_t cp);
// The Unicode \w of the reference library's regexes: letters, marks, decimal digits, connector
// punctuation, Nl and the joiners.
bool is_word_char(char32_t cp);
// Rust's char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(char32_t cp);
// ASCII punctuation or a Unicode P* general category, leaving out the P* characters assigned
// after Unicode 8.0 as the reference library's table does.
bool is_punctuation(char32_t cp);
// General categories Cc, Cf, Co, Cs (the reference library's "other" leaves unassigned Cn alone).
bool is_other(char32_t cp);
// General category Mn.
bool is_nonspacing_mark(char32_t cp);
// The CJK ranges of the BERT normalizer.
bool is_cjk(char32_t cp);

// Rust's char::to_lowercase applied to every character (full mapping, no final-sigma rule).
std::string to_lowercase(std::string_view s);

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
// Unicode normalization of valid UTF-8 text.
std::string normalize_form(std::string_view s, NormalForm form);

}  // namespace smelt::tok
