// `smelt eval MODEL... --text F --tasks T.jsonl`: perplexity (as llama.cpp computes it), bits per
// byte and task scores of one or more models, a merge config evaluated in memory included
// (docs/eval.md).
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "cli/common.h"
#include "cli/eval_common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/eval/perplexity.h"
#include "smelt/eval/tasks.h"
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

struct ModelScores {
  std::string label;
  std::optional<eval::PerplexityResult> ppl;
  std::vector<eval::TaskResult> tasks;
  bool complete = true;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--text {}: cannot read this file", path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) fail("--text {}: read error", path);
  if (s.find_first_not_of(" \t\r\n") == std::string::npos)
    fail("--text {}: the file is empty", path);
  return s;
}

double mean_score(const ModelScores& m) {
  if (m.tasks.empty()) return 0;
  double sum = 0;
  for (const auto& t : m.tasks) sum += t.score();
  return sum / static_cast<double>(m.tasks.size());
}

// Scores one model on everything asked; stops early (complete = false) on Ctrl-C.
ModelScores score_model(eval::EvalModel& m, const EvalCliOptions& o, const std::string& text,
                        const std::vector<eval::TaskFile>& tasks, ScoreProgress& progress) {
  ModelScores s;
  s.label = m.label;
  const int train_ctx = m.model->info().n_ctx_train;
  auto keep_going = [&] { return interrupt_signal() == 0; };
  if (!text.empty()) {
    int n_ctx = o.ctx ? o.ctx : 512;
    if (!o.ctx && train_ctx > 0 && train_ctx < n_ctx) n_ctx = train_ctx;
    auto lm = m.model->new_session(n_ctx);
    std::vector<int32_t> tokens;
    if (m.bos) tokens.push_back(*m.bos);
    const auto ids = m.tokenizer->encode(text, {.add_special_tokens = false}).ids;
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    eval::PerplexityOptions po;
    po.n_ctx = n_ctx;
    po.bos = m.bos;
    po.on_chunk = [&](size_t done, size_t total, size_t scored) {
      progress.update(fmt::format("{} perplexity: chunk", printable(m.label)), done, total, scored);
      return keep_going();
    };
    po.bytes_of = [&](const std::vector<int32_t>& scored) -> uint64_t {
      return m.tokenizer->decode(scored).size();
    };
    s.ppl = eval::perplexity(*lm, tokens, po);
    progress.clear();
    if (s.ppl->chunks < s.ppl->chunks_total) s.complete = false;
  }
  if (!tasks.empty() && s.complete) {
    int n_ctx = o.ctx ? o.ctx : (train_ctx > 0 ? std::min(train_ctx, 2048) : 2048);
    auto lm = m.model->new_session(n_ctx);
    eval::Scorer scorer{.lm = lm.get(),
                        .tokenizer = m.tokenizer.get(),
                        .eos = m.eos,
                        .max_new_tokens = o.max_gen_tokens};
    for (const auto& t : tasks) {
      s.tasks.push_back(
          eval::score_task(scorer, t, o.limit, [&](size_t done, size_t total, size_t tok) {
            progress.update(fmt::format("{} {}:", printable(m.label), printable(t.name)), done,
                            total, tok);
            return keep_going();
          }));
      progress.clear();
      if (!s.tasks.back().complete || !keep_going()) {
        s.complete = false;
        break;
      }
    }
  }
  return s;
}

ordered_json to_json(const ModelScores& s, size_t n_tasks) {
  ordered_json j;
  j["model"] = s.label;
  if (s.ppl) {
    const auto& p = *s.ppl;
    j["perplexity"] = {{"ppl", p.ppl()},
                       {"ppl_stderr", p.ppl_stderr()},
                       {"bits_per_byte", p.bits_per_byte()},
                       {"tokens", p.tokens},
                       {"bytes", p.bytes},
                       {"chunks", p.chunks},
                       {"chunks_total", p.chunks_total}};
  }
  ordered_json tasks = ordered_json::object();
  for (const auto& t : s.tasks) {
    ordered_json r = {{"score", t.score()}, {"stderr", t.stderr_()}, {"lines", t.lines}};
    if (t.generation) r["exact_match"] = t.exact_match_rate();
    if (t.lines > t.generation) {
      r["acc"] = t.acc_rate();
      r["acc_norm"] = t.acc_norm_rate();
    }
    r["complete"] = t.complete;
    tasks[t.name] = r;
  }
  if (n_tasks) {
    j["tasks"] = tasks;
    if (s.tasks.size() == n_tasks) j["mean"] = mean_score(s);
  }
  j["complete"] = s.complete;
  return j;
}

void print_table(const std::vector<ModelScores>& all, const std::vector<eval::TaskFile>& tasks,
                 bool text) {
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
      row.push_back(s.tasks.size() == tasks.size() ? fmt::format("{:.4f}", mean_score(s)) : "-");
    rows.push_back(row);
  }
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& r : rows) width[c] = std::max(width[c], r[c].size());
  }
  auto print_row = [&](const std::vector<std::string>& r) {
    std::string line;
    for (size_t c = 0; c < r.size(); ++c) {
      if (c) line += "  ";
      line +=
          c == 0 ? fmt::format("{:<{}}", r[c], width[c]) : fmt::format("{:>{}}", r[c], width[c]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    fmt::print("{}\n", line);
  };
  print_row(header);
  for (const auto& r : rows) print_row(r);
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
  const std::string text = o.text.empty() ? std::string() : read_text(o.text);
  std::vector<eval::TaskFile> tasks;
  for (const auto& path : o.tasks) tasks.push_back(eval::load_task_file(path));
  EvalModelOptions mo;
  mo.threads = parse_threads(o.threads);
  mo.seed = parse_seed(o.seed);
  mo.max_memory = parse_memory_size(o.max_memory);
  mo.quiet = o.quiet || o.json;
  std::vector<ModelScores> all;
  ScoreProgress progress(o.quiet || o.json);
  InterruptibleScope interruptible;
  for (const auto& arg : o.models) {
    eval::EvalModel m = open_model_argument(arg, mo);
    all.push_back(score_model(m, o, text, tasks, progress));
    if (!all.back().complete) break;
  }
  if (o.json) {
    ordered_json j;
    j["models"] = ordered_json::array();
    for (const auto& s : all) j["models"].push_back(to_json(s, tasks.size()));
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    print_table(all, tasks, !text.empty());
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
