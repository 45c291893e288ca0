#include "cli/search_common.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/report/svg_plot.h"

namespace smelt::cli {
namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

void finish_point(ScoredPoint& p, const eval::Objective& objective) {
  p.objective = eval::objective_value(p.scores, objective);
  if (!p.scores.complete || interrupt_signal() != 0) {
    fmt::print(stderr, "interrupted: stopped while scoring {}\n", printable(p.label));
    throw Interrupted(interrupt_signal() ? interrupt_signal() : 2);
  }
}

}  // namespace

void add_objective_flags(CLI::App* cmd, ObjectiveFlags& f) {
  cmd->add_option("--text", f.text, "score by the perplexity of this text file");
  cmd->add_option("--tasks", f.tasks, "score by this JSONL task file (repeatable; the mean)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--ctx,-c", f.ctx, "context length (as smelt eval)");
  cmd->add_option("--limit", f.limit, "score only the first N lines of each task file");
  cmd->add_option("--max-gen-tokens", f.max_gen_tokens,
                  "generation budget per line without max_tokens (default 256)");
  cmd->add_option("-j,--threads", f.threads, "threads (0 = one per core)");
  cmd->add_option("--random-seed", f.seed, "seed of random merge methods");
  cmd->add_option("--max-memory", f.max_memory,
                  "working memory of each in-memory merge, beside the merged model itself");
  cmd->add_flag("-q,--quiet", f.quiet, "no progress output");
}

eval::Objective load_objective(const ObjectiveFlags& f, const std::string& verb) {
  if (f.text.empty() && f.tasks.empty()) {
    fail("{}: say what to score: --tasks FILE.jsonl (repeatable) and/or --text FILE", verb);
  }
  if (f.ctx < 0 || f.ctx == 1 || f.ctx > 1'000'000)
    fail("--ctx {}: give a context of 4 tokens or more", f.ctx);
  if (f.max_gen_tokens < 1) fail("--max-gen-tokens must be at least 1");
  eval::Objective o;
  if (!f.text.empty()) o.text = eval::read_text_file(f.text);
  for (const auto& path : f.tasks) o.tasks.push_back(eval::load_task_file(path));
  o.ctx = f.ctx;
  o.limit = f.limit;
  o.max_gen_tokens = f.max_gen_tokens;
  return o;
}

search::CandidateOptions candidate_options(const ObjectiveFlags& f) {
  return {.threads = parse_threads(f.threads),
          .seed = parse_seed(f.seed),
          .max_memory = parse_memory_size(f.max_memory),
          .print_warnings = false};
}

ScoredPoint score_config(const std::string& yaml, const std::string& label,
                         const eval::Objective& objective, const ObjectiveFlags& flags,
                         ScoreProgress& progress) {
  ScoredPoint p;
  p.label = label;
  eval::EvalModel m = search::merge_candidate_yaml(yaml, label, candidate_options(flags));
  p.scores = eval::evaluate(m, objective, progress.observer());
  finish_point(p, objective);
  return p;
}

ScoredPoint score_model_path(const std::string& path, const eval::Objective& objective,
                             const ObjectiveFlags& flags, ScoreProgress& progress) {
  ScoredPoint p;
  p.label = path;
  eval::EvalModel m = eval::open_eval_model(path, {.threads = parse_threads(flags.threads)});
  p.scores = eval::evaluate(m, objective, progress.observer());
  finish_point(p, objective);
  return p;
}

std::vector<std::string> metric_columns(const eval::Objective& o) {
  std::vector<std::string> c;
  if (!o.text.empty()) c.insert(c.end(), {"ppl", "bits_per_byte"});
  for (const auto& t : o.tasks) c.push_back(t.name);
  if (!o.tasks.empty()) c.push_back("mean");
  return c;
}

std::vector<double> metric_values(const ScoredPoint& p, const eval::Objective& o) {
  std::vector<double> v;
  const auto nan = std::nan("");
  if (!o.text.empty()) {
    const bool has = p.scores.ppl && p.scores.ppl->tokens;
    v.push_back(has ? p.scores.ppl->ppl() : nan);
    v.push_back(has && p.scores.ppl->bytes ? p.scores.ppl->bits_per_byte() : nan);
  }
  for (size_t i = 0; i < o.tasks.size(); ++i)
    v.push_back(i < p.scores.tasks.size() ? p.scores.tasks[i].score() : nan);
  if (!o.tasks.empty()) v.push_back(eval::mean_task_score(p.scores, o));
  return v;
}

void print_points(const std::vector<std::string>& axes, const std::vector<ScoredPoint>& points,
                  const eval::Objective& o) {
  std::vector<std::string> header = axes;
  if (axes.empty()) header.push_back("model");
  for (const auto& c : metric_columns(o)) header.push_back(printable(c));
  std::vector<std::vector<std::string>> rows;
  for (const auto& p : points) {
    std::vector<std::string> row;
    if (axes.empty()) row.push_back(printable(p.label));
    for (const double x : p.x) row.push_back(report::format_number(x));
    for (const double v : metric_values(p, o))
      row.push_back(std::isnan(v) ? "-" : fmt::format("{:.4f}", v));
    rows.push_back(row);
  }
  print_columns(header, rows, axes.empty() ? 1 : 0);
}

std::string points_csv(const std::vector<std::string>& axes, const std::vector<ScoredPoint>& points,
                       const eval::Objective& o) {
  std::vector<std::string> header = axes;
  if (axes.empty()) header.push_back("model");
  for (const auto& c : metric_columns(o)) header.push_back(c);
  std::string out;
  for (size_t i = 0; i < header.size(); ++i) out += (i ? "," : "") + csv_field(header[i]);
  out += "\n";
  for (const auto& p : points) {
    std::string line;
    if (axes.empty()) line = csv_field(p.label);
    for (const double x : p.x) line += (line.empty() ? "" : ",") + report::format_number(x);
    for (const double v : metric_values(p, o))
      line += (line.empty() ? "" : ",") + report::format_number(v);
    out += line + "\n";
  }
  return out;
}

nlohmann::ordered_json points_json(const std::vector<std::string>& axes,
                                   const std::vector<ScoredPoint>& points,
                                   const eval::Objective& o) {
  nlohmann::ordered_json j;
  j["axes"] = axes;
  j["points"] = nlohmann::ordered_json::array();
  for (const auto& p : points) {
    nlohmann::ordered_json e;
    if (!axes.empty()) e["x"] = p.x;
    e["label"] = p.label;
    e["objective"] = p.objective;
    e["scores"] = eval::scores_to_json(p.scores, o);
    j["points"].push_back(e);
  }
  return j;
}

std::string points_line_chart(const std::string& title, const std::string& axis,
                              const std::vector<ScoredPoint>& points, const eval::Objective& o) {
  report::LineChart chart;
  chart.title = title;
  chart.x_label = axis;
  const auto columns = metric_columns(o);
  const bool tasks = !o.tasks.empty();
  chart.y_label = tasks ? "score" : "perplexity";
  for (size_t c = 0; c < columns.size(); ++c) {
    // With tasks the chart shows scores (perplexity is in the table and CSV); without, the
    // perplexity.
    if (tasks && c < (o.text.empty() ? 0u : 2u)) continue;
    if (!tasks && columns[c] != "ppl") continue;
    report::Series s;
    s.name = columns[c];
    for (const auto& p : points) {
      s.x.push_back(p.x.empty() ? std::nan("") : p.x[0]);
      s.y.push_back(metric_values(p, o)[c]);
    }
    chart.series.push_back(std::move(s));
  }
  return report::render_line_chart(chart);
}

std::string points_heatmap(const std::string& title, const std::vector<std::string>& axes,
                           const std::vector<double>& first_values,
                           const std::vector<double>& second_values,
                           const std::vector<ScoredPoint>& points, const eval::Objective& o) {
  report::Heatmap map;
  map.title = title;
  map.y_label = axes.at(0);
  map.x_label = axes.at(1);
  map.value_label = o.tasks.empty() ? "perplexity" : "mean score";
  for (const double v : first_values) map.rows.push_back(report::format_number(v));
  for (const double v : second_values) map.columns.push_back(report::format_number(v));
  map.values.assign(map.rows.size() * map.columns.size(), std::nan(""));
  for (size_t i = 0; i < points.size() && i < map.values.size(); ++i) {
    map.values[i] = o.tasks.empty() ? -points[i].objective : points[i].objective;
  }
  return report::render_heatmap(map);
}

void check_report_path(const std::string& path, const std::string& flag, bool overwrite) {
  if (path.empty()) fail("{}: the path is empty", flag);
  std::error_code ec;
  const auto st = std::filesystem::symlink_status(path, ec);
  if (ec || !std::filesystem::exists(st)) return;
  if (!std::filesystem::is_regular_file(st)) {
    fail("{} {}: this is {}, not a file smelt may write", flag, path,
         std::filesystem::is_directory(st) ? "a folder" : "not a regular file");
  }
  if (!overwrite) {
    fail("{} {}: the file exists; pass --overwrite to replace it, or choose another path", flag,
         path);
  }
}

}  // namespace smelt::cli
