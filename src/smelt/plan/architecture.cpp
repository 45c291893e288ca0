// Layer structure and tensor roles inferred from tensor names.
#include "smelt/plan/architecture.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <nlohmann/json.hpp>

namespace smelt::plan {

extern const char* const kArchitecturesJson;

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
  static const char* kEmbeddings[] = {"embed_tokens.",   "lm_head.",    "wte.",
                                      "embed_in.",       "embed_out.",  "word_embeddings.",
                                      "tok_embeddings.", "token_embd.", "shared.weight"};
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
  static const char* kPost[] = {"model.norm.",
                                "transformer.ln_f.",
                                "final_layernorm.",
                                "model.final_layernorm.",
                                "gpt_neox.final_layer_norm.",
                                "output_norm.",
                                "language_model.model.norm.",
                                "ln_f.",
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

bool glob_match(std::string_view pattern, std::string_view name) {
  return fnmatch(std::string(pattern).c_str(), std::string(name).c_str(), 0) == 0;
}

namespace {

bool any_match(const std::vector<std::string>& patterns, std::string_view name) {
  for (const auto& p : patterns) {
    if (glob_match(p, name)) return true;
  }
  return false;
}

const nlohmann::json& architecture_table() {
  static const nlohmann::json table = nlohmann::json::parse(kArchitecturesJson);
  return table;
}

std::vector<std::string> strings(const nlohmann::json& j) {
  std::vector<std::string> out;
  if (j.is_array()) {
    for (const auto& s : j) out.push_back(s.get<std::string>());
  }
  return out;
}

}  // namespace

const nlohmann::json* dotted(const nlohmann::json& j, std::string_view key) {
  const nlohmann::json* node = &j;
  while (true) {
    const size_t dot = key.find('.');
    const std::string part(key.substr(0, dot));
    if (!node->is_object() || !node->contains(part)) return nullptr;
    node = &(*node)[part];
    if (dot == std::string_view::npos) return node;
    key.remove_prefix(dot + 1);
  }
}

int64_t ArchitectureInfo::num_layers() const {
  auto it = layers.layers_by_prefix.find(layer_prefix);
  return it == layers.layers_by_prefix.end() ? 0 : it->second;
}

bool ArchitectureInfo::is_embedding(std::string_view name) const {
  return any_match(embedding_patterns, name) || is_embedding_name(name);
}

bool ArchitectureInfo::is_post_weight(std::string_view name) const {
  return any_match(post_patterns, name) || is_post_weight_name(name);
}

bool ArchitectureInfo::copy_from_base(std::string_view name) const {
  return any_match(copy_from_base_patterns, name);
}

std::string ArchitectureInfo::tied_embedding(std::string_view name,
                                             const std::vector<std::string>& names) const {
  for (const auto& [head, embedding] : tied) {
    if (!glob_match(head, name)) continue;
    for (const auto& n : names) {
      if (n != name && glob_match(embedding, n)) return n;
    }
  }
  return "";
}

std::vector<std::string> ArchitectureInfo::module_tensors(const std::string& name) const {
  if (auto it = modules.find(name); it != modules.end()) return it->second.tensors;
  return {name + ".*", "*." + name + ".*"};
}

ArchitectureInfo infer_architecture(const std::vector<std::string>& tensor_names,
                                    const std::string& config_json_text) {
  ArchitectureInfo a;
  a.layers = infer_layers(tensor_names);
  a.layer_prefix = a.layers.main_prefix;
  nlohmann::json config = nlohmann::json::object();
  if (!config_json_text.empty()) {
    try {
      config = nlohmann::json::parse(config_json_text);
    } catch (...) {
      config = nlohmann::json::object();
    }
  }
  if (!config.is_object()) config = nlohmann::json::object();
  if (config.contains("architectures") && config["architectures"].is_array() &&
      !config["architectures"].empty() && config["architectures"][0].is_string()) {
    a.architecture = config["architectures"][0].get<std::string>();
  }
  if (config.contains("model_type") && config["model_type"].is_string()) {
    a.model_type = config["model_type"].get<std::string>();
  }
  const nlohmann::json& table = architecture_table();
  const nlohmann::json& defaults = table["default"];
  std::string family = a.model_type;
  if (table["aliases"].contains(family)) family = table["aliases"][family].get<std::string>();
  const nlohmann::json* entry = nullptr;
  if (!family.empty() && table["families"].contains(family)) {
    entry = &table["families"][family];
    a.family = family;
  }
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (entry && entry->contains(key)) return (*entry)[key];
    return defaults.contains(key) ? defaults[key] : table["_comment"];
  };
  a.embedding_patterns = strings(field("embeddings"));
  a.post_patterns = strings(field("post_weights"));
  a.copy_from_base_patterns = strings(field("copy_from_base"));
  if (field("tied").is_object()) {
    for (auto& [head, emb] : field("tied").items())
      a.tied.emplace_back(head, emb.get<std::string>());
  }
  if (entry && entry->contains("modules") && (*entry)["modules"].is_object()) {
    for (auto& [name, m] : (*entry)["modules"].items()) {
      ArchitectureInfo::Module mod;
      mod.tensors = strings(m.contains("tensors") ? m["tensors"] : table["_comment"]);
      if (m.contains("layer_count_key") && m["layer_count_key"].is_string())
        mod.layer_count_key = m["layer_count_key"].get<std::string>();
      a.modules[name] = std::move(mod);
    }
  }
  a.vocab_size_key = field("vocab_size_key").is_string()
                         ? field("vocab_size_key").get<std::string>()
                         : "vocab_size";
  a.tie_config_key = field("tie_config_key").is_string()
                         ? field("tie_config_key").get<std::string>()
                         : "tie_word_embeddings";
  // The layer stack: the table's pattern when it matches an inferred prefix.
  if (entry && entry->contains("layer_prefix")) {
    const std::string pattern = (*entry)["layer_prefix"].get<std::string>();
    for (const auto& [prefix, count] : a.layers.layers_by_prefix) {
      if (glob_match(pattern, prefix)) {
        a.layer_prefix = prefix;
        break;
      }
    }
  }
  // Layer count key: the table's, else the first common key whose value matches.
  std::vector<std::string> keys;
  if (entry && entry->contains("layer_count_key")) keys.push_back((*entry)["layer_count_key"]);
  for (const auto& k : strings(defaults["layer_count_keys"])) keys.push_back(k);
  for (const auto& k : {"text_config.num_hidden_layers", "llm_config.num_hidden_layers"})
    keys.push_back(k);
  for (const auto& k : keys) {
    const nlohmann::json* v = dotted(config, k);
    if (v && v->is_number_integer() && v->get<int64_t>() == a.num_layers()) {
      a.layer_count_key = k;
      break;
    }
  }
  if (const nlohmann::json* tied = dotted(config, a.tie_config_key); tied && tied->is_boolean()) {
    a.tied_in_config = tied->get<bool>();
  } else {
    // transformers' default: tied unless the config says otherwise, for most families; infer
    // from the tensors: a model with no head of its own is tied.
    bool has_head = false;
    for (const auto& [head, emb] : a.tied) {
      for (const auto& n : tensor_names) has_head = has_head || glob_match(head, n);
    }
    a.tied_in_config = !has_head && !a.tied.empty();
  }
  return a;
}

}  // namespace smelt::plan
