// `smelt interpolate A B [--base C] --steps N --tasks T.jsonl`: the score along the path
// between two models (linear mode connectivity; linear or slerp), or along a task-vector scale
// λ with a base, each point merged into memory (docs/search.md).
#include <fmt/format.h>

#include "cli/common.h"
#include "cli/search_common.h"
#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/report/svg_plot.h"
#include "smelt/search/grid.h"
#include "smelt/search/yaml_path.h"

namespace smelt::cli {
namespace {

struct InterpolateOptions {
  std::vector<std::string> models;
  std::string base;
  std::string method = "linear";
  size_t steps = 11;
  double from = 0;
  double to = 1;
  ObjectiveFlags objective;
  std::string csv;
  std::string plot;
  bool json = false;
  bool overwrite = false;
};

YAML::Node model_entry(const std::string& path, const char* key, double value) {
  YAML::Node m;
  m["model"] = path;
  if (key) m["parameters"][key] = report::format_number(value);
  return m;
}

// The merge config of one point of the path (docs/search.md gives the formulas).
std::string point_config(const InterpolateOptions& o, double t) {
  YAML::Node c;
  if (!o.base.empty()) {
    // θ(λ) = C + λ·Σ τ_i: task arithmetic with every weight λ.
    c["merge_method"] = "task_arithmetic";
    c["base_model"] = o.base;
    for (const auto& m : o.models) c["models"].push_back(model_entry(m, "weight", t));
    c["parameters"]["normalize"] = false;
  } else if (o.method == "slerp") {
    c["merge_method"] = "slerp";
    c["base_model"] = o.models[0];
    c["models"].push_back(model_entry(o.models[0], nullptr, 0));
    c["models"].push_back(model_entry(o.models[1], nullptr, 0));
    c["parameters"]["t"] = report::format_number(t);
  } else {
    // θ(t) = (1 − t)·A + t·B.
    c["merge_method"] = "linear";
    c["models"].push_back(model_entry(o.models[0], "weight", 1.0 - t));
    c["models"].push_back(model_entry(o.models[1], "weight", t));
    c["parameters"]["normalize"] = false;
  }
  return search::yaml_text(c);
}

void run(const InterpolateOptions& o) {
  if (o.method != "linear" && o.method != "slerp")
    fail("--method {}: the path is linear or slerp", o.method);
  if (o.base.empty() && o.models.size() != 2)
    fail("interpolate: give two models A B (or one or two with --base C)");
  if (!o.base.empty() && o.method == "slerp")
    fail("--method slerp with --base: the base path scales task vectors linearly; drop one");
  if (o.steps < 2 || o.steps > 10000) fail("--steps {}: give 2 to 10000 points", o.steps);
  if (!(o.from < o.to) && !(o.from > o.to)) fail("--from and --to must differ");
  if (o.method == "slerp" && (o.from < 0 || o.from > 1 || o.to < 0 || o.to > 1))
    fail("--method slerp: t must stay in [0, 1] (extrapolate with the linear path)");
  if (!o.csv.empty()) check_report_path(o.csv, "--csv", o.overwrite);
  if (!o.plot.empty()) check_report_path(o.plot, "--plot", o.overwrite);
  const eval::Objective objective = load_objective(o.objective, "interpolate");
  const std::string axis = o.base.empty() ? "t" : "lambda";
  const search::GridAxis grid{.path = axis, .from = o.from, .to = o.to, .steps = o.steps};
  const auto values = grid.values();
  // Plan every point first: a wrong model path fails before any merge.
  const search::CandidateOptions co = candidate_options(o.objective);
  std::vector<std::string> yamls;
  for (const double t : values) {
    yamls.push_back(point_config(o, t));
    (void)exec::build_recipe(config::parse_config_documents(yamls.back(), "interpolate"),
                             search::candidate_plan_options(co), {});
  }
  ScoreProgress progress(o.objective.quiet || o.json);
  InterruptibleScope interruptible;
  std::vector<ScoredPoint> points;
  const std::vector<std::string> axes = {axis};
  try {
    for (size_t i = 0; i < values.size(); ++i) {
      const std::string label = fmt::format("{}={}", axis, report::format_number(values[i]));
      if (!o.objective.quiet && !o.json)
        fmt::print(stderr, "[{}/{}] {}\n", i + 1, values.size(), label);
      points.push_back(score_config(yamls[i], label, objective, o.objective, progress));
      points.back().x = {values[i]};
    }
  } catch (const Interrupted&) {
    if (!points.empty()) print_points(axes, points, objective);
    throw;
  }
  if (o.json) {
    fmt::print("{}\n", points_json(axes, points, objective)
                           .dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    print_points(axes, points, objective);
  }
  if (!o.csv.empty()) report::write_text_file(o.csv, points_csv(axes, points, objective));
  if (!o.plot.empty()) {
    const std::string title =
        o.base.empty()
            ? fmt::format("{} path {} → {}", o.method, o.models[0], o.models[1])
            : fmt::format("task vectors of {} over {}", fmt::join(o.models, ", "), o.base);
    report::write_text_file(o.plot, points_line_chart(title, axis, points, objective));
  }
}

}  // namespace

void add_interpolate(CLI::App& app) {
  auto o = std::make_shared<InterpolateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "interpolate",
      "Score models along the path between two models (linear mode connectivity), each point\n"
      "merged into memory: linear θ(t) = (1−t)·A + t·B (t outside [0,1] extrapolates) or\n"
      "slerp. With --base C, the task-vector scale instead: θ(λ) = C + λ·Σ(Mi − C) over the one\n"
      "or two models given (λ > 1 extrapolates).\n"
      "Examples:\n"
      "  smelt interpolate base ft --tasks ft-task.jsonl --steps 11 --plot lmc.svg\n"
      "  smelt interpolate a b --method slerp --text wiki.txt --csv curve.csv\n"
      "  smelt interpolate ft --base base --from 0 --to 2 --steps 9 --tasks t.jsonl");
  cmd->add_option("models", o->models, "A B (or one or two models with --base)")
      ->required()
      ->expected(1, 2);
  cmd->add_option("--base", o->base, "scale the models' task vectors over this base");
  cmd->add_option("--method", o->method, "linear (default) or slerp");
  cmd->add_option("--steps", o->steps, "points on the path, both ends included (default 11)");
  cmd->add_option("--from", o->from, "first t (or λ), default 0");
  cmd->add_option("--to", o->to, "last t (or λ), default 1");
  add_objective_flags(cmd, o->objective);
  cmd->add_option("--csv", o->csv, "write the curve as CSV");
  cmd->add_option("--plot", o->plot, "write the curve as an SVG line chart");
  cmd->add_flag("--json", o->json, "machine-readable results on stdout");
  cmd->add_flag("--overwrite", o->overwrite, "replace existing --csv / --plot files");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
