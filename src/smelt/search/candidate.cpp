#include "smelt/search/candidate.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/exec/memory_merge.h"

namespace smelt::search {

namespace {

exec::ExecOptions exec_options(const CandidateOptions& o) {
  exec::ExecOptions eo;
  eo.threads = o.threads;
  eo.seed = o.seed;
  eo.max_memory = o.max_memory;
  return eo;
}

}  // namespace

plan::PlanOptions candidate_plan_options(const CandidateOptions& o) {
  plan::PlanOptions po;
  po.seed = o.seed;
  po.format = plan::OutputFormat::kSafetensors;
  return po;
}

eval::EvalModel merge_candidate(const std::vector<config::MergeConfig>& documents,
                                const std::string& label, const CandidateOptions& o) {
  if (documents.empty()) fail("{}: the config is empty", label);
  if (o.print_warnings) {
    for (const auto& doc : documents) {
      for (const auto& w : doc.warnings) fmt::print(stderr, "warning: {}\n", w);
    }
  }
  return merge_recipe(exec::build_recipe(documents, candidate_plan_options(o), exec_options(o)),
                      label, o);
}

eval::EvalModel merge_recipe(const exec::Recipe& recipe, const std::string& label,
                             const CandidateOptions& o) {
  const exec::ExecOptions eo = exec_options(o);
  if (o.print_warnings) {
    for (const auto& stage : recipe.plans) {
      for (const auto& w : stage->warnings) fmt::print(stderr, "warning: {}\n", w);
    }
  }
  exec::MemoryModel merged = exec::merge_into_memory(recipe.final_plan(), eo);
  if (merged.config_json.empty()) {
    fail("{}: the merge has no config.json (its donor model has none), so it cannot be run", label);
  }
  eval::EvalModel m;
  m.label = label;
  m.model = infer::Model::from_memory(nlohmann::json::parse(merged.config_json),
                                      std::move(merged.tensors), {.threads = o.threads});
  std::error_code ec;
  const auto& dir = merged.tokenizer_folder;
  if (!std::filesystem::exists(dir / "tokenizer.json", ec) &&
      !std::filesystem::exists(dir / "tokenizer.model", ec)) {
    fail(
        "{}: the merge's donor model {} has no tokenizer files (tokenizer.json or "
        "tokenizer.model)",
        label, dir.string());
  }
  m.tokenizer = tok::Tokenizer::load(dir);
  eval::resolve_special_tokens(m);
  return m;
}

eval::EvalModel merge_candidate_yaml(const std::string& yaml, const std::string& label,
                                     const CandidateOptions& options) {
  return merge_candidate(config::parse_config_documents(yaml, label), label, options);
}

}  // namespace smelt::search
