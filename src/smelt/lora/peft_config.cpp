// adapter_config.json written and read with nlohmann::json, every field type-checked.
#include "smelt/lora/peft_config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "smelt/error.h"

namespace smelt::lora {

std::string peft_config_json(const PeftConfig& c) {
  nlohmann::json j;
  j["base_model_name_or_path"] = c.base_model_name_or_path;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["lora_alpha"] = c.lora_alpha;
  if (c.lora_bias) j["lora_bias"] = true;
  j["lora_dropout"] = 0.0;
  j["modules_to_save"] =
      c.modules_to_save.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.modules_to_save);
  j["peft_type"] = "LORA";
  j["r"] = c.r;
  j["rank_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.rank_pattern) j["rank_pattern"][k] = v;
  j["alpha_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.alpha_pattern) j["alpha_pattern"][k] = v;
  j["target_modules"] = c.target_modules;
  j["task_type"] = c.task_type;
  j["use_dora"] = false;
  j["use_rslora"] = c.use_rslora;
  return j.dump(2) + "\n";
}

PeftConfig parse_peft_config(std::string_view text, const std::string& label) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", label, e.what());
  }
  if (!j.is_object()) fail("{}: expected a JSON object", label);
  auto get = [&](const char* key) -> const nlohmann::ordered_json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  PeftConfig c;
  const auto* type = get("peft_type");
  if (!type || !type->is_string() || type->get<std::string>() != "LORA") {
    fail("{}: \"peft_type\" must be \"LORA\" (smelt reads LoRA adapters only)", label);
  }
  const auto* r = get("r");
  if (!r || !r->is_number_integer() || r->get<int64_t>() <= 0 || r->get<int64_t>() > 1'000'000) {
    fail("{}: \"r\" must be a positive integer", label);
  }
  c.r = r->get<size_t>();
  c.lora_alpha = static_cast<double>(c.r);
  if (const auto* a = get("lora_alpha")) {
    if (!a->is_number()) fail("{}: \"lora_alpha\" must be a number", label);
    c.lora_alpha = a->get<double>();
  }
  if (const auto* p = get("rank_pattern")) {
    if (!p->is_object()) fail("{}: \"rank_pattern\" must be an object", label);
    for (const auto& [k, v] : p->items()) {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > 1'000'000) {
        fail("{}: rank_pattern[\"{}\"] must be a positive integer", label, k);
      }
      c.rank_pattern.emplace_back(k, v.get<size_t>());
    }
  }
  if (const auto* p = get("alpha_pattern")) {
    if (!p->is_object()) fail("{}: \"alpha_pattern\" must be an object", label);
    for (const auto& [k, v] : p->items()) {
      if (!v.is_number()) fail("{}: alpha_pattern[\"{}\"] must be a number", label, k);
      c.alpha_pattern.emplace_back(k, v.get<double>());
    }
  }
  auto strings = [&](const char* key, std::vector<std::string>& out) {
    const auto* v = get(key);
    if (!v) return;
    if (v->is_string()) {
      out.push_back(v->get<std::string>());
      return;
    }
    if (!v->is_array()) fail("{}: \"{}\" must be a list of names", label, key);
    for (const auto& e : *v) {
      if (!e.is_string()) fail("{}: \"{}\" must be a list of names", label, key);
      out.push_back(e.get<std::string>());
    }
  };
  strings("target_modules", c.target_modules);
  strings("modules_to_save", c.modules_to_save);
  auto flag = [&](const char* key) {
    const auto* v = get(key);
    if (!v) return false;
    if (!v->is_boolean()) fail("{}: \"{}\" must be true or false", label, key);
    return v->get<bool>();
  };
  c.use_rslora = flag("use_rslora");
  c.lora_bias = flag("lora_bias");
  if (flag("fan_in_fan_out")) {
    fail("{}: fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported", label);
  }
  if (flag("use_dora")) fail("{}: DoRA adapters (use_dora) are not supported", label);
  if (const auto* b = get("base_model_name_or_path"); b && b->is_string()) {
    c.base_model_name_or_path = b->get<std::string>();
  }
  if (const auto* t = get("task_type"); t && t->is_string()) c.task_type = t->get<std::string>();
  return c;
}

const std::string* matching_pattern(const std::vector<std::string>& keys,
                                    const std::string& module) {
  for (const std::string& k : keys) {
    try {
      if (std::regex_match(module, std::regex("(.*\\.)?(" + k + ")"))) return &k;
    } catch (const std::regex_error&) {
      fail("adapter_config.json pattern key '{}' is not a valid regular expression", k);
    }
  }
  return nullptr;
}

namespace {
template <typename T>
const T* pattern_value(const std::vector<std::pair<std::string, T>>& pattern,
                       const std::string& module) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : pattern) keys.push_back(k);
  const std::string* k = matching_pattern(keys, module);
  if (!k) return nullptr;
  return &pattern[static_cast<size_t>(k - keys.data())].second;
}
}  // namespace

size_t module_rank(const PeftConfig& c, const std::string& module) {
  const size_t* r = pattern_value(c.rank_pattern, module);
  return r ? *r : c.r;
}

double module_scaling(const PeftConfig& c, const std::string& module) {
  const double* a = pattern_value(c.alpha_pattern, module);
  const double alpha = a ? *a : c.lora_alpha;
  const double r = static_cast<double>(module_rank(c, module));
  return c.use_rslora ? alpha / std::sqrt(r) : alpha / r;
}

}  // namespace smelt::lora
