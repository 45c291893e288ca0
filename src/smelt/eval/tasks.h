// Task files and their scoring (docs/eval.md): JSONL lines scored by greedy generation and exact
// match, or by the log-likelihood of each choice (acc, acc_norm) as lm-evaluation-harness does.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "smelt/infer/language_model.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::eval {

struct TaskLine {
  size_t line = 0;  // 1-based line number in the file
  std::string prompt;
  // Generation: the expected text and the stop strings (default {"\n"}).
  std::optional<std::string> answer;
  std::vector<std::string> stop;
  int max_tokens = 0;  // 0: the scorer's default
  // Multiple choice: continuations, the correct one, and the delimiter put before each choice.
  std::vector<std::string> choices;
  int label = -1;
  std::string delimiter;
  bool generation() const { return answer.has_value(); }
};

struct TaskFile {
  std::string name;  // the file name without .jsonl
  std::string path;
  std::vector<TaskLine> lines;
};

// Reads a JSONL task file. Throws smelt::Error naming the file and line for malformed JSON, a
// line that is neither kind, a missing or mistyped key, or a label out of range.
TaskFile load_task_file(const std::string& path);

// A model as scoring sees it: its cache, its tokenizer and its special tokens.
struct Scorer {
  infer::LanguageModel* lm = nullptr;
  const tok::Tokenizer* tokenizer = nullptr;
  std::vector<int32_t> eos;  // generation stops at any of these
  int max_new_tokens = 256;  // generation budget when a line does not set max_tokens
};

struct LineResult {
  bool correct = false;                // exact match, or acc
  bool correct_norm = false;           // acc_norm (multiple choice); = correct for generation
  std::string output;                  // generation: the text before the stop string
  std::vector<double> loglikelihoods;  // multiple choice: one per choice
  size_t tokens = 0;                   // tokens decoded (for the tokens/s figure)
};

// Scores one line. Throws smelt::Error (naming the file and line) when the prompt does not fit
// the context.
LineResult score_line(const Scorer& s, const TaskFile& file, const TaskLine& line);

struct TaskResult {
  std::string name;
  size_t lines = 0;        // lines scored
  size_t generation = 0;   // of which generation lines
  size_t correct = 0;      // exact matches + acc hits
  size_t exact_match = 0;  // generation lines matched
  size_t acc = 0;          // multiple-choice lines: argmax log-likelihood is the label
  size_t acc_norm = 0;     // ... of log-likelihood / characters
  size_t tokens = 0;
  bool complete = true;  // false when stopped early (Ctrl-C)
  // The task's score: (exact matches + acc hits) / lines.
  double score() const;
  // sqrt(p(1-p)/(n-1)), as lm-evaluation-harness and llama.cpp report it.
  double stderr_() const;
  double acc_rate() const;
  double acc_norm_rate() const;
  double exact_match_rate() const;
};

// Scores the first `limit` lines (0: all). on_line(lines done, lines in all, tokens so far)
// returning false stops early (the result is then marked incomplete).
TaskResult score_task(const Scorer& s, const TaskFile& file, size_t limit,
                      const std::function<bool(size_t, size_t, size_t)>& on_line = {});

}  // namespace smelt::eval
