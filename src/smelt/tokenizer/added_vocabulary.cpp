// Added-token matching (added_vocabulary.h).
#include "smelt/tokenizer/added_vocabulary.h"

#include "smelt/tokenizer/normalizers.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {

AddedToken read_added_token(const Json& value, const Where& w) {
  expect_object(value, w);
  AddedToken t;
  t.id = static_cast<int32_t>(expect_int(required(value, "id", w), w.at("id"), 0, INT32_MAX));
  t.content = required_string(value, "content", w);
  if (t.content.empty()) w.at("content").fail("an added token cannot be empty");
  if (!is_valid_utf8(t.content)) w.at("content").fail("not valid UTF-8");
  t.special = optional_bool(value, "special", w, false);
  t.single_word = optional_bool(value, "single_word", w, false);
  t.lstrip = optional_bool(value, "lstrip", w, false);
  t.rstrip = optional_bool(value, "rstrip", w, false);
  t.normalized = optional_bool(value, "normalized", w, !t.special);
  return t;
}

Json added_token_json(const AddedToken& t) {
  Json j = Json::object();
  j["id"] = t.id;
  j["content"] = t.content;
  j["single_word"] = t.single_word;
  j["lstrip"] = t.lstrip;
  j["rstrip"] = t.rstrip;
  j["normalized"] = t.normalized;
  j["special"] = t.special;
  return j;
}

void AddedVocabulary::Trie::insert(std::string_view s, int32_t v) {
  starts[static_cast<unsigned char>(s[0])] = true;
  uint32_t node = 0;
  for (unsigned char c : s) {
    auto [it, inserted] =
        edges.try_emplace((uint64_t{node} << 8) | c, static_cast<uint32_t>(value.size()));
    if (inserted) value.push_back(-1);
    node = it->second;
  }
  if (value[node] < 0) value[node] = v;  // the first token with a spelling wins
}

std::pair<size_t, int32_t> AddedVocabulary::Trie::longest(std::string_view text, size_t pos) const {
  uint32_t node = 0;
  std::pair<size_t, int32_t> best{0, -1};
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = edges.find((uint64_t{node} << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges.end()) break;
    node = it->second;
    if (value[node] >= 0) best = {i + 1 - pos, value[node]};
  }
  return best;
}

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer)
    : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_id_.emplace(t.id, i);
    by_content_.emplace(t.content, i);
    if (t.normalized) {
      std::string spelled = t.content;
      if (normalizer) normalizer->normalize(spelled);
      if (!spelled.empty()) {
        normalized_.insert(spelled, static_cast<int32_t>(i));
        has_normalized_ = true;
      }
    } else {
      raw_.insert(t.content, static_cast<int32_t>(i));
      has_raw_ = true;
    }
  }
}

namespace {

// The code point that ends just before byte `pos` (pos > 0).
char32_t char_before(std::string_view s, size_t pos, size_t& start) {
  start = pos - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  size_t len = 0;
  return decode_utf8(s, start, len);
}

}  // namespace

void AddedVocabulary::split(std::string_view text, bool normalized,
                            std::vector<Segment>& out) const {
  const Trie& trie = normalized ? normalized_ : raw_;
  if (!(normalized ? has_normalized_ : has_raw_)) {
    if (!text.empty()) out.push_back({0, text.size(), -1});
    return;
  }
  size_t done = 0;  // end of the last emitted segment
  size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.starts[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    auto [len, index] = trie.longest(text, pos);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // matches do not overlap, whether or not this one is kept
    const AddedToken& t = tokens_[index];
    if (t.single_word) {
      size_t unused = 0, l = 0;
      bool word_before = start > 0 && is_word_char(char_before(text, start, unused));
      bool word_after = stop < text.size() && is_word_char(decode_utf8(text, stop, l));
      if (word_before || word_after) continue;
    }
    if (t.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t cs = 0;
        if (!is_whitespace(char_before(text, s, cs))) break;
        s = cs;
      }
      start = std::max(s, done);
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t l = 0;
        if (!is_whitespace(decode_utf8(text, stop, l))) break;
        stop += l;
      }
    }
    if (done < start) out.push_back({done, start, -1});
    out.push_back({start, stop, index});
    done = stop;
    pos = std::max(pos, stop);
  }
  if (done < text.size()) out.push_back({done, text.size(), -1});
}

const AddedToken* AddedVocabulary::find_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::find_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

}  // namespace smelt::tok
