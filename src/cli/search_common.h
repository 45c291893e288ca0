// Shared by the search verbs (soup, sweep, interpolate; docs/search.md): the options that say
// what models are scored on, scoring one candidate config in memory, and the results table,
// CSV, JSON and SVG plot of a series of points.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "cli/eval_common.h"
#include "smelt/eval/evaluate.h"
#include "smelt/search/candidate.h"

namespace smelt::cli {

struct ObjectiveFlags {
  std::string text;
  std::vector<std::string> tasks;
  int ctx = 0;
  size_t limit = 0;
  int max_gen_tokens = 256;
  std::string threads = "0";
  std::string seed = "0";
  std::string max_memory = "512M";
  bool quiet = false;
};

// Registers --text, --tasks, --ctx, --limit, --max-gen-tokens, -j, --random-seed,
// --max-memory and -q on a verb.
void add_objective_flags(CLI::App* cmd, ObjectiveFlags& flags);

// Reads the text and task files (errors name them) before any model is touched; fails when
// neither --text nor --tasks is given, naming the verb.
eval::Objective load_objective(const ObjectiveFlags& flags, const std::string& verb);

search::CandidateOptions candidate_options(const ObjectiveFlags& flags);

// One evaluated point of a sweep, curve or soup step.
struct ScoredPoint {
  std::vector<double> x;  // the varied values (sweep, interpolate); empty for a soup step
  std::string label;      // what the point is ("t=0.25", a model list)
  eval::ModelScores scores;
  double objective = 0;  // eval::objective_value
};

// Merges `yaml` into memory and scores it (progress on stderr unless quiet). Stops the process
// with Interrupted on Ctrl-C after printing nothing half-done.
ScoredPoint score_config(const std::string& yaml, const std::string& label,
                         const eval::Objective& objective, const ObjectiveFlags& flags,
                         ScoreProgress& progress);

// Scores a model folder or .gguf file.
ScoredPoint score_model_path(const std::string& path, const eval::Objective& objective,
                             const ObjectiveFlags& flags, ScoreProgress& progress);

// Column names of the metric part of a row: ppl, bits/byte (with text), each task, mean.
std::vector<std::string> metric_columns(const eval::Objective& objective);
// The metric values of one point, in metric_columns order.
std::vector<double> metric_values(const ScoredPoint& p, const eval::Objective& objective);

// The table on stdout: `axes` columns (the x values), then the metrics.
void print_points(const std::vector<std::string>& axes, const std::vector<ScoredPoint>& points,
                  const eval::Objective& objective);
// The same as CSV text (a header line, then one line per point; numbers read back exactly).
std::string points_csv(const std::vector<std::string>& axes, const std::vector<ScoredPoint>& points,
                       const eval::Objective& objective);
// The same as JSON: {"axes": [...], "points": [{"x": [...], "label", "objective", "scores"}]}.
nlohmann::ordered_json points_json(const std::vector<std::string>& axes,
                                   const std::vector<ScoredPoint>& points,
                                   const eval::Objective& objective);

// A line chart of every metric against the one axis (perplexity and bits/byte share the chart
// only when there are no tasks: tasks are scores in [0,1]).
std::string points_line_chart(const std::string& title, const std::string& axis,
                              const std::vector<ScoredPoint>& points,
                              const eval::Objective& objective);
// A heatmap of the objective over a two-axis grid (rows = first axis values, columns = second).
std::string points_heatmap(const std::string& title, const std::vector<std::string>& axes,
                           const std::vector<double>& first_values,
                           const std::vector<double>& second_values,
                           const std::vector<ScoredPoint>& points,
                           const eval::Objective& objective);

// Refuses an existing file at an output path of a table or plot unless `overwrite` (smelt never
// replaces a file it was not asked to), and a path that is a folder.
void check_report_path(const std::string& path, const std::string& flag, bool overwrite);

}  // namespace smelt::cli
