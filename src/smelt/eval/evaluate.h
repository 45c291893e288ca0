// Scoring one model on everything asked (perplexity of a text, task files), shared by
// `smelt eval` and the search verbs (soup, sweep, interpolate, evolve; docs/eval.md,
// docs/search.md).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "smelt/eval/eval_model.h"
#include "smelt/eval/perplexity.h"
#include "smelt/eval/tasks.h"

namespace smelt::eval {

// What a model is scored on.
struct Objective {
  std::string text;             // perplexity of this text ("" = none)
  std::vector<TaskFile> tasks;  // task files
  std::vector<double> weights;  // one per task (empty = all 1): the weighted mean's weights
  int ctx = 0;                  // 0: 512 for text, the model's context (≤ 2048) for tasks
  size_t limit = 0;             // first N lines of each task (0 = all)
  int max_gen_tokens = 256;     // generation budget of lines without max_tokens
};

// Reads the --text file (an error names it when unreadable or blank).
std::string read_text_file(const std::string& path);

struct ModelScores {
  std::string label;
  std::optional<PerplexityResult> ppl;
  std::vector<TaskResult> tasks;
  bool complete = true;  // false when stopped early (Ctrl-C)
};

// The weighted mean of the task scores (weights from the objective; 0 without tasks).
double mean_task_score(const ModelScores& s, const Objective& o);

// The single number searches maximise: the weighted mean task score when there are tasks, else
// minus the perplexity.
double objective_value(const ModelScores& s, const Objective& o);

// Progress of scoring: update(what, done, total, tokens) and clear() after each stage.
struct ScoreObserver {
  std::function<void(const std::string&, size_t, size_t, size_t)> update;
  std::function<void()> clear;
  std::function<bool()> keep_going;  // false stops early (the scores are then incomplete)
};

// Scores `m` on the objective: perplexity first, then each task in order.
ModelScores evaluate(EvalModel& m, const Objective& o, const ScoreObserver& observer = {});

// {"model", "perplexity": {...}, "tasks": {name: {...}}, "mean", "complete"} as `smelt eval
// --json` prints it.
nlohmann::ordered_json scores_to_json(const ModelScores& s, const Objective& o);

}  // namespace smelt::eval
