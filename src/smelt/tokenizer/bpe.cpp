// The BPE model: characters (or their <0xNN> byte tokens, or unk) merged by rank with a
// priority queue over a linked list of symbols, results cached per word (docs/tokenizer.md).
#include <algorithm>
#include <mutex>

#include "smelt/error.h"
#include "smelt/tokenizer/model.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace {

class Bpe : public DictionaryModel {
 public:
  Bpe(const Json& value, const Where& w);
  void tokenize(std::string_view word, Encoding& out) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // The ids of one word after every merge.
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;
  int32_t unk_id() const;

  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<std::string> unk_token_;
  std::string prefix_;  // continuing_subword_prefix
  std::string suffix_;  // end_of_word_suffix
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_;  // ids of <0xNN>, -1 where absent

  // Words seen before -> their ids (bounded; words of 256 bytes or more are not cached).
  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWord = 256;
  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

Bpe::Bpe(const Json& value, const Where& w) : DictionaryModel(value, w) {
  if (value.contains("dropout") && !value["dropout"].is_null()) {
    const Json& d = value["dropout"];
    if (!d.is_number()) w.at("dropout").fail("expected a number or null, got " + json_type_name(d));
    if (d.get<double>() != 0.0) {
      w.at("dropout").fail(fmt::format(
          "BPE dropout {} makes encoding random; smelt supports null or 0", d.get<double>()));
    }
  }
  unk_token_ = optional_string(value, "unk_token", w);
  prefix_ = optional_string(value, "continuing_subword_prefix", w).value_or("");
  suffix_ = optional_string(value, "end_of_word_suffix", w).value_or("");
  fuse_unk_ = optional_bool(value, "fuse_unk", w, false);
  byte_fallback_ = optional_bool(value, "byte_fallback", w, false);
  ignore_merges_ = optional_bool(value, "ignore_merges", w, false);
  for (int b = 0; b < 256; ++b) {
    auto id = token_to_id(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = id ? *id : -1;
  }

  Where mw = w.at("merges");
  const Json& merges = value.contains("merges") ? value["merges"] : Json::array();
  if (!merges.is_null()) expect_array(merges, mw);
  merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& m = merges[rank];
    // The merge's Where (a formatted string) is built only for an error message.
    auto at = [&] { return mw.at(rank); };
    std::string_view a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        at().fail("merge \"" + s + "\" is not two tokens separated by one space");
      }
      a = std::string_view(s).substr(0, space);
      b = std::string_view(s).substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      if (!m[0].is_string()) expect_string(m[0], at().at(0));  // throws
      if (!m[1].is_string()) expect_string(m[1], at().at(1));
      a = m[0].get_ref<const std::string&>();
      b = m[1].get_ref<const std::string&>();
    } else {
      at().fail("expected \"a b\" or [\"a\", \"b\"], got " + json_type_name(m));
    }
    auto ia = token_to_id(a);
    auto ib = token_to_id(b);
    if (!ia) at().fail("merge names \"" + std::string(a) + "\", which is not in the vocab");
    if (!ib) at().fail("merge names \"" + std::string(b) + "\", which is not in the vocab");
    // The merged token is a + b less the prefix's length (the library cuts it without checking).
    if (b.size() < prefix_.size()) {
      at().fail("merge token \"" + std::string(b) + "\" is shorter than the prefix");
    }
    joined.assign(a);
    joined.append(b.substr(prefix_.size()));
    auto inew = token_to_id(joined);
    if (!inew) at().fail("merge produces \"" + joined + "\", which is not in the vocab");
    // A repeated pair keeps its last rank, as the reference library's map does.
    merges_[pair_key(*ia, *ib)] = Merge{static_cast<int32_t>(rank), *inew};
  }
}

int32_t Bpe::unk_id() const {
  auto id = token_to_id(*unk_token_);
  if (!id) fail("tokenizer: the BPE unk_token \"{}\" is not in the vocab", *unk_token_);
  return *id;
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool removed;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id) {
    int32_t pos = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, pos - 1, pos + 1, false});
  };
  std::optional<int32_t> pending_unk;
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    size_t len = utf8_length(static_cast<unsigned char>(word[i]));
    bool first = i == 0;
    bool last = i + len >= word.size();
    std::string_view ch = word.substr(i, len);
    i += len;
    std::string_view s = ch;
    if ((!first && !prefix_.empty()) || (last && !suffix_.empty())) {
      piece.clear();
      if (!first) piece.append(prefix_);
      piece.append(ch);
      if (last) piece.append(suffix_);
      s = piece;
    }
    if (auto it = vocab_.find(s); it != vocab_.end()) {
      if (pending_unk) {
        add(*pending_unk);
        pending_unk.reset();
      }
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = std::all_of(s.begin(), s.end(),
                             [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; });
      if (all) {
        // The reference library adds byte tokens without flushing a pending unk first.
        for (char c : s) add(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_token_) {
      int32_t unk = unk_id();
      if (pending_unk && !fuse_unk_) add(*pending_unk);
      pending_unk = unk;
    }
  }
  if (pending_unk) add(*pending_unk);
  if (!symbols.empty()) symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Candidate> queue;
  queue.reserve(symbols.size());
  auto push = [&](int32_t pos, int32_t a, int32_t b) {
    auto it = merges_.find(pair_key(a, b));
    if (it == merges_.end()) return;
    queue.push_back({it->second.rank, pos, it->second.new_id});
    std::push_heap(queue.begin(), queue.end(), std::greater<>());
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) push(i, symbols[i].id, symbols[i + 1].id);
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), std::greater<>());
    Candidate top = queue.back();
    queue.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev, symbols[left.prev].id, left.id);
    if (left.next >= 0) push(top.pos, left.id, symbols[left.next].id);
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) ids.push_back(s.id);
  }
}

void Bpe::tokenize(std::string_view word, Encoding& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.ids.push_back(it->second);
      out.tokens.push_back(it->first);
      return;
    }
  }
  auto emit = [&](const std::vector<int32_t>& ids) {
    for (int32_t id : ids) {
      out.ids.push_back(id);
      out.tokens.push_back(by_id_[id]);
    }
  };
  bool cacheable = word.size() < kCacheMaxWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      emit(it->second);
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  emit(ids);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(ids));
  }
}

}  // namespace

std::unique_ptr<Model> make_bpe(const Json& value, const Where& w) {
  return std::make_unique<Bpe>(value, w);
}

}  // namespace smelt::tok
