// Pre-tokenizer components (pre_tokenizers.h).
#include "smelt/tokenizer/pre_tokenizers.h"

#include <functional>

#include "smelt/tokenizer/regex.h"
#include "smelt/tokenizer/split.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {

const std::array<std::string, 256>& byte_level_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      append_utf8(t[b], cp);
    }
    return t;
  }();
  return table;
}

int byte_level_byte(char32_t cp) {
  static const std::array<int16_t, 324> reverse = [] {
    std::array<int16_t, 324> r;
    r.fill(-1);
    const auto& chars = byte_level_chars();
    for (int b = 0; b < 256; ++b) {
      size_t len = 0;
      r[decode_utf8(chars[b], 0, len)] = static_cast<int16_t>(b);
    }
    return r;
  }();
  return cp < reverse.size() ? reverse[cp] : -1;
}

namespace {

// Replaces each piece by the sub-pieces `find_pieces(text, ranges)` reports.
template <typename F>
void split_each(std::vector<PreToken>& pieces, F find_pieces) {
  std::vector<PreToken> out;
  out.reserve(pieces.size() * 2);
  Ranges ranges;
  for (PreToken& p : pieces) {
    ranges.clear();
    find_pieces(std::string_view(p.text), ranges);
    if (ranges.size() == 1 && ranges[0].first == 0 && ranges[0].second == p.text.size()) {
      out.push_back(std::move(p));
      continue;
    }
    for (auto [b, e] : ranges) {
      if (e > b) out.push_back({p.text.substr(b, e - b), p.at_start && b == 0});
    }
  }
  pieces = std::move(out);
}

// Splits on characters for which `pred` holds, with `behavior`.
template <typename Pred>
void split_chars(std::vector<PreToken>& pieces, Pred pred, SplitBehavior behavior) {
  Ranges matches;
  split_each(pieces, [&](std::string_view text, Ranges& out) {
    matches.clear();
    find_chars(text, pred, matches);
    split_ranges(text.size(), matches, behavior, false, out);
  });
}

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex, const Where& w)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_ = std::make_unique<Regex>(kGpt2Pattern, w.file + ": " + w.path);
  }
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    if (add_prefix_space_) {
      for (PreToken& p : pieces) {
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
      }
    }
    if (regex_) {
      Ranges matches;
      split_each(pieces, [&](std::string_view text, Ranges& out) {
        matches.clear();
        regex_->find_all(text, matches);
        split_ranges(text.size(), matches, SplitBehavior::kIsolated, false, out);
      });
    }
    const auto& chars = byte_level_chars();
    std::string mapped;
    for (PreToken& p : pieces) {
      mapped.clear();
      for (unsigned char c : p.text) mapped.append(chars[c]);
      p.text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class Split : public PreTokenizer {
 public:
  Split(const Json& value, const Where& w)
      : pattern_(required(value, "pattern", w), w.at("pattern")),
        behavior_(parse_split_behavior(required(value, "behavior", w), w.at("behavior"))),
        invert_(optional_bool(value, "invert", w, false)) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    Ranges matches;
    split_each(pieces, [&](std::string_view text, Ranges& out) {
      matches.clear();
      pattern_.find(text, matches);
      split_ranges(text.size(), matches, behavior_, invert_, out);
    });
  }

 private:
  SplitPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class Metaspace : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  Metaspace(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    for (PreToken& p : pieces) {
      if (p.text.find(' ') != std::string::npos) {
        std::string out;
        out.reserve(p.text.size() + 8);
        for (char c : p.text) {
          if (c == ' ') {
            out.append(replacement_);
          } else {
            out.push_back(c);
          }
        }
        p.text.swap(out);
      }
      bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_start))) {
        p.text.insert(0, replacement_);
      }
    }
    if (split_) {
      Ranges matches;
      split_each(pieces, [&](std::string_view text, Ranges& out) {
        matches.clear();
        find_literal(text, replacement_, matches);
        split_ranges(text.size(), matches, SplitBehavior::kMergedWithNext, false, out);
      });
    }
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class CharSplit : public PreTokenizer {
 public:
  CharSplit(std::function<bool(char32_t)> pred, SplitBehavior behavior)
      : pred_(std::move(pred)), behavior_(behavior) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    split_chars(pieces, pred_, behavior_);
  }

 private:
  std::function<bool(char32_t)> pred_;
  SplitBehavior behavior_;
};

// \w+|[^\w\s]+ kept, everything else removed.
class Whitespace : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    split_each(pieces, [](std::string_view text, Ranges& out) {
      int kind = 0;  // 0 none, 1 word run, 2 other run
      size_t start = 0;
      for (size_t i = 0; i < text.size();) {
        size_t len = 0;
        char32_t cp = decode_utf8(text, i, len);
        int k = is_word_char(cp) ? 1 : is_whitespace(cp) ? 0 : 2;
        if (k != kind) {
          if (kind != 0) out.emplace_back(start, i);
          start = i;
          kind = k;
        }
        i += len;
      }
      if (kind != 0) out.emplace_back(start, text.size());
    });
  }
};

class BertPreTokenizer : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    split_chars(pieces, is_whitespace, SplitBehavior::kRemoved);
    split_chars(pieces, is_punctuation, SplitBehavior::kIsolated);
  }
};

// Pieces of `length` characters (the last may be shorter).
class FixedLength : public PreTokenizer {
 public:
  explicit FixedLength(size_t length) : length_(length) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    split_each(pieces, [&](std::string_view text, Ranges& out) {
      size_t start = 0, count = 0;
      for (size_t i = 0; i < text.size(); i += utf8_length(static_cast<unsigned char>(text[i]))) {
        if (count == length_) {
          out.emplace_back(start, i);
          start = i;
          count = 0;
        }
        ++count;
      }
      if (start < text.size()) out.emplace_back(start, text.size());
    });
  }

 private:
  size_t length_;
};

class Sequence : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

// A one-character string field (Metaspace's replacement, CharDelimiterSplit's delimiter).
std::string single_char(const Json& value, std::string_view key, const Where& w) {
  std::string s = required_string(value, key, w);
  size_t len = 0;
  if (s.empty() || !is_valid_utf8(s) || (decode_utf8(s, 0, len), len != s.size())) {
    w.at(key).fail("expected exactly one character, got \"" + s + "\"");
  }
  return s;
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& value, const Where& w) {
  if (value.is_null()) return nullptr;
  expect_object(value, w);
  w.check_depth();
  std::string type = required_string(value, "type", w);
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevel>(optional_bool(value, "add_prefix_space", w, true),
                                       optional_bool(value, "use_regex", w, true), w);
  }
  if (type == "Split") return std::make_unique<Split>(value, w);
  if (type == "Metaspace") {
    std::string replacement = single_char(value, "replacement", w);
    Metaspace::Prepend prepend = Metaspace::Prepend::kAlways;
    if (auto scheme = optional_string(value, "prepend_scheme", w)) {
      if (*scheme == "always") {
        prepend = Metaspace::Prepend::kAlways;
      } else if (*scheme == "first") {
        prepend = Metaspace::Prepend::kFirst;
      } else if (*scheme == "never") {
        prepend = Metaspace::Prepend::kNever;
      } else {
        w.at("prepend_scheme").fail("unknown prepend_scheme \"" + *scheme +
                                    "\" (always, first, never)");
      }
    }
    // The older add_prefix_space: false must agree with prepend_scheme (absent means "always"),
    // as the reference library requires.
    if (!optional_bool(value, "add_prefix_space", w, true)) {
      if (prepend != Metaspace::Prepend::kNever) {
        w.at("add_prefix_space").fail("add_prefix_space does not match declared prepend_scheme");
      }
    }
    return std::make_unique<Metaspace>(replacement, prepend, optional_bool(value, "split", w, true));
  }
  if (type == "Digits") {
    bool individual = optional_bool(value, "individual_digits", w, false);
    return std::make_unique<CharSplit>(
        is_numeric, individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Punctuation") {
    SplitBehavior behavior = SplitBehavior::kIsolated;
    if (value.contains("behavior")) behavior = parse_split_behavior(value["behavior"], w.at("behavior"));
    return std::make_unique<CharSplit>(is_punctuation, behavior);
  }
  if (type == "WhitespaceSplit") {
    return std::make_unique<CharSplit>(is_whitespace, SplitBehavior::kRemoved);
  }
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "CharDelimiterSplit") {
    std::string d = single_char(value, "delimiter", w);
    size_t len = 0;
    char32_t cp = decode_utf8(d, 0, len);
    return std::make_unique<CharSplit>([cp](char32_t c) { return c == cp; },
                                       SplitBehavior::kRemoved);
  }
  if (type == "FixedLength") {
    size_t length = static_cast<size_t>(optional_int(value, "length", w, 5));
    if (length == 0) w.at("length").fail("must be at least 1");
    return std::make_unique<FixedLength>(length);
  }
  if (type == "Sequence") {
    Where pw = w.at("pretokenizers");
    const Json& list = expect_array(required(value, "pretokenizers", w), pw);
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      if (auto p = make_pre_tokenizer(list[i], pw.at(i))) parts.push_back(std::move(p));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  w.at("type").fail("unknown pre-tokenizer type \"" + type +
                    "\" (smelt supports ByteLevel, Split, Metaspace, Digits, Punctuation, "
                    "Whitespace, WhitespaceSplit, BertPreTokenizer, CharDelimiterSplit, FixedLength, Sequence)");
}

}  // namespace smelt::tok
