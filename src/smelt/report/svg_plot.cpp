#include "smelt/report/svg_plot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>

#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::report {
namespace {

// Text as SVG character data or an attribute value: the five XML specials escaped, control
// characters (not allowed in XML 1.0) replaced by U+FFFD.
std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') {
          out += "\xEF\xBF\xBD";
        } else {
          out += c;
        }
    }
  }
  return out;
}

// Axis ticks at 1, 2 or 5 × 10^k covering [lo, hi], about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

// The data range padded so a constant series still gets a visible axis.
std::pair<double, double> padded_range(double lo, double hi) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {0.0, 1.0};
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {
    const double d = std::max(std::abs(lo) * 0.05, 0.5);
    return {lo - d, hi + d};
  }
  const double pad = (hi - lo) * 0.05;
  return {lo - pad, hi + pad};
}

std::string tick_label(double v) {
  std::string s = fmt::format("{:.4g}", v);
  return s == "-0" ? "0" : s;
}

constexpr std::array<const char*, 8> kPalette = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                                 "#9467bd", "#8c564b", "#e377c2", "#17becf"};

// A perceptually ordered colour scale (viridis' endpoints and three stops between), t in [0,1].
std::string scale_colour(double t) {
  static constexpr std::array<std::array<double, 3>, 5> kStops = {
      {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
  t = std::clamp(t, 0.0, 1.0) * (kStops.size() - 1);
  const size_t i = std::min<size_t>(static_cast<size_t>(t), kStops.size() - 2);
  const double f = t - static_cast<double>(i);
  auto mix = [&](int c) {
    return static_cast<int>(std::lround(kStops[i][c] + (kStops[i + 1][c] - kStops[i][c]) * f));
  };
  return fmt::format("#{:02x}{:02x}{:02x}", mix(0), mix(1), mix(2));
}

std::string svg_open(int width, int height) {
  return fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      width, height);
}

}  // namespace

std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::array<char, 64> buf{};
  const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return std::string(buf.data(), r.ptr);
}

std::string render_line_chart(const LineChart& chart) {
  constexpr int kW = 760, kH = 460, kLeft = 80, kRight = 180, kTop = 44, kBottom = 60;
  constexpr int kPlotW = kW - kLeft - kRight, kPlotH = kH - kTop - kBottom;
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = -xlo;
  for (const auto& s : chart.series) {
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xlo = std::min(xlo, s.x[i]), xhi = std::max(xhi, s.x[i]);
      ylo = std::min(ylo, s.y[i]), yhi = std::max(yhi, s.y[i]);
    }
  }
  std::tie(xlo, xhi) = padded_range(xlo, xhi);
  std::tie(ylo, yhi) = padded_range(ylo, yhi);
  auto px = [&](double x) { return kLeft + (x - xlo) / (xhi - xlo) * kPlotW; };
  auto py = [&](double y) { return kTop + kPlotH - (y - ylo) / (yhi - ylo) * kPlotH; };

  std::string svg = svg_open(kW, kH);
  svg += fmt::format(
      "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" "
      "font-weight=\"bold\">{}</text>\n",
      kLeft + kPlotW / 2, xml_escape(chart.title));
  // Grid and ticks.
  svg += "<g class=\"axes\" stroke=\"#dddddd\" stroke-width=\"1\">\n";
  const auto xt = nice_ticks(xlo, xhi, 8), yt = nice_ticks(ylo, yhi, 6);
  for (const double t : xt) {
    if (t < xlo || t > xhi) continue;
    svg += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1}\" x2=\"{0:.2f}\" y2=\"{2}\"/>\n", px(t), kTop,
                       kTop + kPlotH);
  }
  for (const double t : yt) {
    if (t < ylo || t > yhi) continue;
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.2f}\" x2=\"{2}\" y2=\"{1:.2f}\"/>\n", kLeft,
                       py(t), kLeft + kPlotW);
  }
  svg += "</g>\n";
  svg += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444444\"/>\n",
      kLeft, kTop, kPlotW, kPlotH);
  svg += "<g class=\"tick-labels\" fill=\"#333333\">\n";
  for (const double t : xt) {
    if (t < xlo || t > xhi) continue;
    svg += fmt::format("<text x=\"{:.2f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", px(t),
                       kTop + kPlotH + 18, xml_escape(tick_label(t)));
  }
  for (const double t : yt) {
    if (t < ylo || t > yhi) continue;
    svg += fmt::format("<text x=\"{}\" y=\"{:.2f}\" text-anchor=\"end\">{}</text>\n", kLeft - 8,
                       py(t) + 4, xml_escape(tick_label(t)));
  }
  svg += "</g>\n";
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                     kLeft + kPlotW / 2, kH - 16, xml_escape(chart.x_label));
  svg += fmt::format(
      "<text x=\"18\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
      "{0})\">{1}</text>\n",
      kTop + kPlotH / 2, xml_escape(chart.y_label));
  // Series: a polyline (or staircase) and a circle per point.
  for (size_t si = 0; si < chart.series.size(); ++si) {
    const auto& s = chart.series[si];
    const char* colour = kPalette[si % kPalette.size()];
    std::string points;
    double prev_y = std::numeric_limits<double>::quiet_NaN();
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      if (chart.step && std::isfinite(prev_y)) {
        points += fmt::format("{:.2f},{:.2f} ", px(s.x[i]), py(prev_y));
      }
      points += fmt::format("{:.2f},{:.2f} ", px(s.x[i]), py(s.y[i]));
      prev_y = s.y[i];
    }
    svg += fmt::format("<g class=\"series\" data-series=\"{}\" data-name=\"{}\">\n", si,
                       xml_escape(s.name));
    if (!points.empty()) {
      points.pop_back();
      svg +=
          fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
                      colour, points);
    }
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      svg += fmt::format(
          "<circle class=\"point\" data-series=\"{}\" data-x=\"{}\" data-y=\"{}\" cx=\"{:.2f}\" "
          "cy=\"{:.2f}\" r=\"3.5\" fill=\"{}\"><title>{}: {} = {}, {} = {}</title></circle>\n",
          si, format_number(s.x[i]), format_number(s.y[i]), px(s.x[i]), py(s.y[i]), colour,
          xml_escape(s.name), xml_escape(chart.x_label), format_number(s.x[i]),
          xml_escape(chart.y_label), format_number(s.y[i]));
    }
    svg += "</g>\n";
    // Legend entry.
    const int ly = kTop + 10 + static_cast<int>(si) * 20;
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"3\"/>"
        "<text x=\"{4}\" y=\"{5}\">{6}</text>\n",
        kLeft + kPlotW + 14, ly, kLeft + kPlotW + 36, colour, kLeft + kPlotW + 42, ly + 4,
        xml_escape(s.name));
  }
  svg += "</svg>\n";
  return svg;
}

std::string render_heatmap(const Heatmap& map) {
  const size_t nr = map.rows.size(), nc = map.columns.size();
  if (map.values.size() != nr * nc) {
    fail("internal: heatmap of {} × {} cells given {} values", nr, nc, map.values.size());
  }
  size_t row_label_chars = 4, col_label_chars = 4;
  for (const auto& r : map.rows) row_label_chars = std::max(row_label_chars, r.size());
  for (const auto& c : map.columns) col_label_chars = std::max(col_label_chars, c.size());
  const int cell = static_cast<int>(std::clamp<size_t>(640 / std::max<size_t>(nc, 1), 14, 64));
  const int cell_h = static_cast<int>(std::clamp<size_t>(480 / std::max<size_t>(nr, 1), 12, 40));
  const int left = 40 + static_cast<int>(std::min<size_t>(row_label_chars, 40)) * 7;
  const int top = 60 + static_cast<int>(std::min<size_t>(col_label_chars, 40)) * 6;
  const int plot_w = cell * static_cast<int>(nc), plot_h = cell_h * static_cast<int>(nr);
  const int width = left + plot_w + 140, height = top + plot_h + 50;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const double v : map.values) {
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  const double span = hi > lo ? hi - lo : 1.0;

  std::string svg = svg_open(width, height);
  svg += fmt::format(
      "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" "
      "font-weight=\"bold\">{}</text>\n",
      left + plot_w / 2, xml_escape(map.title));
  svg += "<g class=\"cells\">\n";
  for (size_t r = 0; r < nr; ++r) {
    for (size_t c = 0; c < nc; ++c) {
      const double v = map.values[r * nc + c];
      const int x = left + static_cast<int>(c) * cell, y = top + static_cast<int>(r) * cell_h;
      if (std::isfinite(v)) {
        svg += fmt::format(
            "<rect class=\"cell\" data-row=\"{}\" data-col=\"{}\" data-value=\"{}\" x=\"{}\" "
            "y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}, {}: {}</title></rect>\n",
            r, c, format_number(v), x, y, cell, cell_h, scale_colour((v - lo) / span),
            xml_escape(map.rows[r]), xml_escape(map.columns[c]), format_number(v));
      } else {
        svg += fmt::format(
            "<rect class=\"cell\" data-row=\"{}\" data-col=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" "
            "height=\"{}\" fill=\"#eeeeee\"><title>{}, {}: none</title></rect>\n",
            r, c, x, y, cell, cell_h, xml_escape(map.rows[r]), xml_escape(map.columns[c]));
      }
    }
  }
  svg += "</g>\n<g class=\"labels\" fill=\"#333333\">\n";
  for (size_t r = 0; r < nr; ++r) {
    svg +=
        fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 6,
                    top + static_cast<int>(r) * cell_h + cell_h / 2 + 4, xml_escape(map.rows[r]));
  }
  for (size_t c = 0; c < nc; ++c) {
    const int x = left + static_cast<int>(c) * cell + cell / 2 + 4, y = top - 6;
    svg += fmt::format("<text x=\"{0}\" y=\"{1}\" transform=\"rotate(-60 {0} {1})\">{2}</text>\n",
                       x, y, xml_escape(map.columns[c]));
  }
  svg += "</g>\n";
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                     left + plot_w / 2, top + plot_h + 30, xml_escape(map.x_label));
  svg += fmt::format(
      "<text x=\"14\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 14 "
      "{0})\">{1}</text>\n",
      top + plot_h / 2, xml_escape(map.y_label));
  // Colour bar: 20 steps from lo (bottom) to hi (top).
  const int bx = left + plot_w + 30, bh = std::max(plot_h, 100), bstep = bh / 20;
  svg += "<g class=\"colour-bar\">\n";
  for (int i = 0; i < 20; ++i) {
    svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"18\" height=\"{}\" fill=\"{}\"/>\n", bx,
                       top + bh - (i + 1) * bstep, bstep + 1, scale_colour((i + 0.5) / 20.0));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", bx + 24, top + bh - 20 * bstep + 10,
                     xml_escape(tick_label(hi)));
  svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", bx + 24, top + bh,
                     xml_escape(tick_label(lo)));
  svg += fmt::format(
      "<text x=\"{0}\" y=\"{1}\" text-anchor=\"middle\" transform=\"rotate(-90 {0} {1})\">{2}"
      "</text>\n",
      bx + 80, top + bh / 2, xml_escape(map.value_label));
  svg += "</g>\n</svg>\n";
  return svg;
}

void write_text_file(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path temp = io::temp_name_for(path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot write: {}", path.string(), io::errno_text());
  try {
    io::pwrite_all(fd, text.data(), text.size(), 0, path);
    if (::fsync(fd) != 0) fail("{}: cannot write: {}", path.string(), io::errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string why = io::errno_text();
    ::unlink(temp.c_str());
    fail("{}: cannot write: {}", path.string(), why);
  }
}

}  // namespace smelt::report
