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
  // Receives notes for the user (temporaries of a dead run removed, files left alone).
  std::function<void(const std::string&)> on_note;
};

// Refuses an OUT that is, contains, or lies inside an input model folder; an existing non-empty
// OUT unless `overwrite`, and even then one holding anything but model files; for GGUF output,
// anything but a regular file. Throws smelt::Error saying what to do.
void check_output_path(const plan::Plan& plan, const std::filesystem::path& out, bool overwrite);

// Runs the plan and writes the output folder `out` (weights, config.json, tokenizer, model card,
// mergekit_config.yml), or the GGUF file `out`. Holds OUT's lock for the whole run (a second run
// on the same OUT is refused) and removes temporaries of dead runs first. On any error, an
// interrupt or an input modified meanwhile, nothing is left at `out` and nothing there is
// replaced (an existing output replaced with --overwrite stays until the new one is complete);
// see docs/reliability.md.
void run_merge(const plan::Plan& plan, const std::filesystem::path& out,
               const MergeOptions& options);

}  // namespace smelt::exec
