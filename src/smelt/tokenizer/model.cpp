// Model dispatch and the shared vocabulary reader (model.h).
#include "smelt/tokenizer/model.h"

#include "smelt/error.h"

namespace smelt::tok {

std::unique_ptr<Model> make_model(const Json& value, const Where& w) {
  expect_object(value, w);
  std::string type;
  if (auto t = optional_string(value, "type", w)) {
    type = *t;
  } else if (value.contains("merges")) {  // files written before models were tagged
    type = "BPE";
  } else if (value.contains("vocab") && value["vocab"].is_array()) {
    type = "Unigram";
  } else if (value.contains("max_input_chars_per_word")) {
    type = "WordPiece";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return make_bpe(value, w);
  if (type == "Unigram") return make_unigram(value, w);
  if (type == "WordPiece") return make_wordpiece(value, w);
  if (type == "WordLevel") return make_wordlevel(value, w);
  w.at("type").fail("unknown model type \"" + type +
                    "\" (smelt supports BPE, Unigram, WordPiece, WordLevel)");
}

void read_vocab_object(const Json& value, const Where& w, StringMap<int32_t>& vocab,
                       std::vector<std::string>& by_id) {
  expect_object(value, w);
  vocab.clear();
  vocab.reserve(value.size());
  // An id past this bound cannot be part of a hole-free id range with the added tokens.
  const int64_t limit = static_cast<int64_t>(value.size()) + (1 << 20);
  std::vector<const std::string*> owner;
  for (auto it = value.begin(); it != value.end(); ++it) {
    // The common case without building the entry's Where (a string per entry).
    const Json& v = it.value();
    int64_t id = v.is_number_unsigned() && v.get<uint64_t>() <= INT32_MAX
                     ? static_cast<int64_t>(v.get<uint64_t>())
                     : expect_int(v, w.at(it.key()), 0, INT32_MAX);
    if (id >= limit) {
      w.at(it.key()).fail(
          fmt::format("id {} leaves holes: the vocabulary has {} entries", id, value.size()));
    }
    auto [pos, inserted] = vocab.emplace(it.key(), static_cast<int32_t>(id));
    if (!inserted) w.fail("token \"" + it.key() + "\" appears twice");
    if (static_cast<size_t>(id) >= owner.size()) owner.resize(id + 1, nullptr);
    if (owner[id]) {
      w.fail(fmt::format("vocab ids collide: \"{}\" and \"{}\" both have id {}", *owner[id],
                         it.key(), id));
    }
    owner[id] = &pos->first;
  }
  by_id.assign(owner.size(), std::string());
  for (size_t id = 0; id < owner.size(); ++id) {
    if (owner[id]) by_id[id] = *owner[id];
  }
}

DictionaryModel::DictionaryModel(const Json& value, const Where& w) {
  read_vocab_object(required(value, "vocab", w), w.at("vocab"), vocab_, by_id_);
}

std::optional<int32_t> DictionaryModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* DictionaryModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= by_id_.size()) return nullptr;
  const std::string& s = by_id_[id];
  if (s.empty() && token_to_id("") != id) return nullptr;  // a hole in the ids
  return &s;
}

}  // namespace smelt::tok
