// GGUF output policy: what the plan's jobs become when the output is a GGUF file -- for an export
// from safetensors the GGUF names, the checked Q/K permutation and rope_freqs.weight, and for
// every GGUF output the ggml type each tensor is written in (--out-type, --tensor-type).
#pragma once

#include "smelt/plan/plan.h"

namespace smelt::plan {

// Decides plan.gguf_output from options.format (kAuto: GGUF when the donor model is GGUF); when
// it is set, turns plan.jobs into GGUF output jobs: renamed and permuted for an export
// (plan.gguf_export, plan.gguf_arch), each given its ggml type by the rules of docs/gguf.md
// ("Output types"), and unchanged GGUF tensors marked for a byte copy. Adds a warning to
// plan.warnings for tensors that fall back to F16. Throws smelt::Error naming the config file
// and the tensor, flag or config.json key for anything that cannot be written.
void assign_gguf_output(Plan& plan, const PlanOptions& options);

}  // namespace smelt::plan
