// The plan of a mixture-of-experts assembly (docs/moe.md): the base model's non-MLP tensors
// copied, each expert model's MLP copied into one expert slot of every layer, and a router
// computed by the planner; written through the usual executor and writer.
#pragma once

#include <cstdint>
#include <vector>

#include "smelt/config/moe_config.h"
#include "smelt/plan/plan.h"

namespace smelt::plan {

struct MoePlanOptions {
  uint64_t seed = 0;
  // --i-understand-this-is-not-useful-without-training: allow every expert to be the same model.
  bool allow_same_model = false;
  // The router rows of a prompt gate mode (moe/gate_vectors.h) for gate_config(config): layers ×
  // (experts, then the shared expert when it has prompts) × hidden; null for random modes, and
  // for a first plan that only checks the models (the rows are then 0).
  const std::vector<float>* gate_vectors = nullptr;
};

// Opens the models (headers and config.json only), checks that every expert matches the base
// (architecture, hidden size, MLP width, layer count, MLP tensor shapes), chooses the output
// family as mergekit-moe does (docs/moe.md) and builds the plan of that model; `family`, when
// given, receives the choice. Throws smelt::Error naming the YAML path at fault.
Plan build_moe_plan(const config::MoeConfig& config, const MoePlanOptions& options,
                    config::MoeOutput* family = nullptr);

// The config whose experts are the router rows to compute from prompts: the experts, then the
// shared expert when it has prompts (its row is Qwen MoE's shared_expert_gate), as mergekit-moe.
config::MoeConfig gate_config(const config::MoeConfig& config);

}  // namespace smelt::plan
