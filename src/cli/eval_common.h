// Shared by `smelt eval` and `smelt generate`: opening MODEL arguments (a model folder, a .gguf
// file, or a merge config computed into memory) and the progress line of scoring.
#pragma once

#include <chrono>
#include <string>

#include "smelt/eval/eval_model.h"
#include "smelt/eval/evaluate.h"

namespace smelt::cli {

struct EvalModelOptions {
  size_t threads = 0;                         // 0 = every core
  uint64_t seed = 0;                          // --random-seed of an in-memory merge
  uint64_t max_memory = uint64_t{512} << 20;  // the merge's working memory (beside its output)
  bool quiet = false;
};

// True for a path that names a merge config (.yml / .yaml).
bool is_merge_config(const std::string& arg);

// Opens MODEL: a model folder, a .gguf file, or a mergekit YAML config merged into memory (no
// file written; the donor's tokenizer; docs/eval.md).
eval::EvalModel open_model_argument(const std::string& arg, const EvalModelOptions& options);

// One progress line on stderr, redrawn on a terminal (nothing otherwise).
class ScoreProgress {
 public:
  explicit ScoreProgress(bool quiet);
  void update(const std::string& what, size_t done, size_t total, size_t tokens);
  void clear();
  // This progress line as evaluate()'s observer; keep_going is false once Ctrl-C was pressed.
  eval::ScoreObserver observer();

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace smelt::cli
