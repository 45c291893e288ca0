// Shared by `smelt merge` and `smelt plan`: loading a config into a plan and describing it.
#pragma once

#include <string>

#include "smelt/exec/executor.h"
#include "smelt/exec/recipe.h"
#include "smelt/plan/plan.h"

namespace smelt::cli {

// Reads and parses the YAML at `path` (one merge, or a multi-stage recipe) and plans it.
// `text` receives the file's text. Throws smelt::Error.
exec::Recipe load_recipe(const std::string& path, const plan::PlanOptions& options,
                         const exec::ExecOptions& exec, std::string* text = nullptr);

// Prints the plan summary (models, method, tensors, bytes, shards, memory and time estimates).
void print_plan_summary(const plan::Plan& plan, const exec::ExecOptions& exec, uint64_t shard_size);

// Prints every job whose output name matches the glob: inputs and resolved parameters.
void print_explain(const plan::Plan& plan, const std::string& glob);

// The raw-mode tensor set choice from the two flags (both set is an error).
plan::TensorSetMode tensor_set_mode(bool intersection, bool union_);

// Parses --max-memory: bytes with an optional K/M/G binary suffix ("512M" = 512 MiB).
uint64_t parse_memory_size(const std::string& text);

// Fills the output-format plan options from --format, OUT, --out-type and --tensor-type.
void set_output_format(const std::string& format, const std::string& out,
                       const std::string& out_type, const std::vector<std::string>& tensor_types,
                       plan::PlanOptions* options);

// Prints the plan's warnings to stderr.
void print_warnings(const plan::Plan& plan);

}  // namespace smelt::cli
