// The Unigram model: the best-scoring segmentation of a word (Viterbi over a trie of the pieces),
// unknown characters fused into one unk, optional <0xNN> byte fallback (docs/tokenizer.md).
#include <cmath>
#include <limits>
#include <mutex>

#include "smelt/error.h"
#include "smelt/tokenizer/model.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace {

// A byte trie of the pieces: transitions in one hash map keyed by (node, byte).
class PieceTrie {
 public:
  void insert(std::string_view piece, int32_t id) {
    uint32_t node = 0;
    for (unsigned char c : piece) {
      auto [it, inserted] = edges_.try_emplace(key(node, c), static_cast<uint32_t>(ids_.size()));
      if (inserted) ids_.push_back(-1);
      node = it->second;
    }
    ids_[node] = id;
  }
  // Calls f(length, id) for every piece that is a prefix of `text`.
  template <typename F>
  void prefixes(std::string_view text, F f) const {
    uint32_t node = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      auto it = edges_.find(key(node, static_cast<unsigned char>(text[i])));
      if (it == edges_.end()) return;
      node = it->second;
      if (ids_[node] >= 0) f(i + 1, ids_[node]);
    }
  }

 private:
  static uint64_t key(uint32_t node, unsigned char c) { return (uint64_t{node} << 8) | c; }
  std::unordered_map<uint64_t, uint32_t> edges_;
  std::vector<int32_t> ids_{-1};  // node -> piece id (-1: none); node 0 is the root
};

class Unigram : public Model {
 public:
  Unigram(const Json& value, const Where& w);
  void tokenize(std::string_view word, Encoding& out) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    auto it = ids_.find(token);
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* id_to_token(int32_t id) const override {
    if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return nullptr;
    return &pieces_[id];
  }
  size_t token_count() const override { return pieces_.size(); }
  size_t vocab_size() const override { return pieces_.size(); }

 private:
  // The Viterbi segmentation of `word` as strings (unknown runs fused).
  void segment(std::string_view word, std::vector<std::string_view>& parts) const;
  void encode_uncached(std::string_view word, Encoding& out) const;

  std::vector<std::string> pieces_;
  std::vector<double> scores_;
  StringMap<int32_t> ids_;
  PieceTrie trie_;
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  double min_score_ = 0.0;

  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWord = 256;
  mutable std::mutex cache_mutex_;
  mutable StringMap<Encoding> cache_;
};

Unigram::Unigram(const Json& value, const Where& w) {
  Where vw = w.at("vocab");
  const Json& vocab = expect_array(required(value, "vocab", w), vw);
  pieces_.reserve(vocab.size());
  scores_.reserve(vocab.size());
  ids_.reserve(vocab.size());
  min_score_ = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < vocab.size(); ++i) {
    const Json& entry = vocab[i];
    Where ew = vw.at(i);
    if (!entry.is_array() || entry.size() != 2) {
      ew.fail("expected [piece, score], got " + json_type_name(entry));
    }
    std::string piece = expect_string(entry[0], ew.at(0));
    if (!entry[1].is_number()) ew.at(1).fail("expected a number, got " + json_type_name(entry[1]));
    double score = entry[1].get<double>();
    if (!std::isfinite(score)) ew.at(1).fail("score is not finite");
    if (!ids_.emplace(piece, static_cast<int32_t>(i)).second) {
      ew.fail(fmt::format("piece \"{}\" appears twice (ids {} and {})", piece, ids_[piece], i));
    }
    trie_.insert(piece, static_cast<int32_t>(i));
    pieces_.push_back(std::move(piece));
    scores_.push_back(score);
    min_score_ = std::min(min_score_, score);
  }
  if (value.contains("unk_id") && !value["unk_id"].is_null()) {
    int64_t unk = expect_int(value["unk_id"], w.at("unk_id"), 0, INT32_MAX);
    if (static_cast<size_t>(unk) >= pieces_.size()) {
      w.at("unk_id").fail(fmt::format("unk_id {} is past the vocab ({} pieces)", unk, pieces_.size()));
    }
    unk_id_ = static_cast<int32_t>(unk);
  }
  byte_fallback_ = optional_bool(value, "byte_fallback", w, false);
}

void Unigram::segment(std::string_view word, std::vector<std::string_view>& parts) const {
  constexpr double kUnkPenalty = 10.0;
  const double unk_score = min_score_ - kUnkPenalty;
  struct Node {
    int32_t id = -1;
    double score = 0.0;
    int64_t starts_at = -1;
  };
  std::vector<Node> best(word.size() + 1);
  for (size_t start = 0; start < word.size();) {
    const double here = best[start].score;
    size_t char_len = utf8_length(static_cast<unsigned char>(word[start]));
    bool single_char = false;
    trie_.prefixes(word.substr(start), [&](size_t len, int32_t id) {
      Node& target = best[start + len];
      double candidate = here + scores_[id];
      if (target.starts_at < 0 || candidate > target.score) {
        target = {id, candidate, static_cast<int64_t>(start)};
      }
      if (len == char_len) single_char = true;
    });
    if (!single_char) {
      if (!unk_id_) fail("tokenizer: the Unigram model has no unk_id and meets an unknown character");
      Node& target = best[start + char_len];
      double candidate = here + unk_score;
      if (target.starts_at < 0 || candidate > target.score) {
        target = {*unk_id_, candidate, static_cast<int64_t>(start)};
      }
    }
    start += char_len;
  }
  // Walk back from the end; consecutive unknowns fuse into one part.
  std::vector<std::string_view> reversed;
  size_t end = word.size();
  size_t fused_begin = end, fused_end = end;
  bool fusing = false;
  while (end > 0) {
    const Node& node = best[end];
    size_t begin = static_cast<size_t>(node.starts_at);
    if (unk_id_ && node.id == *unk_id_) {
      if (!fusing) fused_end = end;
      fusing = true;
      fused_begin = begin;
    } else {
      if (fusing) reversed.push_back(word.substr(fused_begin, fused_end - fused_begin));
      fusing = false;
      reversed.push_back(word.substr(begin, end - begin));
    }
    end = begin;
  }
  if (fusing) reversed.push_back(word.substr(fused_begin, fused_end - fused_begin));
  parts.assign(reversed.rbegin(), reversed.rend());
}

void Unigram::encode_uncached(std::string_view word, Encoding& out) const {
  std::vector<std::string_view> parts;
  segment(word, parts);
  for (std::string_view part : parts) {
    if (auto id = token_to_id(part)) {
      out.ids.push_back(*id);
      out.tokens.emplace_back(part);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char c : part) {
        auto id = token_to_id(fmt::format("<0x{:02X}>", c));
        if (!id) break;
        bytes.push_back(*id);
      }
      if (bytes.size() == part.size()) {
        for (int32_t id : bytes) {
          out.ids.push_back(id);
          out.tokens.push_back(pieces_[id]);
        }
        continue;
      }
    }
    if (!unk_id_) fail("tokenizer: the Unigram model has no unk_id and meets an unknown piece");
    // The reference library spells an unknown token with the text it covers.
    out.ids.push_back(*unk_id_);
    out.tokens.emplace_back(part);
  }
}

void Unigram::tokenize(std::string_view word, Encoding& out) const {
  if (word.empty()) return;
  if (word.size() >= kCacheMaxWord) return encode_uncached(word, out);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.ids.insert(out.ids.end(), it->second.ids.begin(), it->second.ids.end());
      out.tokens.insert(out.tokens.end(), it->second.tokens.begin(), it->second.tokens.end());
      return;
    }
  }
  Encoding one;
  encode_uncached(word, one);
  out.ids.insert(out.ids.end(), one.ids.begin(), one.ids.end());
  out.tokens.insert(out.tokens.end(), one.tokens.begin(), one.tokens.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(one));
}

}  // namespace

std::unique_ptr<Model> make_unigram(const Json& value, const Where& w) {
  return std::make_unique<Unigram>(value, w);
}

}  // namespace smelt::tok
