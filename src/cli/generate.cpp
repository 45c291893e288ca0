// `smelt generate MODEL --prompt TEXT`: the model's continuation streamed to stdout, greedy or
// sampled (docs/eval.md).
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "cli/common.h"
#include "cli/eval_common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/eval/sampler.h"
#include "smelt/interrupt.h"

namespace smelt::cli {
namespace {

struct GenerateCliOptions {
  std::string model;
  std::string prompt;
  std::string prompt_file;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  int max_tokens = 256;
  double temperature = 0;
  int top_k = 0;
  double top_p = 1.0;
  std::string seed = "0";
  int ctx = 0;
  bool quiet = false;
  std::string threads = "0";
  std::string max_memory = "512M";
};

void run(const GenerateCliOptions& o) {
  if (o.max_tokens < 1) fail("--max-tokens must be at least 1");
  for (const auto& stop : o.stop)
    if (stop.empty()) fail("--stop: an empty stop string would stop at once");
  if (o.prompt.empty() == o.prompt_file.empty()) fail("give --prompt TEXT or --prompt-file FILE");
  std::string prompt_text = o.prompt;
  if (!o.prompt_file.empty()) {
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) fail("--prompt-file {}: cannot read this file", o.prompt_file);
    prompt_text.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (o.ctx < 0) fail("--ctx must be positive");
  eval::SamplerOptions so;
  so.temperature = o.temperature;
  so.top_k = o.top_k;
  so.top_p = o.top_p;
  so.seed = parse_seed(o.seed);
  eval::Sampler sampler(so);  // checks the sampling flags before the model is loaded
  EvalModelOptions mo;
  mo.threads = parse_threads(o.threads);
  mo.seed = so.seed;
  mo.max_memory = parse_memory_size(o.max_memory);
  mo.quiet = o.quiet;
  eval::EvalModel m = open_model_argument(o.model, mo);
  const auto prompt = m.tokenizer->encode(prompt_text).ids;
  if (prompt.empty()) fail("--prompt: the prompt tokenizes to nothing");
  const int train_ctx = m.model->info().n_ctx_train;
  int n_ctx = o.ctx;
  if (!n_ctx)
    n_ctx = std::min<int>(static_cast<int>(prompt.size()) + o.max_tokens,
                          train_ctx > 0 ? train_ctx : 4096);
  if (static_cast<int>(prompt.size()) >= n_ctx) {
    fail("--prompt is {} tokens; the context holds {} (raise --ctx)", prompt.size(), n_ctx);
  }
  auto lm = m.model->new_session(n_ctx);
  InterruptibleScope interruptible;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits;
  lm->decode(prompt, 1, logits);
  const auto t1 = std::chrono::steady_clock::now();
  eval::TextStream stream(*m.tokenizer);
  const size_t vocab = static_cast<size_t>(lm->vocab_size());
  int generated = 0;
  std::string why = "--max-tokens reached";
  // The text so far and how much of it is printed: with --stop, the last (longest stop - 1)
  // bytes wait until they cannot begin a stop string.
  std::string text;
  size_t printed = 0, hold = 0;
  for (const auto& stop : o.stop) hold = std::max(hold, stop.size() - 1);
  auto emit = [&](const std::string& piece, bool final) {
    text += piece;
    size_t end = final || text.size() < hold ? text.size() : text.size() - hold;
    bool stopped = false;
    for (const auto& stop : o.stop) {
      // A stop string is found as soon as it is whole; none can begin before `printed`.
      if (const size_t at = text.find(stop); at != std::string::npos) {
        text.resize(at);
        end = at;
        stopped = true;
      }
    }
    if (end > printed) {
      std::fwrite(text.data() + printed, 1, end - printed, stdout);
      std::fflush(stdout);
      printed = end;
    }
    return stopped;
  };
  while (generated < o.max_tokens) {
    if (interrupt_signal()) {
      why = "interrupted";
      break;
    }
    const int32_t next = sampler.sample(logits.data(), vocab);
    if (!o.ignore_eos && std::find(m.eos.begin(), m.eos.end(), next) != m.eos.end()) {
      why = "end of sequence";
      break;
    }
    ++generated;
    if (emit(stream.push(next), false)) {
      why = "stop string";
      break;
    }
    if (lm->n_past() >= n_ctx) {
      why = "context full";
      break;
    }
    if (generated < o.max_tokens) lm->decode(std::span<const int32_t>(&next, 1), 1, logits);
  }
  if (why != "stop string") emit(stream.finish(), true);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const auto t2 = std::chrono::steady_clock::now();
  if (!o.quiet) {
    const double pp = std::chrono::duration<double>(t1 - t0).count();
    const double tg = std::chrono::duration<double>(t2 - t1).count();
    fmt::print(stderr, "{} prompt tokens ({:.1f} tokens/s), {} generated ({:.1f} tokens/s); {}\n",
               prompt.size(), pp > 0 ? static_cast<double>(prompt.size()) / pp : 0.0, generated,
               tg > 0 ? generated / tg : 0.0, why);
  }
  if (const int sig = interrupt_signal()) throw Interrupted(sig);
}

}  // namespace

void add_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Continue a prompt with a model on the CPU, streaming the text to stdout. Greedy unless\n"
      "--temperature is set. MODEL: a model folder, a .gguf file, or a merge config (.yml)\n"
      "merged into memory.\n"
      "Examples:\n"
      "  smelt generate ./model --prompt \"The capital of France is\"\n"
      "  smelt generate merge.yml --prompt \"12+35=\" --max-tokens 8\n"
      "  smelt generate ./model --prompt \"Once\" --temperature 0.8 --top-p 0.95 --seed 7");
  cmd->add_option("model", o->model, "model folder, .gguf file or merge config")->required();
  cmd->add_option("--prompt,-p", o->prompt, "the text to continue");
  cmd->add_option("--prompt-file", o->prompt_file, "continue this file's text instead");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at end-of-sequence tokens");
  cmd->add_option("--stop", o->stop, "stop before this text (repeatable), e.g. --stop $'\\n'")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--max-tokens,-n", o->max_tokens, "tokens to generate at most (default 256)");
  cmd->add_option("--temperature", o->temperature, "sampling temperature (0 = greedy, default)");
  cmd->add_option("--top-k", o->top_k, "sample among the K most likely tokens (0 = all)");
  cmd->add_option("--top-p", o->top_p, "sample among the most likely tokens of mass P (1 = all)");
  cmd->add_option("--seed", o->seed, "sampling seed (also the seed of a merge config)");
  cmd->add_option("--ctx,-c", o->ctx, "context length (default: prompt + --max-tokens)");
  cmd->add_flag("-q,--quiet", o->quiet, "no statistics line on stderr");
  cmd->add_option("-j,--threads", o->threads, "threads (0 = one per core)");
  cmd->add_option("--max-memory", o->max_memory, "working memory of a merge config's merge");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
