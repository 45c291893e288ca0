// The grid of a sweep or interpolation (docs/search.md): `PATH=FROM:TO:STEPS` axes and their
// points.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace smelt::search {

struct GridAxis {
  std::string path;  // the YAML path varied
  double from = 0;
  double to = 1;
  size_t steps = 2;  // points, both ends included (≥ 2)
  // from + (to − from)·i/(steps − 1) for i < steps, rounded to 12 significant digits; the last
  // is `to` exactly.
  std::vector<double> values() const;
};

// Parses "PATH=FROM:TO:STEPS". Throws smelt::Error quoting the text and saying what is wrong.
GridAxis parse_grid_axis(std::string_view text);

// Every combination of the axes' values, the last axis varying fastest.
std::vector<std::vector<double>> grid_points(const std::vector<GridAxis>& axes);

}  // namespace smelt::search
