// Edit-distance based "did you mean X?" suggestions.
#include "smelt/config/suggest.h"

#include <algorithm>
#include <cctype>
#include <limits>

namespace smelt::config {
namespace {

constexpr double kCheapEdit = 0.1;

// Case and separator folding: 'A' -> 'a', '-' -> '_'.
char fold(char c) {
  if (c == '-') return '_';
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

std::string fold_all(std::string_view s) {
  std::string out(s.size(), '\0');
  std::transform(s.begin(), s.end(), out.begin(), fold);
  return out;
}

double substitution_cost(char a, char b) {
  if (a == b) return 0.0;
  if (fold(a) == fold(b)) return kCheapEdit;
  return 1.0;
}

}  // namespace

double edit_distance(std::string_view a, std::string_view b) {
  const size_t n = a.size();
  const size_t m = b.size();
  // d[i][j] = distance between a[0, i) and b[0, j); three rows are enough for transpositions.
  std::vector<double> prev2(m + 1), prev(m + 1), cur(m + 1);
  for (size_t j = 0; j <= m; ++j) prev[j] = static_cast<double>(j);
  for (size_t i = 1; i <= n; ++i) {
    cur[0] = static_cast<double>(i);
    for (size_t j = 1; j <= m; ++j) {
      double best = std::min(prev[j] + 1.0, cur[j - 1] + 1.0);
      best = std::min(best, prev[j - 1] + substitution_cost(a[i - 1], b[j - 1]));
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && a[i - 1] != a[i - 2]) {
        best = std::min(best, prev2[j - 2] + 1.0);
      }
      cur[j] = best;
    }
    std::swap(prev2, prev);
    std::swap(prev, cur);
  }
  return prev[m];
}

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  if (word.empty()) return "";
  // Short words get only cheap (case/separator) edits: "x" is not a typo of "t".
  const double limit = word.size() < 4 ? 0.5 : std::max(1.0, word.size() / 3.0);
  const std::string folded = fold_all(word);

  std::string best;
  double best_distance = std::numeric_limits<double>::infinity();
  for (const std::string& candidate : candidates) {
    const double d = edit_distance(word, candidate);
    if (d <= limit && d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  if (!best.empty() || word.size() < 4) return best;

  // No near miss: accept a candidate that extends the word or is extended by it ("base" ->
  // "base_model"), preferring the one with the smallest length difference.
  size_t best_gap = std::numeric_limits<size_t>::max();
  for (const std::string& candidate : candidates) {
    const std::string c = fold_all(candidate);
    if (c.size() < 4) continue;
    const bool prefix = c.starts_with(folded) || folded.starts_with(c);
    const size_t gap =
        c.size() > folded.size() ? c.size() - folded.size() : folded.size() - c.size();
    if (prefix && gap < best_gap) {
      best = candidate;
      best_gap = gap;
    }
  }
  return best;
}

}  // namespace smelt::config
