// A whole merge, from plan to finished output folder: built under a temporary name beside OUT
// and renamed into place only when every file is complete and durable.
#pragma once

#include <filesystem>
#include <functional>

#include "smelt/exec/executor.h"
#include "smelt/plan/plan.h"

namespace smelt::exec {

struct MergeOptions {
  ExecOptions exec;
  uint64_t shard_size = 5'000'000'000;
  bool copy_tokenizer = true;
  bool write_model_card = true;
  bool overwrite = false;
  // The config text recorded in the output (mergekit_config.yml, model card, metadata); empty =
  // the plan's own document.
  std::string config_text;
};

// Refuses an OUT that is, contains, or lies inside an input model folder, and an existing
// non-empty OUT unless options.overwrite. Throws smelt::Error saying what to do.
void check_output_path(const plan::Plan& plan, const std::filesystem::path& out, bool overwrite);

// Runs the plan and writes the output folder `out` (weights, config.json, tokenizer, model card,
// mergekit_config.yml). On any error nothing is left at `out` (an existing folder replaced with
// --overwrite is kept until the new one is complete).
void run_merge(const plan::Plan& plan, const std::filesystem::path& out,
               const MergeOptions& options);

}  // namespace smelt::exec
