#include "smelt/search/grid.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <string>

#include "smelt/error.h"

namespace smelt::search {
namespace {

bool parse_double(std::string_view s, double* v) {
  if (s.empty()) return false;
  if (s.front() == '+') s.remove_prefix(1);
  const auto r = std::from_chars(s.data(), s.data() + s.size(), *v);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(*v);
}

}  // namespace

std::vector<double> GridAxis::values() const {
  std::vector<double> v(steps);
  for (size_t i = 0; i < steps; ++i) {
    const double x = i + 1 == steps ? to
                                    : from + (to - from) * static_cast<double>(i) /
                                                 static_cast<double>(steps - 1);
    // Rounded to 12 significant digits, so 1.2/6 is the 0.2 a user means, not
    // 0.19999999999999998 (in the config, the table and the plot alike).
    v[i] = std::stod(fmt::format("{:.12g}", x));
  }
  return v;
}

GridAxis parse_grid_axis(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    fail("--vary '{}': {} (write PATH=FROM:TO:STEPS, e.g. parameters.t=0:1:11)", text, why);
  };
  const size_t eq = text.rfind('=');
  if (eq == std::string_view::npos) bad("no '='");
  GridAxis a;
  a.path = std::string(text.substr(0, eq));
  if (a.path.empty()) bad("the path before '=' is empty");
  const std::string_view range = text.substr(eq + 1);
  const size_t c1 = range.find(':');
  const size_t c2 = c1 == std::string_view::npos ? c1 : range.find(':', c1 + 1);
  if (c2 == std::string_view::npos || range.find(':', c2 + 1) != std::string_view::npos)
    bad("the range needs three parts FROM:TO:STEPS");
  if (!parse_double(range.substr(0, c1), &a.from)) bad("FROM is not a number");
  if (!parse_double(range.substr(c1 + 1, c2 - c1 - 1), &a.to)) bad("TO is not a number");
  const std::string_view steps = range.substr(c2 + 1);
  unsigned long long n = 0;
  const auto r = std::from_chars(steps.data(), steps.data() + steps.size(), n);
  if (r.ec != std::errc() || r.ptr != steps.data() + steps.size())
    bad("STEPS is not a whole number");
  if (n < 2 || n > 10000)
    bad("STEPS (the number of points, both ends included) must be 2 to 10000");
  a.steps = static_cast<size_t>(n);
  return a;
}

std::vector<std::vector<double>> grid_points(const std::vector<GridAxis>& axes) {
  std::vector<std::vector<double>> points = {{}};
  for (const auto& axis : axes) {
    std::vector<std::vector<double>> next;
    for (const auto& p : points) {
      for (const double v : axis.values()) {
        auto q = p;
        q.push_back(v);
        next.push_back(std::move(q));
      }
    }
    points = std::move(next);
  }
  return points;
}

}  // namespace smelt::search
