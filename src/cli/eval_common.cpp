#include "cli/eval_common.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/exec/memory_merge.h"

namespace smelt::cli {

bool is_merge_config(const std::string& arg) {
  return arg.ends_with(".yml") || arg.ends_with(".yaml");
}

eval::EvalModel open_model_argument(const std::string& arg, const EvalModelOptions& o) {
  const infer::LoadOptions load{.threads = o.threads};
  if (!is_merge_config(arg)) return eval::open_eval_model(arg, load);
  plan::PlanOptions po;
  po.seed = o.seed;
  po.format = plan::OutputFormat::kSafetensors;
  exec::ExecOptions eo;
  eo.threads = o.threads;
  eo.seed = o.seed;
  eo.max_memory = o.max_memory;
  exec::Recipe recipe = load_recipe(arg, po, eo, {.quiet = o.quiet});
  if (!o.quiet) {
    for (const auto& stage : recipe.plans) print_warnings(*stage);
    fmt::print(stderr, "merging {} into memory...\n", arg);
  }
  exec::MemoryModel merged = exec::merge_into_memory(recipe.final_plan(), eo);
  if (merged.config_json.empty()) {
    fail("{}: the merge has no config.json (its donor model has none), so it cannot be run", arg);
  }
  eval::EvalModel m;
  m.label = arg;
  m.model = infer::Model::from_memory(nlohmann::json::parse(merged.config_json),
                                      std::move(merged.tensors), load);
  std::error_code ec;
  const auto& dir = merged.tokenizer_folder;
  if (!std::filesystem::exists(dir / "tokenizer.json", ec) &&
      !std::filesystem::exists(dir / "tokenizer.model", ec)) {
    fail(
        "{}: the merge's donor model {} has no tokenizer files (tokenizer.json or "
        "tokenizer.model)",
        arg, dir.string());
  }
  m.tokenizer = tok::Tokenizer::load(dir);
  eval::resolve_special_tokens(m);
  return m;
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

}  // namespace smelt::cli
