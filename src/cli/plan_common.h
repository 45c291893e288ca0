// Shared by `smelt merge` and `smelt plan`: loading a config into a plan and describing it.
#pragma once

#include <string>

#include "smelt/exec/executor.h"
#include "smelt/exec/recipe.h"
#include "smelt/plan/plan.h"

namespace smelt::cli {

// How load_recipe treats the config's warnings (unknown keys).
struct ConfigWarnings {
  bool strict = false;  // --strict: the first one is an error
  bool quiet = false;   // print nothing (merge -q)
};

// Reads and parses the YAML at `path` (one merge, or a multi-stage recipe) and plans it. The
// config's unknown-key warnings are printed (or, strict, thrown) before any model is opened.
// `text` receives the file's text. Throws smelt::Error, also for a path that cannot be read
// (missing, a folder, no permission), naming the path and the cause.
exec::Recipe load_recipe(const std::string& path, const plan::PlanOptions& options,
                         const exec::ExecOptions& exec, const ConfigWarnings& warnings,
                         std::string* text = nullptr);

// Prints the plan summary (models, method, tensors, bytes, shards, memory and time estimates).
void print_plan_summary(const plan::Plan& plan, const exec::ExecOptions& exec, uint64_t shard_size);

// Prints every job whose output name matches the glob: inputs and resolved parameters.
void print_explain(const plan::Plan& plan, const std::string& glob);

// The raw-mode tensor set choice from the two flags (both set is an error).
plan::TensorSetMode tensor_set_mode(bool intersection, bool union_);

// Parses --max-memory: bytes with an optional K/M/G binary suffix ("512M" = 512 MiB).
uint64_t parse_memory_size(const std::string& text);

// Parses --random-seed: a non-negative integer below 2^64 (mergekit's seeds are non-negative
// ints); anything else is an error naming the flag.
uint64_t parse_seed(const std::string& text);

// Parses -j/--threads: a positive integer, or 0 for one thread per core; anything else is an
// error naming the flag. The workers actually used may be fewer (exec::exec_layout: the
// --max-memory budget caps them).
size_t parse_threads(const std::string& text);

// --out-type and --tensor-type given while the plan writes safetensors (auto format with
// safetensors inputs): an error, they apply to GGUF output only.
void check_gguf_only_flags(const plan::Plan& plan, const std::string& out_type,
                           const std::vector<std::string>& tensor_types);

// Fills the output-format plan options from --format, OUT, --out-type and --tensor-type.
void set_output_format(const std::string& format, const std::string& out,
                       const std::string& out_type, const std::vector<std::string>& tensor_types,
                       plan::PlanOptions* options);

// Prints the plan's warnings to stderr.
void print_warnings(const plan::Plan& plan);

}  // namespace smelt::cli
