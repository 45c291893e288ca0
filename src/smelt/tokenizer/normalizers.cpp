// Normalizer components (normalizers.h).
#include "smelt/tokenizer/normalizers.h"

#include <vector>

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
                   (cp >= 0x200B && cp <= 0x200F) || cp == 0x2028 || cp == 0x2029 ||
                   cp == 0x2581 || cp == 0xFEFF || cp == 0xFFFD;
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
    return std::make_unique<BertNormalizer>(
        optional_bool(value, "clean_text", w, true),
        optional_bool(value, "handle_chinese_chars", w, true),
        optional_bool(value, "strip_accents", w, lowercase), lowercase);
  }
  if (type == "Nmt") return std::make_unique<Nmt>();
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
                    "Replace, Prepend, BertNormalizer, Nmt, ByteLevel, Sequence)");
}

}  // namespace smelt::tok
