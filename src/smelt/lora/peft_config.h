// The adapter_config.json of a Hugging Face PEFT LoRA adapter (docs/lora_extract.md): the fields
// smelt writes and reads, and the per-module rank and scaling PEFT derives from them.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smelt::lora {

struct PeftConfig {
  std::string base_model_name_or_path;
  size_t r = 8;
  double lora_alpha = 8;
  // (regex key, value) in file order; PEFT uses the first key matching a module (module_rank).
  std::vector<std::pair<std::string, size_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::vector<std::string> target_modules;
  std::vector<std::string> modules_to_save;
  bool use_rslora = false;
  bool lora_bias = false;  // lora_B.bias tensors present
  std::string task_type = "CAUSAL_LM";
};

// The JSON text smelt writes: peft_type LORA, the fields above, lora_dropout 0, fan_in_fan_out
// false, inference_mode true, bias "none", use_dora false (keys sorted, two-space indent).
std::string peft_config_json(const PeftConfig& config);

// Parses an adapter_config.json text. Checks peft_type is LORA, r a positive integer, lora_alpha
// a number, patterns objects of numbers, fan_in_fan_out and use_dora false; target_modules may be
// a list or a string (kept as one entry). Throws smelt::Error naming `label` and the key.
PeftConfig parse_peft_config(std::string_view text, const std::string& label);

// PEFT's pattern lookup: the first key k with the whole of `module` matching (.*\.)?(k)$.
// Throws smelt::Error naming the key when it is not a valid regex.
const std::string* matching_pattern(const std::vector<std::string>& keys,
                                    const std::string& module);

// The rank and the scaling (alpha / r, or alpha / √r with use_rslora) PEFT gives `module`.
size_t module_rank(const PeftConfig& config, const std::string& module);
double module_scaling(const PeftConfig& config, const std::string& module);

}  // namespace smelt::lora
