// The model stage of a tokenizer.json pipeline ("model"): one pre-tokenized word -> tokens. The
// kinds are BPE (bpe.cpp), Unigram (unigram.cpp), WordPiece and WordLevel (wordpiece.cpp)
// (docs/tokenizer.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smelt/tokenizer/json_where.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::tok {

// A string-keyed map that can be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids and token strings of one word (valid UTF-8, non-empty).
  virtual void tokenize(std::string_view word, Encoding& out) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  // nullptr when the model has no such id.
  virtual const std::string* id_to_token(int32_t id) const = 0;
  // The largest id + 1.
  virtual size_t vocab_size() const = 0;
  // The number of entries (the reference library numbers new added tokens from it).
  virtual size_t token_count() const = 0;
};

// A model whose vocabulary is a {"token": id} object (BPE, WordPiece, WordLevel): the lookups
// they share.
class DictionaryModel : public Model {
 public:
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  const std::string* id_to_token(int32_t id) const override;
  size_t token_count() const override { return vocab_.size(); }
  size_t vocab_size() const override { return by_id_.size(); }

 protected:
  // Reads value["vocab"] (read_vocab_object).
  DictionaryModel(const Json& value, const Where& w);

  StringMap<int32_t> vocab_;
  std::vector<std::string> by_id_;
};

// Builds the model described at `w` ("model"); a missing or unknown type, bad vocab or merges throw
// naming the file and JSON path.
std::unique_ptr<Model> make_model(const Json& value, const Where& w);

// The model-specific constructors make_model dispatches to.
std::unique_ptr<Model> make_bpe(const Json& value, const Where& w);
std::unique_ptr<Model> make_unigram(const Json& value, const Where& w);
std::unique_ptr<Model> make_wordpiece(const Json& value, const Where& w);
std::unique_ptr<Model> make_wordlevel(const Json& value, const Where& w);

// A {"token": id} vocabulary object: ids must be distinct non-negative integers; `by_id` gets the
// id -> token table (holes empty). Throws on colliding ids or an id far past the vocabulary size.
void read_vocab_object(const Json& value, const Where& w, StringMap<int32_t>& vocab,
                       std::vector<std::string>& by_id);

}  // namespace smelt::tok
