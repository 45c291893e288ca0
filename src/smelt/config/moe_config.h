// mergekit-moe configs (docs/moe.md): a base model donating attention, norms and embeddings, and
// dense expert models whose MLPs become the experts of a mixture-of-experts model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "smelt/dtype.h"

namespace smelt::config {

struct MoeExpert {
  std::string source_model;
  std::vector<std::string> positive_prompts;
  std::vector<std::string> negative_prompts;
  std::optional<double> noise_scale;
  std::optional<double> residual_scale;
};

// The output families of mergekit-moe, in its order of preference after Mixtral (docs/moe.md).
enum class MoeOutput { kMixtral, kDeepseek, kQwen2, kQwen3 };

// mergekit-moe's name of a family ("Mixtral", "DeepSeek MoE", "Qwen MoE", "Qwen3 MoE"), which
// `architecture:` matches by prefix.
const char* moe_output_name(MoeOutput family);

struct MoeConfig {
  std::string base_model;
  std::vector<MoeExpert> experts;
  // At most one (no output family takes more); its prompts, when given, make its router row.
  std::vector<MoeExpert> shared_experts;
  std::string gate_mode = "hidden";  // mergekit-moe's default
  std::optional<DType> dtype;
  int64_t experts_per_token = 2;
  std::string architecture;  // "" = let smelt choose among every family
  // The families `architecture:` allows (all four when it is absent), in preference order.
  std::vector<MoeOutput> allowed_outputs;
  std::string yaml_text;
  // Unknown keys (ignored, as mergekit ignores them) and notes about ignored settings.
  std::vector<std::string> warnings;
};

// Parses and checks a mergekit-moe YAML document: the keys, the gate mode, the experts and the
// shared expert (at most one), and that `architecture:` names one of the output families. Which
// family is written depends on the models too and is chosen by the planner (plan/moe_plan.h).
// Throws smelt::Error naming the YAML path.
MoeConfig parse_moe_config(const std::string& yaml_text);
MoeConfig load_moe_config(const std::filesystem::path& path);

}  // namespace smelt::config
