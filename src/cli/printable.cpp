// Text from files made safe to print on a terminal (inspect shows strangers' metadata).
#include <fmt/format.h>

#include "cli/common.h"

namespace smelt::cli {
namespace {

// Length of the well-formed UTF-8 sequence starting at s[i] and its code point, or 0 when the
// bytes there are not one (overlong forms, surrogates and values above U+10FFFF included).
size_t utf8_sequence(std::string_view s, size_t i, char32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  size_t n;
  char32_t v, min;
  if (c < 0x80) return *cp = c, 1;
  if ((c & 0xE0) == 0xC0)
    n = 2, v = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0)
    n = 3, v = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0)
    n = 4, v = c & 0x07, min = 0x10000;
  else
    return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

// Code points a terminal acts on rather than shows: C0/C1 controls, DEL, and the bidirectional
// overrides and isolates that reorder what is displayed.
bool is_control(char32_t cp) {
  return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || (cp >= 0x202A && cp <= 0x202E) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    const size_t n = utf8_sequence(text, i, &cp);
    if (n == 0) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i]));
      ++i;
      continue;
    }
    if (!is_control(cp)) {
      out.append(text, i, n);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x80) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(cp));
    } else {
      out += fmt::format("\\u{{{:04x}}}", static_cast<unsigned>(cp));
    }
    i += n;
  }
  return out;
}

}  // namespace smelt::cli
