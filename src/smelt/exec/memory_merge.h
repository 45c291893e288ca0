// A merge computed into memory instead of files (docs/eval.md): what `smelt eval CONFIG.yml`
// evaluates without writing anything. The output model's tensors are held whole, so this needs
// the output's size in RAM (plus the executor's bounded working memory).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "smelt/exec/executor.h"
#include "smelt/infer/model.h"
#include "smelt/plan/plan.h"

namespace smelt::exec {

// The forward pass's in-memory tensor (name, dtype, shape, bytes), so a merge hands its
// output to infer::Model::from_memory without a copy.
using infer::MemoryTensor;

struct MemoryModel {
  std::string config_json;                 // the output config.json text (finalize's rules)
  std::filesystem::path tokenizer_folder;  // the donor's folder, whose tokenizer the output gets
  std::vector<MemoryTensor> tensors;       // in job order
};

// Executes every job of `plan` into memory. Refuses a plan that writes GGUF (its tensors would
// not be in Hugging Face naming): plan such configs for safetensors output.
MemoryModel merge_into_memory(const plan::Plan& plan, const ExecOptions& options);

}  // namespace smelt::exec
