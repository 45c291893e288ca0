// "Did you mean X?" suggestions for misspelt keys and names in configs and on the command line.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace smelt::config {

// Edit distance between a and b (optimal-string-alignment Damerau-Levenshtein: insertions,
// deletions, substitutions and adjacent transpositions cost 1). A substitution that only changes
// case or swaps '-' and '_' costs 0.1, so "dare-ties" is very close to "dare_ties".
double edit_distance(std::string_view a, std::string_view b);

// The candidate most plausibly meant by `word`, or "" when none is close enough to suggest.
// Close enough: within about one edit per three characters (at least one edit for words of four
// or more characters), or, for words of four or more characters, a case/separator-insensitive
// prefix of the candidate or the other way round. Ties go to the earlier candidate.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace smelt::config
