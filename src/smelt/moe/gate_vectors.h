// The router rows of a mixture of experts built from prompts (docs/moe.md, "Routers"):
// mergekit-moe's `hidden` / `hidden_last`, `hidden_avg` and `cheap_embed` gate modes, computed
// with smelt's own forward pass and tokenizer on the base model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "smelt/config/moe_config.h"

namespace smelt::moe {

struct GateVectors {
  int64_t layers = 0;
  int64_t experts = 0;
  int64_t hidden = 0;
  std::vector<float> values;           // layers × experts × hidden: layer l's router, row e
  std::vector<int> degenerate_layers;  // layers whose router's condition number exceeds 5
};

// Runs the base model (a folder with config.json and tokenizer files) on every expert's
// prompts. Each prompt is the tokenizer's BOS token text followed by the prompt, encoded without
// added special tokens (as mergekit-moe encodes it). Per expert: the mean over its positive
// prompts of
//   hidden / hidden_last: the hidden state entering each layer at the prompt's last token;
//   hidden_avg: its mean over the prompt's tokens;
//   cheap_embed: the sum of the prompts' token embeddings, normalised, the same for every layer;
// minus the same of its negative prompts, then each layer's vector L2-normalised. Throws
// smelt::Error naming experts[i].positive_prompts[j] for a prompt that tokenizes to nothing.
// `base_lora`: a PEFT adapter folder applied to the base model (a `MODEL+LORA` base), or empty.
GateVectors compute_gate_vectors(const config::MoeConfig& config,
                                 const std::filesystem::path& base_folder, size_t threads,
                                 const std::filesystem::path& base_lora = {});

// The 2-norm condition number σmax/σmin of a rows × cols matrix (row-major), as
// torch.linalg.cond computes it; infinity when it is singular.
double condition_number(const float* m, int64_t rows, int64_t cols);

}  // namespace smelt::moe
