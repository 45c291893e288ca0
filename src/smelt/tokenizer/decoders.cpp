// Decoder components (decoders.h).
#include "smelt/tokenizer/decoders.h"

#include "smelt/tokenizer/pre_tokenizers.h"
#include "smelt/tokenizer/split.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace {

// Byte-level characters back to bytes; a token with any other character keeps its own bytes; the
// whole result is read as UTF-8 with invalid bytes replaced by U+FFFD.
class ByteLevel : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    std::string token_bytes;
    for (const std::string& t : tokens) {
      token_bytes.clear();
      bool all = true;
      for (size_t i = 0; i < t.size();) {
        size_t len = 0;
        int b = byte_level_byte(decode_utf8(t, i, len));
        if (b < 0) {
          all = false;
          break;
        }
        token_bytes.push_back(static_cast<char>(b));
        i += len;
      }
      bytes.append(all ? token_bytes : t);
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class Metaspace : public Decoder {
 public:
  Metaspace(std::string replacement, bool prepend)
      : replacement_(std::move(replacement)), prepend_(prepend) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (t.find(replacement_) == std::string::npos) continue;
      // The reference library drops every replacement character of the first token.
      std::string with = (i == 0 && prepend_) ? "" : " ";
      std::string out;
      size_t prev = 0, pos = 0;
      while ((pos = t.find(replacement_, prev)) != std::string::npos) {
        out.append(t, prev, pos - prev).append(with);
        prev = pos + replacement_.size();
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool prepend_;
};

// Runs of <0xNN> tokens become the text their bytes spell, or one U+FFFD per byte when invalid.
class ByteFallback : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (is_valid_utf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = parse_byte(t);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int parse_byte(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class Fuse : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from each token.
class Strip : public Decoder {
 public:
  Strip(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<size_t> starts;
    for (std::string& t : tokens) {
      starts.clear();
      for (size_t i = 0; i < t.size();) {
        starts.push_back(i);
        i += utf8_length(static_cast<unsigned char>(t[i]));
      }
      size_t n = starts.size();
      auto char_at = [&](size_t k) {
        size_t len = 0;
        return decode_utf8(t, starts[k], len);
      };
      size_t begin = 0;
      while (begin < start_ && begin < n && char_at(begin) == content_) ++begin;
      size_t end = n;
      for (size_t k = 0; k < stop_ && end > begin && char_at(end - 1) == content_; ++k) --end;
      size_t b = begin < n ? starts[begin] : t.size();
      size_t e = end < n ? starts[end] : t.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class Replace : public Decoder {
 public:
  Replace(const Json& value, const Where& w)
      : pattern_(required(value, "pattern", w), w.at("pattern")),
        content_(required_string(value, "content", w)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    Ranges matches;
    for (std::string& t : tokens) {
      matches.clear();
      pattern_.find(t, matches);
      if (matches.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (auto [b, e] : matches) {
        out.append(t, prev, b - prev).append(content_);
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  SplitPattern pattern_;
  std::string content_;
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

// The WordPiece decoder's cleanup of tokenization artifacts (spaces before punctuation, English
// contractions).
void wordpiece_cleanup(std::string& t) {
  replace_all(t, " .", ".");
  replace_all(t, " ?", "?");
  replace_all(t, " !", "!");
  replace_all(t, " ,", ",");
  replace_all(t, " ' ", "'");
  replace_all(t, " n't", "n't");
  replace_all(t, " 'm", "'m");
  replace_all(t, " do not", " don't");
  replace_all(t, " 's", "'s");
  replace_all(t, " 've", "'ve");
  replace_all(t, " 're", "'re");
}

class WordPiece : public Decoder {
 public:
  WordPiece(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) {
          t.erase(0, prefix_.size());
        } else {
          t.insert(0, " ");
        }
      }
      if (cleanup_) wordpiece_cleanup(t);
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

// BPEDecoder: the end-of-word suffix becomes a space (nothing after the last token).
class BpeSuffix : public Decoder {
 public:
  explicit BpeSuffix(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    }
  }

 private:
  std::string suffix_;
};

// CTC: repeated tokens collapse, the pad token vanishes, the word delimiter becomes a space.
class Ctc : public Decoder {
 public:
  Ctc(std::string pad, std::string delimiter, bool cleanup)
      : pad_(std::move(pad)), delimiter_(std::move(delimiter)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && tokens[i] == tokens[i - 1]) continue;
      std::string t = tokens[i];
      if (!pad_.empty()) replace_all(t, pad_, "");
      if (cleanup_) {
        wordpiece_cleanup(t);
        if (!delimiter_.empty()) replace_all(t, delimiter_, " ");
      }
      if (!t.empty()) out.push_back(std::move(t));
    }
    tokens = std::move(out);
  }

 private:
  std::string pad_, delimiter_;
  bool cleanup_;
};

class Sequence : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

char32_t one_char(const Json& value, std::string_view key, const Where& w) {
  std::string s = required_string(value, key, w);
  size_t len = 0;
  if (s.empty() || !is_valid_utf8(s) || (decode_utf8(s, 0, len), len != s.size())) {
    w.at(key).fail("expected exactly one character, got \"" + s + "\"");
  }
  return decode_utf8(s, 0, len);
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& value, const Where& w) {
  if (value.is_null()) return nullptr;
  expect_object(value, w);
  w.check_depth();
  std::string type = required_string(value, "type", w);
  if (type == "ByteLevel") return std::make_unique<ByteLevel>();
  if (type == "Metaspace") {
    char32_t c = one_char(value, "replacement", w);
    std::string replacement;
    append_utf8(replacement, c);
    bool prepend = true;
    if (auto scheme = optional_string(value, "prepend_scheme", w)) {
      if (*scheme != "always" && *scheme != "first" && *scheme != "never") {
        w.at("prepend_scheme")
            .fail("unknown prepend_scheme \"" + *scheme + "\" (always, first, never)");
      }
      prepend = *scheme != "never";
    }
    if (!optional_bool(value, "add_prefix_space", w, true)) {
      if (prepend)
        w.at("add_prefix_space").fail("add_prefix_space does not match declared prepend_scheme");
    }
    return std::make_unique<Metaspace>(replacement, prepend);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") {
    return std::make_unique<Strip>(one_char(value, "content", w),
                                   static_cast<size_t>(optional_int(value, "start", w, 0)),
                                   static_cast<size_t>(optional_int(value, "stop", w, 0)));
  }
  if (type == "Replace") return std::make_unique<Replace>(value, w);
  if (type == "WordPiece") {
    return std::make_unique<WordPiece>(optional_string(value, "prefix", w).value_or("##"),
                                       optional_bool(value, "cleanup", w, true));
  }
  if (type == "BPEDecoder") {
    return std::make_unique<BpeSuffix>(optional_string(value, "suffix", w).value_or("</w>"));
  }
  if (type == "CTC") {
    return std::make_unique<Ctc>(optional_string(value, "pad_token", w).value_or("<pad>"),
                                 optional_string(value, "word_delimiter_token", w).value_or("|"),
                                 optional_bool(value, "cleanup", w, true));
  }
  if (type == "Sequence") {
    Where dw = w.at("decoders");
    const Json& list = expect_array(required(value, "decoders", w), dw);
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      if (auto d = make_decoder(list[i], dw.at(i))) parts.push_back(std::move(d));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  w.at("type").fail("unknown decoder type \"" + type +
                    "\" (smelt supports ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, "
                    "WordPiece, BPEDecoder, CTC, Sequence)");
}

}  // namespace smelt::tok
