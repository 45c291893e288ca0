// SVG charts written by smelt itself (docs/search.md): line charts for sweeps, interpolation
// curves and search progress, heatmaps for 2-D sweeps and model diffs. Self-contained SVG 1.1
// that any browser opens; every data point carries its values (a <title> tooltip and data-*
// attributes) so tests and users can read the numbers back from the picture.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace smelt::report {

struct Series {
  std::string name;       // legend entry
  std::vector<double> x;  // same length as y; non-finite points are skipped
  std::vector<double> y;
};

struct LineChart {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<Series> series;
  bool step = false;  // draw as a staircase (best-so-far curves)
};

// A rows × columns grid of values; NaN cells are drawn empty (grey).
struct Heatmap {
  std::string title;
  std::string x_label;               // what the columns are
  std::string y_label;               // what the rows are
  std::string value_label;           // what the colour scale means
  std::vector<std::string> columns;  // column labels
  std::vector<std::string> rows;     // row labels, drawn top to bottom
  std::vector<double> values;        // rows.size() × columns.size(), row-major
};

// Each point is a <circle class="point" data-series="I" data-x="X" data-y="Y"> with a <title>.
std::string render_line_chart(const LineChart& chart);
// Each cell is a <rect class="cell" data-row="R" data-col="C" data-value="V"> with a <title>
// (no data-value for an empty cell).
std::string render_heatmap(const Heatmap& map);

// Writes `text` to `path` through a temporary file renamed into place (never a half-written file
// under `path`); throws smelt::Error naming the path.
void write_text_file(const std::filesystem::path& path, const std::string& text);

// A number as the charts and CSV tables print it: shortest text that reads back to the same
// double ("0.25", "1e-05", "nan").
std::string format_number(double v);

}  // namespace smelt::report
