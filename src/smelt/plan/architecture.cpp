// Layer structure and tensor roles inferred from tensor names.
#include "smelt/plan/architecture.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace smelt::plan {

std::optional<LayerName> parse_layer_name(std::string_view name) {
  size_t start = 0;
  while (start < name.size()) {
    const size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) break;
    size_t end = dot + 1;
    while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
    if (end > dot + 1 && end < name.size() && name[end] == '.' && end - dot - 1 <= 9) {
      LayerName l;
      l.prefix = std::string(name.substr(0, dot));
      l.index = std::stoll(std::string(name.substr(dot + 1, end - dot - 1)));
      l.suffix = std::string(name.substr(end + 1));
      return l;
    }
    start = dot + 1;
  }
  return std::nullopt;
}

std::string layer_tensor_name(const LayerName& layer, int64_t index) {
  return fmt::format("{}.{}.{}", layer.prefix, index, layer.suffix);
}

bool is_embedding_name(std::string_view name) {
  // GGUF names (token_embd, output.weight) are included for GGUF inputs.
  static const char* kEmbeddings[] = {"embed_tokens.", "lm_head.", "wte.", "embed_in.",
                                      "embed_out.", "word_embeddings.", "tok_embeddings.",
                                      "token_embd.", "shared.weight"};
  if (name == "output.weight") return true;
  for (const char* e : kEmbeddings) {
    if (name.find(e) != std::string_view::npos) return true;
  }
  return false;
}

bool is_post_weight_name(std::string_view name) {
  if (name.starts_with("lm_head") || name.starts_with("embed_out") || name.starts_with("output.") ||
      name.find(".lm_head.") != std::string_view::npos) {
    return true;
  }
  static const char* kPost[] = {"model.norm.", "transformer.ln_f.", "final_layernorm.",
                                "model.final_layernorm.", "gpt_neox.final_layer_norm.",
                                "output_norm.", "language_model.model.norm.", "ln_f.",
                                "model.language_model.norm."};
  for (const char* p : kPost) {
    if (name.starts_with(p)) return true;
  }
  return false;
}

int64_t LayerStructure::num_layers() const {
  auto it = layers_by_prefix.find(main_prefix);
  return it == layers_by_prefix.end() ? 0 : it->second;
}

LayerStructure infer_layers(const std::vector<std::string>& tensor_names) {
  LayerStructure s;
  for (const auto& n : tensor_names) {
    if (auto l = parse_layer_name(n)) {
      int64_t& count = s.layers_by_prefix[l->prefix];
      count = std::max(count, l->index + 1);
    }
  }
  int64_t best = 0;
  for (const auto& [prefix, count] : s.layers_by_prefix) {
    if (count > best) best = count, s.main_prefix = prefix;
  }
  return s;
}

std::string find_layer_count_key(const std::string& config_json_text, int64_t num_layers) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(config_json_text);
  } catch (...) {
    return "";
  }
  static const char* kKeys[] = {"num_hidden_layers", "n_layer", "num_layers", "n_layers",
                                "text_config.num_hidden_layers", "llm_config.num_hidden_layers"};
  for (const char* key : kKeys) {
    const nlohmann::json* node = &j;
    std::string_view k = key;
    bool found = true;
    while (found) {
      const size_t dot = k.find('.');
      const std::string part(k.substr(0, dot));
      if (!node->is_object() || !node->contains(part)) {
        found = false;
        break;
      }
      node = &(*node)[part];
      if (dot == std::string_view::npos) break;
      k.remove_prefix(dot + 1);
    }
    if (found && node->is_number_integer() && node->get<int64_t>() == num_layers) return key;
  }
  return "";
}

}  // namespace smelt::plan
