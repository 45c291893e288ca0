// Multi-stage recipes (mergekit-multi): a multi-document YAML whose later documents use earlier
// documents' `name`s as models. Stages are evaluated per tensor, on demand, with no intermediate
// model on disk: reading a tensor of a stage's output computes (and briefly caches) it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "smelt/config/config.h"
#include "smelt/exec/executor.h"
#include "smelt/plan/plan.h"

namespace smelt::exec {

struct Recipe {
  std::vector<std::string> names;                        // stage names ("" for the final one)
  std::vector<std::shared_ptr<const plan::Plan>> plans;  // dependency order; the final is last
  const plan::Plan& final_plan() const { return *plans.back(); }
};

// Orders the documents by their name references and plans each, earlier stages' outputs
// standing in for their names. Throws smelt::Error for duplicate names, more than one unnamed
// document, a cycle, or an ambiguous final stage. One document gives a one-stage recipe.
Recipe build_recipe(const std::vector<config::MergeConfig>& documents,
                    const plan::PlanOptions& options, const ExecOptions& exec);

}  // namespace smelt::exec
