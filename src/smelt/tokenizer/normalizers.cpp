// Normalizer components (normalizers.h).
#include "smelt/tokenizer/normalizers.h"

#include <utf8proc.h>

#include <optional>
#include <vector>

#include "smelt/error.h"
#include "smelt/tokenizer/pre_tokenizers.h"
#include "smelt/tokenizer/split.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace {

class UnicodeForm : public Normalizer {
 public:
  explicit UnicodeForm(NormalForm form) : form_(form) {}
  void normalize(std::string& text) const override { text = normalize_form(text, form_); }

 private:
  NormalForm form_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = to_lowercase(text); }
};

// Strips Unicode whitespace from the left and/or right.
class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t len = 0;
        if (!is_whitespace(decode_utf8(text, begin, len))) break;
        begin += len;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t len = 0;
        if (!is_whitespace(decode_utf8(text, start, len))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

// Removes non-spacing marks (meant to follow NFD).
class StripAccents : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      char32_t cp = decode_utf8(text, i, len);
      if (!is_nonspacing_mark(cp)) out.append(text, i, len);
      i += len;
    }
    text = std::move(out);
  }
};

// Replaces every match of a String or Regex pattern by `content`.
class Replace : public Normalizer {
 public:
  Replace(const Json& value, const Where& w)
      : pattern_(required(value, "pattern", w), w.at("pattern")),
        content_(required_string(value, "content", w)) {}
  void normalize(std::string& text) const override {
    Ranges matches;
    pattern_.find(text, matches);
    if (matches.empty()) return;
    std::string out;
    size_t prev = 0;
    for (auto [b, e] : matches) {
      out.append(text, prev, b - prev);
      out.append(content_);
      prev = e;
    }
    out.append(text, prev, std::string::npos);
    text = std::move(out);
  }

 private:
  SplitPattern pattern_;
  std::string content_;
};

// Prepends a string to non-empty text.
class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

// BERT's cleanup: control characters dropped, whitespace to ' ', CJK characters padded with
// spaces, accents stripped (NFD then Mn removed), lowercase.
class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool chinese, bool strip_accents, bool lowercase)
      : clean_text_(clean_text), chinese_(chinese), strip_(strip_accents), lower_(lowercase) {}
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      char32_t cp = decode_utf8(text, i, len);
      if (clean_text_) {
        if (cp == 0 || cp == 0xFFFD) {
          i += len;
          continue;
        }
        bool tab_or_newline = cp == '\t' || cp == '\n' || cp == '\r';
        if (!tab_or_newline && is_other(cp)) {
          i += len;
          continue;
        }
        if (tab_or_newline || is_whitespace(cp)) {
          out.push_back(' ');
          i += len;
          continue;
        }
      }
      if (chinese_ && is_cjk(cp)) {
        out.push_back(' ');
        out.append(text, i, len);
        out.push_back(' ');
      } else {
        out.append(text, i, len);
      }
      i += len;
    }
    if (strip_) {
      out = normalize_form(out, NormalForm::kNfd);
      StripAccents().normalize(out);
    }
    if (lower_) out = to_lowercase(out);
    text = std::move(out);
  }

 private:
  bool clean_text_, chinese_, strip_, lower_;
};

// Nmt: drops some control characters and maps some others to a space.
class Nmt : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      char32_t cp = decode_utf8(text, i, len);
      bool drop = (cp >= 0x01 && cp <= 0x08) || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) ||
                  cp == 0x7F || cp == 0x8F || cp == 0x9F;
      bool space = cp == 0x09 || cp == 0x0A || cp == 0x0C || cp == 0x0D || cp == 0x1680 ||
                   (cp >= 0x200B && cp <= 0x200F) || cp == 0x2028 || cp == 0x2029 || cp == 0x2581 ||
                   cp == 0xFEFF || cp == 0xFFFD;
      if (space) {
        out.push_back(' ');
      } else if (!drop) {
        out.append(text, i, len);
      }
      i += len;
    }
    text = std::move(out);
  }
};

// ByteLevel as a normalizer: every byte spelled as its GPT-2 byte-level character.
class ByteLevelNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    const auto& chars = byte_level_chars();
    std::string out;
    out.reserve(text.size() * 2);
    for (unsigned char c : text) out.append(chars[c]);
    text = std::move(out);
  }
};

// Standard base64 (with or without padding) to bytes; nullopt on a character outside the alphabet.
std::optional<std::string> base64_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else if (c == '=') {
      break;
    } else {
      return std::nullopt;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// Precompiled: SentencePiece's normalization rules (precompiled_charsmap: a little-endian u32
// trie size in bytes, a darts double-array trie of u32 units, then NUL-terminated replacement
// strings). Applied per grapheme cluster as the reference library does: a cluster shorter than 6
// bytes is looked up whole, and the first (shortest) rule matching a prefix of it replaces the
// whole cluster; otherwise each character is looked up alone.
class Precompiled : public Normalizer {
 public:
  Precompiled(const Json& value, const Where& w) {
    Where cw = w.at("precompiled_charsmap");
    std::string b64 = required_string(value, "precompiled_charsmap", w);
    auto bytes = base64_decode(b64);
    if (!bytes) cw.fail("not valid base64");
    if (bytes->size() < 4) cw.fail("shorter than its 4-byte header");
    auto u32 = [&](size_t at) {
      const auto* p = reinterpret_cast<const unsigned char*>(bytes->data() + at);
      return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
             (uint32_t{p[3]} << 24);
    };
    uint64_t trie_bytes = u32(0);
    if (trie_bytes > bytes->size() - 4) {
      cw.fail(fmt::format("trie size {} exceeds the {} bytes that follow", trie_bytes,
                          bytes->size() - 4));
    }
    units_.resize(trie_bytes / 4);
    for (size_t i = 0; i < units_.size(); ++i) units_[i] = u32(4 + 4 * i);
    normalized_ = bytes->substr(4 + trie_bytes);
    if (!is_valid_utf8(normalized_)) cw.fail("its replacement strings are not valid UTF-8");
    if (units_.empty()) cw.fail("empty trie");
  }

  void normalize(std::string& text) const override {
    if (text.empty()) return;
    std::string out;
    out.reserve(text.size());
    utf8proc_int32_t state = 0;
    size_t cluster = 0;
    size_t len = 0;
    char32_t prev = decode_utf8(text, 0, len);
    size_t i = len;
    while (true) {
      bool end = i >= text.size();
      char32_t cp = 0;
      size_t clen = 0;
      if (!end) cp = decode_utf8(text, i, clen);
      if (end || utf8proc_grapheme_break_stateful(static_cast<utf8proc_int32_t>(prev),
                                                  static_cast<utf8proc_int32_t>(cp), &state)) {
        apply(std::string_view(text).substr(cluster, i - cluster), out);
        cluster = i;
      }
      if (end) break;
      prev = cp;
      i += clen;
    }
    text = std::move(out);
  }

 private:
  void apply(std::string_view grapheme, std::string& out) const {
    if (grapheme.size() < 6) {
      if (auto norm = transform(grapheme)) {
        out.append(*norm);
        return;
      }
    }
    for (size_t i = 0; i < grapheme.size();) {
      size_t len = utf8_length(static_cast<unsigned char>(grapheme[i]));
      std::string_view ch = grapheme.substr(i, len);
      if (auto norm = transform(ch)) {
        out.append(*norm);
      } else {
        out.append(ch);
      }
      i += len;
    }
  }

  uint32_t unit(size_t pos) const {
    if (pos >= units_.size()) {
      fail("tokenizer: Precompiled normalizer: the charsmap trie points past its end ({} >= {})",
           pos, units_.size());
    }
    return units_[pos];
  }
  static size_t offset(uint32_t u) { return (size_t{u} >> 10) << ((u & (1u << 9)) >> 6); }

  // The replacement of the shortest rule matching a prefix of `chunk`.
  std::optional<std::string_view> transform(std::string_view chunk) const {
    size_t node = offset(unit(0));
    for (unsigned char c : chunk) {
      if (c == 0) break;
      node ^= c;
      uint32_t u = unit(node);
      if ((u & ((1u << 31) | 0xFFu)) != c) return std::nullopt;
      node ^= offset(u);
      if ((u >> 8) & 1) {
        size_t index = unit(node) & ((1u << 31) - 1);
        if (index > normalized_.size()) {
          fail(
              "tokenizer: Precompiled normalizer: replacement offset {} is past the {} bytes of "
              "replacements",
              index, normalized_.size());
        }
        size_t stop = normalized_.find('\0', index);
        if (stop == std::string::npos) stop = normalized_.size();
        std::string_view result = std::string_view(normalized_).substr(index, stop - index);
        if (!is_valid_utf8(result)) {
          fail(
              "tokenizer: Precompiled normalizer: replacement at offset {} starts inside a "
              "character",
              index);
        }
        return result;
      }
    }
    return std::nullopt;
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
};

class Sequence : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& p : parts_) p->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& value, const Where& w) {
  if (value.is_null()) return nullptr;
  expect_object(value, w);
  w.check_depth();
  std::string type = required_string(value, "type", w);
  if (type == "NFC") return std::make_unique<UnicodeForm>(NormalForm::kNfc);
  if (type == "NFD") return std::make_unique<UnicodeForm>(NormalForm::kNfd);
  if (type == "NFKC") return std::make_unique<UnicodeForm>(NormalForm::kNfkc);
  if (type == "NFKD") return std::make_unique<UnicodeForm>(NormalForm::kNfkd);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Strip") {
    return std::make_unique<Strip>(optional_bool(value, "strip_left", w, true),
                                   optional_bool(value, "strip_right", w, true));
  }
  if (type == "Replace") return std::make_unique<Replace>(value, w);
  if (type == "Prepend") return std::make_unique<Prepend>(required_string(value, "prepend", w));
  if (type == "BertNormalizer") {
    bool lowercase = optional_bool(value, "lowercase", w, true);
    return std::make_unique<BertNormalizer>(optional_bool(value, "clean_text", w, true),
                                            optional_bool(value, "handle_chinese_chars", w, true),
                                            optional_bool(value, "strip_accents", w, lowercase),
                                            lowercase);
  }
  if (type == "Nmt") return std::make_unique<Nmt>();
  if (type == "Precompiled") return std::make_unique<Precompiled>(value, w);
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "Sequence") {
    Where pw = w.at("normalizers");
    const Json& list = expect_array(required(value, "normalizers", w), pw);
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      if (auto n = make_normalizer(list[i], pw.at(i))) parts.push_back(std::move(n));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  w.at("type").fail("unknown normalizer type \"" + type +
                    "\" (smelt supports NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, "
                    "Replace, Prepend, BertNormalizer, Nmt, Precompiled, ByteLevel, Sequence)");
}

}  // namespace smelt::tok
