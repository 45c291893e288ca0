// `smelt lora combine` (docs/lora_extract.md, "Combining"): several PEFT LoRA adapters made into
// one by the formulas of PEFT's add_weighted_adapter.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "smelt/lora/task_merge.h"

namespace smelt::lora {

struct CombineOptions {
  CombinationType type = CombinationType::kSvd;  // PEFT's default
  std::vector<double> weights;                   // one per adapter
  std::optional<double> density;                 // required by the pruning types
  MajoritySign majority_sign = MajoritySign::kTotal;
  std::optional<size_t> svd_rank;   // svd types: default the largest adapter rank
  std::optional<double> svd_clamp;  // svd types: quantile q in [0, 1]
  uint64_t seed = 0;                // DARE masks
  // svd types: weight w_i·s_i on deltas that already hold s_i, as PEFT's code does (s_i counted
  // twice); off: weight w_i (the formula; the same when every s_i is 1).
  bool peft_svd_scaling = false;
  size_t threads = 1;
  bool overwrite = false;
  std::function<void(const std::string&)> on_note;
};

struct CombinedModule {
  std::string module;
  size_t rank = 0;
  size_t adapters = 0;  // how many inputs had it
};

struct CombineResult {
  std::vector<CombinedModule> modules;
  size_t rank = 0;                                  // config r
  CombinationType type = CombinationType::kLinear;  // as applied (one adapter: linear)
};

// Reads every adapter folder (adapter_config.json + adapter_model.safetensors), combines each
// module present in any of them over the adapters that have it, and writes the adapter folder
// `out` under the output rules of a merge (no overlap with an input, nothing replaced without
// `overwrite`, published complete). Results do not depend on `threads`. Throws smelt::Error for
// a weight count that differs from the adapter count, a missing --density, factor-wise types
// over different ranks (naming the module and ranks), shapes that differ, and adapter contents
// combine does not handle (modules_to_save tensors, lora_B.bias, DoRA).
CombineResult combine_lora(const std::vector<std::filesystem::path>& adapters,
                           const std::filesystem::path& out, const CombineOptions& options);

}  // namespace smelt::lora
