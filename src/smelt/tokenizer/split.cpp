// Delimiter behaviors and split patterns (split.h).
#include "smelt/tokenizer/split.h"

namespace smelt::tok {

SplitBehavior parse_split_behavior(const Json& value, const Where& w) {
  std::string name = expect_string(value, w);
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  w.fail("unknown split behavior \"" + name +
         "\" (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)");
}

void split_ranges(size_t size, const Ranges& matches, SplitBehavior behavior, bool invert,
                  Ranges& out) {
  struct Part {
    size_t begin, end;
    bool match;
  };
  // The whole text as alternating non-match / match parts.
  std::vector<Part> parts;
  parts.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != size) parts.push_back({prev, size, invert});

  auto emit = [&](size_t b, size_t e) {
    if (e > b) out.emplace_back(b, e);
  };
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Part& p : parts) {
        if (!p.match) emit(p.begin, p.end);
      }
      return;
    case SplitBehavior::kIsolated:
      for (const Part& p : parts) emit(p.begin, p.end);
      return;
    case SplitBehavior::kMergedWithPrevious: {
      Ranges acc;
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.match && !previous_match && !acc.empty()) {
          acc.back().second = p.end;
        } else {
          acc.emplace_back(p.begin, p.end);
        }
        previous_match = p.match;
      }
      for (auto [b, e] : acc) emit(b, e);
      return;
    }
    case SplitBehavior::kMergedWithNext: {
      Ranges acc;  // built right to left
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !previous_match && !acc.empty()) {
          acc.back().first = it->begin;
        } else {
          acc.emplace_back(it->begin, it->end);
        }
        previous_match = it->match;
      }
      for (auto it = acc.rbegin(); it != acc.rend(); ++it) emit(it->first, it->second);
      return;
    }
    case SplitBehavior::kContiguous: {
      Ranges acc;
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.match == previous_match && !acc.empty()) {
          acc.back().second = p.end;
        } else {
          acc.emplace_back(p.begin, p.end);
        }
        previous_match = p.match;
      }
      for (auto [b, e] : acc) emit(b, e);
      return;
    }
  }
}

void find_literal(std::string_view text, std::string_view literal, Ranges& out) {
  if (literal.empty()) return;
  size_t pos = 0;
  while ((pos = text.find(literal, pos)) != std::string_view::npos) {
    out.emplace_back(pos, pos + literal.size());
    pos += literal.size();
  }
}

SplitPattern::SplitPattern(const Json& value, const Where& w) {
  expect_object(value, w);
  if (value.contains("String")) {
    literal_ = expect_string(value["String"], w.at("String"));
  } else if (value.contains("Regex")) {
    std::string pattern = expect_string(value["Regex"], w.at("Regex"));
    regex_ = std::make_unique<Regex>(pattern, w.file + ": " + w.at("Regex").path);
  } else {
    w.fail("expected {\"String\": ...} or {\"Regex\": ...}");
  }
}

void SplitPattern::find(std::string_view text, Ranges& out) const {
  if (regex_) {
    regex_->find_all(text, out);
  } else {
    find_literal(text, literal_, out);
  }
}

}  // namespace smelt::tok
