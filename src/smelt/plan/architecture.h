// What tensor names tell about a model's structure: which tensors belong to numbered layers
// (`<prefix>.<N>.<suffix>`), how many layers each layer stack has, which tensors are embeddings,
// and which loose tensors come after the layers. Works for architectures smelt has never seen.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::plan {

// A tensor name split at its first `.<digits>.` component: prefix + "." + index + "." + suffix.
struct LayerName {
  std::string prefix;  // "model.layers"
  int64_t index = 0;   // 3
  std::string suffix;  // "self_attn.q_proj.weight"
};

// Splits `name` at the first numeric dotted component; nullopt for loose (non-layer) tensors.
std::optional<LayerName> parse_layer_name(std::string_view name);
// Inverse of parse_layer_name with another index.
std::string layer_tensor_name(const LayerName& layer, int64_t index);

// True for input embeddings and output heads (the tensors whose rows are vocabulary entries):
// mergekit's `is_embed`, decided by name.
bool is_embedding_name(std::string_view name);
// True for loose tensors that come after the layers (final norm, lm_head): mergekit's
// "post-weights". Other loose tensors are pre-weights.
bool is_post_weight_name(std::string_view name);

// Layer stacks found in a model's tensor names.
struct LayerStructure {
  // Layer count (max index + 1) per prefix.
  std::map<std::string, int64_t> layers_by_prefix;
  // The prefix with the most layers (the decoder stack for LLMs); empty if there are no layers.
  std::string main_prefix;
  int64_t num_layers() const;
};

LayerStructure infer_layers(const std::vector<std::string>& tensor_names);

// The config.json key holding the layer count (e.g. "num_hidden_layers", "n_layer",
// "text_config.num_hidden_layers"), found by trying the common names; empty when none matches
// `num_layers`.
std::string find_layer_count_key(const std::string& config_json_text, int64_t num_layers);

}  // namespace smelt::plan
