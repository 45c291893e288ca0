// A LoRA adapter as llama.cpp loads it (docs/lora_extract.md, "GGUF adapters"): one GGUF file with
// general.type "adapter", adapter.type "lora", adapter.lora.alpha, and for each adapted weight W
// of the base GGUF the pair W.lora_a / W.lora_b. Tensor names and the Q/K row order are the GGUF
// export's (io/gguf_export.h), so the adapter fits the GGUF smelt exports of the same base.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "smelt/io/file_util.h"

namespace smelt::lora {

// Where one module's factors go in the GGUF adapter.
struct GgufLoraTarget {
  std::string weight;         // GGUF name of the adapted weight, e.g. "blk.0.attn_q.weight"
  int64_t permute_heads = 0;  // > 0: B's rows take the Q/K permutation with this many heads
  bool embedding = false;     // token_embd: lora_a is stored transposed ([vocab, r])
};

// The GGUF names of a base model (its config.json) for adapters.
class GgufLoraLayout {
 public:
  // Throws smelt::Error when the architecture has no GGUF export (see io::gguf_arch_for).
  explicit GgufLoraLayout(nlohmann::json base_config);
  const std::string& arch() const { return arch_; }
  // The target of HF weight `hf_weight` (e.g. "model.layers.0.self_attn.q_proj.weight") with
  // `rows` rows; `embedding` for the input embedding. nullopt when llama.cpp has no such tensor
  // (the converter drops it). Throws smelt::Error naming the tensor for a name llama.cpp does not
  // know, or Q/K rows that do not match config.json's head counts.
  std::optional<GgufLoraTarget> target(const std::string& hf_weight, uint64_t rows,
                                       bool embedding) const;

 private:
  nlohmann::json config_;
  std::string arch_;
};

// One decomposed module in PEFT's layout: linear A [rank, in], B [out, rank] (ΔW = B·A, W is
// [out, in]); embedding A [rank, vocab], B [hidden, rank] (ΔW = (B·A)ᵀ, W is [vocab, hidden]).
struct GgufLoraPair {
  GgufLoraTarget target;
  size_t rank = 0, in = 0, out = 0;  // in/out: A's columns and B's rows
  const std::vector<float>* a = nullptr;
  const std::vector<float>* b = nullptr;
};

// Writes the adapter file `path` (tensors in F32, in the order given) through a temporary file
// published by `file_options.publish`. adapter.lora.alpha is the largest rank R; llama.cpp scales
// each pair by alpha / rank, so B of a pair of lower rank is multiplied by rank / R and every
// pair contributes exactly B·A at scale 1. Returns the bytes of tensor data written.
uint64_t write_gguf_lora(const std::filesystem::path& path, const std::string& arch,
                         const std::string& name, const std::vector<GgufLoraPair>& pairs,
                         io::AtomicFileOptions file_options);

}  // namespace smelt::lora
