#include "cli/eval_common.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/search/candidate.h"

namespace smelt::cli {

bool is_merge_config(const std::string& arg) {
  return arg.ends_with(".yml") || arg.ends_with(".yaml");
}

eval::EvalModel open_model_argument(const std::string& arg, const EvalModelOptions& o) {
  if (!is_merge_config(arg)) return eval::open_eval_model(arg, {.threads = o.threads});
  const search::CandidateOptions co{
      .threads = o.threads, .seed = o.seed, .max_memory = o.max_memory, .print_warnings = !o.quiet};
  exec::ExecOptions eo;
  eo.threads = o.threads;
  eo.seed = o.seed;
  eo.max_memory = o.max_memory;
  const exec::Recipe recipe =
      load_recipe(arg, search::candidate_plan_options(co), eo, {.quiet = o.quiet});
  if (!o.quiet) fmt::print(stderr, "merging {} into memory...\n", arg);
  return search::merge_recipe(recipe, arg, co);
}

ScoreProgress::ScoreProgress(bool quiet)
    : enabled_(!quiet && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void ScoreProgress::update(const std::string& what, size_t done, size_t total, size_t tokens) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  const double s = std::chrono::duration<double>(now - start_).count();
  fmt::print(stderr, "\r\033[K{} {}/{}  {:.0f} tokens/s", what, done, total,
             s > 0 ? static_cast<double>(tokens) / s : 0.0);
  drawn_ = true;
}

void ScoreProgress::clear() {
  if (drawn_) fmt::print(stderr, "\r\033[K");
  drawn_ = false;
  start_ = std::chrono::steady_clock::now();
}

eval::ScoreObserver ScoreProgress::observer() {
  return {.update = [this](const std::string& what, size_t done, size_t total,
                           size_t tokens) { update(printable(what), done, total, tokens); },
          .clear = [this] { clear(); },
          .keep_going = [] { return interrupt_signal() == 0; }};
}

}  // namespace smelt::cli
