// The WordPiece model (greedy longest match from the left, "##" continuations, unk for a word
// that cannot be covered or is too long) and the WordLevel model (whole-word lookup)
// (docs/tokenizer.md).
#include "smelt/error.h"
#include "smelt/tokenizer/model.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace {

// The unk token the two dictionary models share.
class VocabModel : public DictionaryModel {
 public:
  VocabModel(const Json& value, const Where& w) : DictionaryModel(value, w) {
    unk_token_ = optional_string(value, "unk_token", w).value_or("<unk>");
  }

 protected:
  void push_unk(Encoding& out) const {
    auto id = token_to_id(unk_token_);
    if (!id) fail("tokenizer: the unk_token \"{}\" is not in the vocab", unk_token_);
    out.ids.push_back(*id);
    out.tokens.push_back(unk_token_);
  }

  std::string unk_token_;
};

class WordPiece : public VocabModel {
 public:
  WordPiece(const Json& value, const Where& w) : VocabModel(value, w) {
    prefix_ = optional_string(value, "continuing_subword_prefix", w).value_or("##");
    max_chars_ = static_cast<size_t>(optional_int(value, "max_input_chars_per_word", w, 100));
  }
  void tokenize(std::string_view word, Encoding& out) const override {
    size_t chars = 0;
    for (unsigned char c : word) chars += (c & 0xC0) != 0x80;
    if (chars > max_chars_) return push_unk(out);
    std::vector<int32_t> ids;
    std::string candidate;
    for (size_t start = 0; start < word.size();) {
      size_t end = word.size();
      std::optional<int32_t> found;
      while (start < end) {
        std::string_view sub = word.substr(start, end - start);
        std::optional<int32_t> id;
        if (start > 0) {
          candidate.assign(prefix_).append(sub);
          id = token_to_id(candidate);
        } else {
          id = token_to_id(sub);
        }
        if (id) {
          found = id;
          break;
        }
        do {
          --end;
        } while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) return push_unk(out);
      ids.push_back(*found);
      start = end;
    }
    for (int32_t id : ids) {
      out.ids.push_back(id);
      out.tokens.push_back(by_id_[id]);
    }
  }

 private:
  std::string prefix_;
  size_t max_chars_ = 100;
};

class WordLevel : public VocabModel {
 public:
  using VocabModel::VocabModel;
  void tokenize(std::string_view word, Encoding& out) const override {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.ids.push_back(it->second);
      out.tokens.push_back(it->first);
      return;
    }
    push_unk(out);
  }
};

}  // namespace

std::unique_ptr<Model> make_wordpiece(const Json& value, const Where& w) {
  return std::make_unique<WordPiece>(value, w);
}

std::unique_ptr<Model> make_wordlevel(const Json& value, const Where& w) {
  return std::make_unique<WordLevel>(value, w);
}

}  // namespace smelt::tok
