// `smelt lora extract` (docs/lora_extract.md): a PEFT LoRA adapter approximating the difference
// between a fine-tuned model and its base, as mergekit-extract-lora writes it, with the relative
// reconstruction error of every module.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "smelt/io/model_ref.h"

namespace smelt::lora {

struct ExtractOptions {
  size_t max_rank = 128;
  bool distribute_scale = true;  // A = √S Vᵀ, B = U √S; else A = S Vᵀ, B = U
  bool embed_lora = false;       // embeddings as LoRA (same vocab size) instead of full rank
  std::vector<std::string> save_modules;  // full-rank modules: full name or last component
  std::vector<std::string> include_regex, exclude_regex;  // searched in module names
  double sv_epsilon = 0;             // > 0: singular values not above it are dropped
  bool skip_undecomposable = false;  // drop modules that are not 2-D instead of saving them
  bool randomized = false;           // randomized range finder instead of the exact SVD
  size_t power_iters = 2;
  size_t oversample = 10;
  uint64_t seed = 0;
  size_t threads = 1;  // modules decomposed at once (each holds its Δ in memory)
  bool overwrite = false;
  // "peft": an adapter folder as mergekit-extract-lora writes it. "gguf": one llama.cpp adapter
  // file (docs/lora_extract.md, "GGUF adapters"): embeddings are always decomposed, 1-D weights
  // and bias deltas left out (llama.cpp adapters hold only LoRA pairs), --save-module refused.
  std::string format = "peft";
  std::string invocation;  // shown in README.md
  std::function<void(const std::string&)> on_note;
  std::function<void(size_t done, size_t total)> on_progress;
};

// What became of one module of the fine-tuned model.
struct ModuleResult {
  std::string module;           // e.g. "model.layers.0.self_attn.q_proj"
  std::string kind;             // "lora", "embedding", "full", "skipped"
  std::vector<uint64_t> shape;  // the weight's shape
  size_t rank = 0;              // lora/embedding
  double rel_error = 0;         // ‖Δ − BA‖_F / ‖Δ‖_F (0 when Δ = 0)
  std::string note;             // why full or skipped
};

struct ExtractResult {
  std::vector<ModuleResult> modules;  // in the fine-tuned model's tensor order
  size_t rank = 0;                    // config r: the largest rank written
  uint64_t adapter_bytes = 0;
};

// Writes the adapter folder `out` (adapter_config.json, adapter_model.safetensors, README.md), or
// with format "gguf" the adapter file `out`, under the output rules of a merge: OUT may not
// overlap either input, an existing OUT is replaced only with `overwrite` and only when it holds
// model files (a regular file for GGUF), the output is built under a temporary name and published
// complete. Results do not depend on `threads`. Throws
// smelt::Error for a GGUF input, a weight missing from the base, shapes that differ (naming the
// tensor and both shapes), a regex that is invalid or matches no module, max_rank 0, and a model
// with nothing to extract; for GGUF also a base without config.json or of an architecture GGUF
// export does not know, a module llama.cpp does not know, and a changed vocabulary size.
ExtractResult extract_lora(const io::Model& ft, const io::Model& base,
                           const std::filesystem::path& out, const ExtractOptions& options);

// The README.md text of an extracted adapter (invocation, rank, per-module errors).
std::string extract_readme(const ExtractResult& result, const ExtractOptions& options,
                           const std::string& ft_ref, const std::string& base_ref);

}  // namespace smelt::lora
