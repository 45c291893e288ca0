// What tensor names tell about a model's structure: which tensors belong to numbered layers
// (`<prefix>.<N>.<suffix>`), how many layers each layer stack has, which tensors are embeddings,
// and which loose tensors come after the layers. Works for architectures smelt has never seen.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
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

// Everything smelt knows about one model's architecture: layer stacks inferred from tensor names,
// refined by the data table (data/architectures.json) for known families.
struct ArchitectureInfo {
  std::string architecture;  // config.json architectures[0] ("" without config.json)
  std::string model_type;    // config.json model_type
  std::string family;        // table entry used ("" = inferred from names only)
  LayerStructure layers;
  std::string layer_prefix;                     // the stack that slices address
  std::string layer_count_key;                  // config key of the layer count ("" = unknown)
  std::string vocab_size_key;                   // config key of the vocabulary size
  std::string tie_config_key;                   // config key saying the output head is tied
  std::vector<std::string> embedding_patterns;  // globs of tensors whose rows are vocab entries
  std::vector<std::pair<std::string, std::string>> tied;  // head glob -> embedding glob
  std::vector<std::string> post_patterns;                 // loose tensors after the layers
  std::vector<std::string> copy_from_base_patterns;       // e.g. vision towers
  bool tied_in_config = false;  // the config says the head is tied to the embeddings
  // Modules of a multi-module model (data table "modules"): name -> the globs of its tensors and
  // the config key of its layer count ("" = none or unknown).
  struct Module {
    std::vector<std::string> tensors;
    std::string layer_count_key;
  };
  std::map<std::string, Module> modules;

  int64_t num_layers() const;
  bool is_embedding(std::string_view name) const;
  bool is_post_weight(std::string_view name) const;
  bool copy_from_base(std::string_view name) const;
  // The tensor globs of module `name` of a `modules:` config: the table's, else the tensors with a
  // name component `name` ("<name>.*" and "*.<name>.*").
  std::vector<std::string> module_tensors(const std::string& name) const;
  // For an output head name (e.g. "lm_head.weight"), the embedding tensor it is tied to among
  // `names` (e.g. "model.embed_tokens.weight"); "" when `name` is not a tied head.
  std::string tied_embedding(std::string_view name, const std::vector<std::string>& names) const;
};

// The value at a dotted config.json key ("text_config.vocab_size"), or nullptr.
const nlohmann::json* dotted(const nlohmann::json& j, std::string_view key);

// Infers the architecture of a model from its tensor names and config.json text (may be empty).
ArchitectureInfo infer_architecture(const std::vector<std::string>& tensor_names,
                                    const std::string& config_json_text);

// True when `name` matches the glob `pattern` ('*' matches any run of characters, dots included).
bool glob_match(std::string_view pattern, std::string_view name);

}  // namespace smelt::plan
