// `smelt eval MODEL... --text F --tasks T.jsonl`: perplexity (as llama.cpp computes it), bits per
// byte and task scores of one or more models, a merge config evaluated in memory included
// (docs/eval.md).
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "cli/common.h"
#include "cli/eval_common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/eval/evaluate.h"
#include "smelt/interrupt.h"

namespace smelt::cli {
namespace {

using ordered_json = nlohmann::ordered_json;

struct EvalCliOptions {
  std::vector<std::string> models;
  std::string text;
  std::vector<std::string> tasks;
  int ctx = 0;  // 0: 512 for --text, the model's context (at most 2048) for tasks
  size_t limit = 0;
  int max_gen_tokens = 256;
  bool json = false;
  bool quiet = false;
  std::string threads = "0";
  std::string seed = "0";
  std::string max_memory = "512M";
};

void print_table(const std::vector<eval::ModelScores>& all, const eval::Objective& objective) {
  const auto& tasks = objective.tasks;
  const bool text = !objective.text.empty();
  std::vector<std::string> header = {"model"};
  if (text) header.insert(header.end(), {"ppl", "bits/byte"});
  for (const auto& t : tasks) header.push_back(printable(t.name));
  if (!tasks.empty()) header.push_back("mean");
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : all) {
    std::vector<std::string> row = {printable(s.label)};
    if (text) {
      row.push_back(s.ppl && s.ppl->tokens ? fmt::format("{:.4f}", s.ppl->ppl()) : "-");
      row.push_back(s.ppl && s.ppl->bytes ? fmt::format("{:.4f}", s.ppl->bits_per_byte()) : "-");
    }
    for (size_t i = 0; i < tasks.size(); ++i) {
      row.push_back(i < s.tasks.size() ? fmt::format("{:.4f}", s.tasks[i].score()) : "-");
    }
    if (!tasks.empty())
      row.push_back(s.tasks.size() == tasks.size()
                        ? fmt::format("{:.4f}", eval::mean_task_score(s, objective))
                        : "-");
    rows.push_back(row);
  }
  print_columns(header, rows, /*left_columns=*/1);
  bool first = true;
  for (const auto& s : all) {
    if (s.ppl && s.ppl->tokens) {
      fmt::print("{}perplexity of {}: {:.4f} ± {:.4f} over {} tokens in {} chunks of {}\n",
                 std::exchange(first, false) ? "\n" : "", printable(s.label), s.ppl->ppl(),
                 s.ppl->ppl_stderr(), s.ppl->tokens, s.ppl->chunks, s.ppl->n_ctx);
    }
  }
}

void run(const EvalCliOptions& o) {
  if (o.text.empty() && o.tasks.empty())
    fail("nothing to evaluate: give --text FILE (perplexity) and/or --tasks FILE.jsonl");
  if (o.ctx < 0 || o.ctx == 1 || o.ctx > 1'000'000)
    fail("--ctx {}: give a context of 4 tokens or more", o.ctx);
  if (o.max_gen_tokens < 1) fail("--max-gen-tokens must be at least 1");
  // Every input is checked before any model is loaded or merged.
  eval::Objective objective;
  if (!o.text.empty()) objective.text = eval::read_text_file(o.text);
  for (const auto& path : o.tasks) objective.tasks.push_back(eval::load_task_file(path));
  objective.ctx = o.ctx;
  objective.limit = o.limit;
  objective.max_gen_tokens = o.max_gen_tokens;
  EvalModelOptions mo;
  mo.threads = parse_threads(o.threads);
  mo.seed = parse_seed(o.seed);
  mo.max_memory = parse_memory_size(o.max_memory);
  mo.quiet = o.quiet || o.json;
  std::vector<eval::ModelScores> all;
  ScoreProgress progress(o.quiet || o.json);
  InterruptibleScope interruptible;
  for (const auto& arg : o.models) {
    eval::EvalModel m = open_model_argument(arg, mo);
    all.push_back(eval::evaluate(m, objective, progress.observer()));
    if (!all.back().complete) break;
  }
  if (o.json) {
    ordered_json j;
    j["models"] = ordered_json::array();
    for (const auto& s : all) j["models"].push_back(eval::scores_to_json(s, objective));
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    print_table(all, objective);
  }
  if (const int sig = interrupt_signal()) {
    fmt::print(stderr,
               "interrupted: the scores above cover what was evaluated before the signal\n");
    throw Interrupted(sig);
  }
}

}  // namespace

void add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Evaluate models on the CPU: perplexity of a text (as llama.cpp's perplexity tool computes\n"
      "it, plus bits per byte) and task files (JSONL: generation scored by exact match, multiple\n"
      "choice by log-likelihood). MODEL: a model folder, a .gguf file, or a merge config\n"
      "(.yml), which is merged into memory and evaluated without writing anything.\n"
      "Examples:\n"
      "  smelt eval ./model --text wiki.txt\n"
      "  smelt eval base ft-a ft-b merge.yml --tasks add.jsonl --tasks reverse.jsonl\n"
      "  smelt eval merge.yml --tasks qa.jsonl --limit 50 --json");
  cmd->add_option("models", o->models, "model folders, .gguf files or merge configs")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--text", o->text, "perplexity and bits per byte of this text file");
  cmd->add_option("--tasks", o->tasks, "a JSONL task file (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--ctx,-c", o->ctx,
                  "context length (perplexity chunks: default 512, as llama.cpp; tasks: the "
                  "model's context, at most 2048)");
  cmd->add_option("--limit", o->limit, "score only the first N lines of each task file");
  cmd->add_option("--max-gen-tokens", o->max_gen_tokens,
                  "generation budget per line without max_tokens (default 256)");
  cmd->add_flag("--json", o->json, "machine-readable results on stdout");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress line");
  cmd->add_option("-j,--threads", o->threads, "threads (0 = one per core)");
  cmd->add_option("--random-seed", o->seed, "seed of a merge config's random methods");
  cmd->add_option("--max-memory", o->max_memory,
                  "working memory of a merge config's merge, beside the merged model itself");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
