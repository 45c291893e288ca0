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

struct MoeConfig {
  std::string base_model;
  std::vector<MoeExpert> experts;
  std::string gate_mode = "hidden";  // mergekit-moe's default
  std::optional<DType> dtype;
  int64_t experts_per_token = 2;
  bool has_shared_experts = false;  // a non-empty shared_experts list
  std::string architecture;         // "" = let smelt choose (Mixtral)
  std::string yaml_text;
  // Unknown keys (ignored, as mergekit ignores them) and notes about ignored settings.
  std::vector<std::string> warnings;
};

// Parses and checks a mergekit-moe YAML document. Settings smelt cannot honour yet (prompt-based
// gate modes, shared experts, other output architectures) are refused with a
// "not supported yet" error naming the YAML key. Throws smelt::Error naming the YAML path.
MoeConfig parse_moe_config(const std::string& yaml_text);
MoeConfig load_moe_config(const std::filesystem::path& path);

}  // namespace smelt::config
