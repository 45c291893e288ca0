// `smelt diff A B [--base C]`: how far two models are apart, per tensor and per layer × module,
// and with a base how their task vectors agree; a table, JSON and an SVG heatmap (docs/diff.md).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/analysis/model_diff.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/report/svg_plot.h"

namespace smelt::cli {
namespace {

struct DiffCliOptions {
  std::string a, b, base;
  double density = 0.2;
  std::string threads = "0";
  bool json = false;
  bool layers = false;
  std::string heatmap;
  std::string metric = "rel_change";
  uint64_t chunk_elements = 0;
  bool quiet = false;
};

// NaN and infinities as JSON null.
nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

nlohmann::json metrics_json(const analysis::DiffStats& s, bool with_base) {
  nlohmann::json j = nlohmann::json::object();
  j["numel"] = s.numel;
  for (const std::string& m : analysis::metric_names(with_base))
    j[m] = number(analysis::metric(s, m));
  return j;
}

std::string cell(double v) { return std::isfinite(v) ? fmt::format("{:.4g}", v) : "-"; }

// The columns of the tables: metric name and header.
std::vector<std::pair<std::string, std::string>> table_columns(bool with_base) {
  std::vector<std::pair<std::string, std::string>> c = {{"norm_diff", "|A-B|"},
                                                        {"rel_change", "|A-B|/|B|"}};
  if (with_base) {
    c.insert(c.end(), {{"norm_tau_a", "|A-C|"},
                       {"norm_tau_b", "|B-C|"},
                       {"cosine", "cos"},
                       {"sign_conflicts", "conflicts"},
                       {"ties_agree_a", "ties_A"},
                       {"ties_agree_b", "ties_B"},
                       {"ties_nonzero", "ties_kept"}});
  }
  return c;
}

void print_row(const std::string& label, size_t width, const analysis::DiffStats& s,
               const std::vector<std::pair<std::string, std::string>>& columns) {
  std::string line = fmt::format("{:<{}}", printable(label), width);
  for (const auto& [m, header] : columns) {
    line +=
        fmt::format("  {:>{}}", cell(analysis::metric(s, m)), std::max<size_t>(10, header.size()));
  }
  fmt::print("{}\n", line);
}

void print_header(const std::string& first, size_t width,
                  const std::vector<std::pair<std::string, std::string>>& columns) {
  std::string line = fmt::format("{:<{}}", first, width);
  for (const auto& [m, header] : columns) {
    line += fmt::format("  {:>{}}", header, std::max<size_t>(10, header.size()));
  }
  fmt::print("{}\n", line);
}

void print_tables(const analysis::ModelDiff& d, bool layers) {
  const auto columns = table_columns(d.has_base);
  size_t width = 5;
  for (const auto& t : d.tensors) width = std::max(width, printable(t.name).size());
  print_header("tensor", width, columns);
  for (const auto& t : d.tensors) print_row(t.name, width, t.stats, columns);
  print_row("total", width, d.total, columns);
  if (layers && !d.layers.empty()) {
    fmt::print("\n");
    size_t lw = 12;
    for (const auto& l : d.layers)
      lw = std::max(lw, fmt::format("{} {}", l.layer, l.module).size());
    print_header("layer module", lw, columns);
    for (const auto& l : d.layers) {
      print_row(fmt::format("{} {}", l.layer, l.module), lw, l.stats, columns);
    }
  }
}

nlohmann::json diff_json(const analysis::ModelDiff& d, const DiffCliOptions& o) {
  nlohmann::json j;
  j["a"] = o.a;
  j["b"] = o.b;
  j["base"] = d.has_base ? nlohmann::json(o.base) : nlohmann::json();
  if (d.has_base) j["density"] = d.density;
  j["total"] = metrics_json(d.total, d.has_base);
  j["tensors"] = nlohmann::json::array();
  for (const auto& t : d.tensors) {
    nlohmann::json e = metrics_json(t.stats, d.has_base);
    e["name"] = t.name;
    e["shape"] = t.shape;
    e["layer"] = t.layer >= 0 ? nlohmann::json(t.layer) : nlohmann::json();
    e["module"] = t.layer >= 0 ? nlohmann::json(t.module) : nlohmann::json();
    j["tensors"].push_back(std::move(e));
  }
  j["modules"] = d.modules;
  j["layers"] = nlohmann::json::array();
  for (const auto& l : d.layers) {
    nlohmann::json e = metrics_json(l.stats, d.has_base);
    e["layer"] = l.layer;
    e["module"] = l.module;
    j["layers"].push_back(std::move(e));
  }
  j["only_in_a"] = d.only_in_a;
  j["only_in_b"] = d.only_in_b;
  j["missing_in_base"] = d.missing_in_base;
  j["not_float"] = d.not_float;
  return j;
}

// The layer × module heatmap of `metric`: one row per layer index up to the largest, one column
// per module type; a cell with no tensor is NaN (drawn empty).
report::Heatmap heatmap(const analysis::ModelDiff& d, const DiffCliOptions& o) {
  report::Heatmap map;
  map.title = fmt::format("smelt diff: {} vs {}{}", o.a, o.b,
                          d.has_base ? fmt::format(" (base {})", o.base) : std::string());
  map.x_label = "module";
  map.y_label = "layer";
  map.value_label = o.metric;
  map.columns = d.modules;
  int64_t rows = 0;
  for (const auto& l : d.layers) rows = std::max(rows, l.layer + 1);
  for (int64_t r = 0; r < rows; ++r) map.rows.push_back(std::to_string(r));
  map.values.assign(static_cast<size_t>(rows) * map.columns.size(),
                    std::numeric_limits<double>::quiet_NaN());
  for (const auto& l : d.layers) {
    const size_t c = static_cast<size_t>(
        std::find(map.columns.begin(), map.columns.end(), l.module) - map.columns.begin());
    map.values[static_cast<size_t>(l.layer) * map.columns.size() + c] =
        analysis::metric(l.stats, o.metric);
  }
  return map;
}

// "3 tensor(s) only in A: x, y, z, ..." (at most 5 names).
void warn_list(const std::vector<std::string>& names, const std::string& what) {
  if (names.empty()) return;
  std::vector<std::string> shown;
  for (size_t i = 0; i < names.size() && i < 5; ++i) shown.push_back(printable(names[i]));
  fmt::print(stderr, "warning: {} tensor(s) {} (not compared): {}{}\n", names.size(), what,
             fmt::join(shown, ", "), names.size() > 5 ? ", ..." : "");
}

void run(const DiffCliOptions& o) {
  const std::vector<std::string> known = analysis::metric_names(!o.base.empty());
  if (std::find(known.begin(), known.end(), o.metric) == known.end()) {
    const auto all = analysis::metric_names(true);
    if (std::find(all.begin(), all.end(), o.metric) != all.end()) {
      fail("--metric {} needs a base model (--base C)", o.metric);
    }
    fail("--metric {}: unknown; use one of {}", o.metric, fmt::join(known, ", "));
  }
  if (!o.heatmap.empty() && std::filesystem::is_directory(o.heatmap)) {
    fail("--heatmap {}: is a folder; give the .svg file to write", o.heatmap);
  }
  const auto a = io::Model::open(o.a);
  const auto b = io::Model::open(o.b);
  std::shared_ptr<io::Model> base;
  if (!o.base.empty()) base = io::Model::open(o.base);
  analysis::DiffOptions opts;
  opts.density = o.density;
  opts.threads = parse_threads(o.threads);
  if (opts.threads == 0) opts.threads = std::max(1u, std::thread::hardware_concurrency());
  if (o.chunk_elements) opts.chunk_elements = o.chunk_elements;
  const analysis::ModelDiff d = analysis::diff_models(*a, *b, base.get(), opts);
  if (!o.quiet) {
    warn_list(d.only_in_a, "only in A");
    warn_list(d.only_in_b, "only in B");
    warn_list(d.missing_in_base, "missing from the base");
    warn_list(d.not_float, "not of a float type");
  }
  if (o.json) {
    fmt::print("{}\n", diff_json(d, o).dump(2));
  } else {
    print_tables(d, o.layers);
  }
  if (!o.heatmap.empty()) {
    if (d.layers.empty()) {
      fail(
          "--heatmap: the models have no numbered layers (names like model.layers.N.*), so "
          "there is no layer × module grid to draw");
    }
    report::write_text_file(o.heatmap, report::render_heatmap(heatmap(d, o)));
    if (!o.quiet) fmt::print(stderr, "wrote {}\n", o.heatmap);
  }
}

}  // namespace

void add_diff(CLI::App& app) {
  auto o = std::make_shared<DiffCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "diff",
      "Compare two models per tensor and per layer: relative change |A-B|/|B|, and with --base "
      "the task vectors' norms, cosine, sign conflicts and what TIES keeps (docs/diff.md).\n"
      "Examples:\n"
      "  smelt diff ./finetune ./base --layers\n"
      "  smelt diff ./ft-a ./ft-b --base ./base --json > diff.json\n"
      "  smelt diff ./ft-a ./ft-b --base ./base --heatmap diff.svg --metric cosine");
  cmd->add_option("a", o->a, "model A (folder, .safetensors or .gguf)")->required();
  cmd->add_option("b", o->b, "model B, the reference of the relative change")->required();
  cmd->add_option("--base", o->base, "base model C: compare the task vectors A-C and B-C");
  cmd->add_option("--density", o->density,
                  "TIES density: fraction of each task vector's entries kept (with --base)")
      ->capture_default_str();
  cmd->add_option("-j,--threads", o->threads, "threads (0 = one per core)")->capture_default_str();
  cmd->add_flag("--json", o->json, "print JSON instead of the table");
  cmd->add_flag("--layers", o->layers, "also print the layer x module table");
  cmd->add_option("--heatmap", o->heatmap, "write a layers x modules heatmap to this .svg file");
  cmd->add_option("--metric", o->metric,
                  "heatmap value: rel_change, norm_diff, norm_a, norm_b; with --base also "
                  "cosine, sign_conflicts, norm_tau_a, norm_tau_b, ties_agree_a, ties_agree_b, "
                  "ties_nonzero")
      ->capture_default_str();
  cmd->add_option("--chunk-elements", o->chunk_elements, "elements per read (tuning)")->group("");
  cmd->add_flag("-q,--quiet", o->quiet, "no warnings");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
