// `smelt sweep CONFIG --vary PATH=FROM:TO:STEPS [--vary …] --tasks T.jsonl`: a merge config
// evaluated in memory over a grid of one or two of its parameters, as a table, CSV, JSON and an
// SVG plot (a line chart, or a heatmap for two axes; docs/search.md).
#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "cli/search_common.h"
#include "smelt/config/config.h"
#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/report/svg_plot.h"
#include "smelt/search/grid.h"
#include "smelt/search/yaml_path.h"

namespace smelt::cli {
namespace {

struct SweepOptions {
  std::string config;
  std::vector<std::string> vary;
  ObjectiveFlags objective;
  std::string csv;
  std::string plot;
  bool json = false;
  bool overwrite = false;
};

std::string read_config(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    fail("{}: this is a folder; give the merge config file (.yml)", path);
  try {
    return io::read_whole_file(path);
  } catch (const Error& e) {
    fail("CONFIG {}", e.what());
  }
}

void run(const SweepOptions& o) {
  if (o.vary.empty() || o.vary.size() > 2) {
    fail(
        "--vary: give one or two parameters to vary (PATH=FROM:TO:STEPS, e.g. "
        "--vary models[1].parameters.weight=0:1:11)");
  }
  std::vector<search::GridAxis> axes;
  for (const auto& v : o.vary) axes.push_back(search::parse_grid_axis(v));
  if (axes.size() == 2 && axes[0].path == axes[1].path)
    fail("--vary {}: the same path twice; vary two different values", axes[0].path);
  if (!o.csv.empty()) check_report_path(o.csv, "--csv", o.overwrite);
  if (!o.plot.empty()) check_report_path(o.plot, "--plot", o.overwrite);
  const eval::Objective objective = load_objective(o.objective, "sweep");
  const std::string text = read_config(o.config);
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    fail("{}: not valid YAML: {}", o.config, e.what());
  }
  if (docs.size() != 1) {
    fail("{}: sweep varies a single-document config; this one has {} documents", o.config,
         docs.size());
  }
  // Every grid point is written and planned before any model is merged, so a value that makes
  // the config invalid (a density above 1, say) fails now, not an hour in.
  const auto grid = search::grid_points(axes);
  const search::CandidateOptions co = candidate_options(o.objective);
  std::vector<std::string> yamls;
  std::vector<std::string> labels;
  for (const auto& values : grid) {
    YAML::Node doc = search::clone_yaml(docs[0]);
    std::string label;
    for (size_t a = 0; a < axes.size(); ++a) {
      try {
        search::set_yaml_value(doc, axes[a].path, values[a]);
      } catch (const Error& e) {
        fail("--vary {}", e.what());
      }
      label += fmt::format("{}{}={}", a ? " " : "", axes[a].path, report::format_number(values[a]));
    }
    yamls.push_back(search::yaml_text(doc));
    labels.push_back(label);
    const auto parsed = config::parse_config_documents(yamls.back(), o.config);
    try {
      (void)exec::build_recipe(parsed, search::candidate_plan_options(co), {});
    } catch (const Error& e) {
      fail("{} at {}: {}", o.config, label, e.what());
    }
  }
  std::vector<std::string> axis_names;
  for (const auto& a : axes) axis_names.push_back(a.path);
  ScoreProgress progress(o.objective.quiet || o.json);
  InterruptibleScope interruptible;
  std::vector<ScoredPoint> points;
  try {
    for (size_t i = 0; i < grid.size(); ++i) {
      if (!o.objective.quiet && !o.json)
        fmt::print(stderr, "[{}/{}] {}\n", i + 1, grid.size(), printable(labels[i]));
      points.push_back(score_config(yamls[i], labels[i], objective, o.objective, progress));
      points.back().x = grid[i];
    }
  } catch (const Interrupted&) {
    if (!points.empty()) print_points(axis_names, points, objective);
    throw;
  }
  if (o.json) {
    fmt::print("{}\n", points_json(axis_names, points, objective)
                           .dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    print_points(axis_names, points, objective);
  }
  if (!o.csv.empty()) report::write_text_file(o.csv, points_csv(axis_names, points, objective));
  if (!o.plot.empty()) {
    const std::string title = fmt::format("smelt sweep {}", o.config);
    report::write_text_file(o.plot, axes.size() == 1
                                        ? points_line_chart(title, axes[0].path, points, objective)
                                        : points_heatmap(title, axis_names, axes[0].values(),
                                                         axes[1].values(), points, objective));
  }
  if (!o.objective.quiet && !o.json) {
    size_t best = 0;
    for (size_t i = 1; i < points.size(); ++i)
      if (points[i].objective > points[best].objective) best = i;
    fmt::print(stderr, "best: {} ({} {:.4f})\n", printable(points[best].label),
               objective.tasks.empty() ? "perplexity" : "mean score",
               objective.tasks.empty() ? -points[best].objective : points[best].objective);
  }
}

}  // namespace

void add_sweep(CLI::App& app) {
  auto o = std::make_shared<SweepOptions>();
  CLI::App* cmd = app.add_subcommand(
      "sweep",
      "Evaluate a merge config over a grid of one or two of its values, each point merged into\n"
      "memory and scored (nothing written but the table and plot). PATH addresses a value of the\n"
      "YAML: models[1].parameters.weight, parameters.t, slices[0].sources[1].parameters.density.\n"
      "Examples:\n"
      "  smelt sweep merge.yml --vary models[1].parameters.weight=0:1:11 --tasks qa.jsonl\n"
      "  smelt sweep slerp.yml --vary parameters.t=0:1:5 --text wiki.txt --plot t.svg\n"
      "  smelt sweep ties.yml --vary parameters.density=0.2:1:5 \\\n"
      "      --vary models[0].parameters.weight=0.5:1.5:3 --tasks a.jsonl --csv grid.csv");
  cmd->add_option("config", o->config, "the merge config (.yml)")->required();
  cmd->add_option("--vary", o->vary, "PATH=FROM:TO:STEPS (one or two)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  add_objective_flags(cmd, o->objective);
  cmd->add_option("--csv", o->csv, "write the table as CSV");
  cmd->add_option("--plot", o->plot,
                  "write an SVG plot (a line chart; a heatmap of the mean for two --vary)");
  cmd->add_flag("--json", o->json, "machine-readable results on stdout");
  cmd->add_flag("--overwrite", o->overwrite, "replace existing --csv / --plot files");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
