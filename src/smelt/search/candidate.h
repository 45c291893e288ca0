// A merge config turned into a model in memory, ready to score (docs/search.md): what every
// search verb does per candidate, with no model file written.
#pragma once

#include <string>
#include <vector>

#include "smelt/config/config.h"
#include "smelt/eval/eval_model.h"
#include "smelt/exec/recipe.h"

namespace smelt::search {

struct CandidateOptions {
  size_t threads = 0;                         // 0 = every core
  uint64_t seed = 0;                          // --random-seed of random methods
  uint64_t max_memory = uint64_t{512} << 20;  // the merge's working memory
  bool print_warnings = false;                // the plan's warnings on stderr
};

// Plans the documents (one merge or a multi-stage recipe), merges them into memory and opens
// the result with the donor's tokenizer (config warnings printed when asked). `label` names it in
// errors and tables. Throws smelt::Error like `smelt merge` would for the same config.
eval::EvalModel merge_candidate(const std::vector<config::MergeConfig>& documents,
                                const std::string& label, const CandidateOptions& options);

// The plan options a candidate is planned with (safetensors naming, the seed).
plan::PlanOptions candidate_plan_options(const CandidateOptions& options);

// Merges an already planned recipe into memory (the plans' warnings printed when asked).
eval::EvalModel merge_recipe(const exec::Recipe& recipe, const std::string& label,
                             const CandidateOptions& options);

// The same from YAML text (parsed as a file named `label`).
eval::EvalModel merge_candidate_yaml(const std::string& yaml, const std::string& label,
                                     const CandidateOptions& options);

}  // namespace smelt::search
