// Aligned text tables for the verbs' terminal output.
#include <fmt/format.h>

#include <algorithm>

#include "cli/common.h"

namespace smelt::cli {

void print_columns(const std::vector<std::string>& header,
                   const std::vector<std::vector<std::string>>& rows, size_t left_columns) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& r : rows) width[c] = std::max(width[c], c < r.size() ? r[c].size() : 0);
  }
  auto print_row = [&](const std::vector<std::string>& r) {
    std::string line;
    for (size_t c = 0; c < r.size() && c < width.size(); ++c) {
      if (c) line += "  ";
      line += c < left_columns ? fmt::format("{:<{}}", r[c], width[c])
                               : fmt::format("{:>{}}", r[c], width[c]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    fmt::print("{}\n", line);
  };
  print_row(header);
  for (const auto& r : rows) print_row(r);
}

}  // namespace smelt::cli
