// PEFT LoRA adapter folders: adapter_config.json parsing, adapter tensor names, and the checks
// that bind an adapter to a base model before any base tensor data is read.
#include "smelt/io/lora_adapter.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "smelt/error.h"
#include "smelt/io/file_util.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/io/torch_bin.h"
#include "smelt/kernels/convert.h"

namespace smelt::io {
namespace fs = std::filesystem;
namespace {

using ojson = nlohmann::ordered_json;

// adapter_config.json is a few kilobytes; anything this large is not one.
constexpr uint64_t kMaxConfigBytes = uint64_t{16} << 20;
// Longest rank_pattern / alpha_pattern / target_modules pattern accepted.
constexpr size_t kMaxPatternBytes = 1024;
// Elements converted at once by the finiteness scan.
constexpr uint64_t kScanElements = uint64_t{1} << 20;

std::string shape_str(const std::vector<uint64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

// PEFT's get_pattern_key: `key` matches a dotted suffix of `module`.
bool pattern_matches(const std::string& key, const std::string& module) {
  const std::regex re("(.*\\.)?(" + key + ")");
  return std::regex_match(module, re);
}

// Checks that `key` compiles as a pattern (std::regex's ECMAScript grammar, which agrees with
// Python's re for the plain module names and alternations PEFT configs hold).
void check_pattern(const std::string& key, const std::string& label, const char* what) {
  // std::regex compiles and matches recursively: a bound keeps a hostile pattern from
  // exhausting the stack.
  if (key.size() > kMaxPatternBytes) {
    fail("{}: {} key of {} bytes is longer than the {} bytes smelt accepts", label, what,
         key.size(), kMaxPatternBytes);
  }
  try {
    std::regex re("(.*\\.)?(" + key + ")");
  } catch (const std::regex_error& e) {
    fail("{}: {} key '{}' is not a regular expression smelt can use ({})", label, what, key,
         e.what());
  }
}

bool get_bool(const ojson& j, const char* key, bool fallback, const std::string& label) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) fail("{}: \"{}\" must be true or false", label, key);
  return j[key].get<bool>();
}

double get_number(const ojson& j, const char* key, double fallback, const std::string& label) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) fail("{}: \"{}\" must be a number", label, key);
  const double v = j[key].get<double>();
  if (!std::isfinite(v)) fail("{}: \"{}\" must be finite", label, key);
  return v;
}

// A positive integer rank (PEFT: "`r` should be a positive integer value").
int64_t get_rank(const ojson& v, const std::string& what, const std::string& label) {
  if (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()) &&
      std::abs(v.get<double>()) < 1e15) {
    return get_rank(ojson(static_cast<int64_t>(v.get<double>())), what, label);
  }
  if (!v.is_number_integer()) fail("{}: {} must be a positive integer rank", label, what);
  const int64_t r = v.get<int64_t>();
  if (r <= 0) {
    fail(
        "{}: {} = {}: a LoRA rank must be a positive integer (an r = 0 adapter changes nothing "
        "and its scaling alpha/r is undefined)",
        label, what, r);
  }
  if (r > (int64_t{1} << 31)) fail("{}: {} = {} is not a plausible LoRA rank", label, what, r);
  return r;
}

std::vector<std::string> get_string_list(const ojson& j, const char* key,
                                         const std::string& label) {
  std::vector<std::string> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  if (!j[key].is_array()) fail("{}: \"{}\" must be a list of module names", label, key);
  for (const auto& v : j[key]) {
    if (!v.is_string()) fail("{}: \"{}\" must be a list of module names", label, key);
    out.push_back(v.get<std::string>());
  }
  return out;
}

bool is_set(const ojson& j, const char* key) {
  if (!j.contains(key)) return false;
  const ojson& v = j[key];
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_array() || v.is_object() || v.is_string()) return !v.empty();
  return true;
}

}  // namespace

int64_t LoraConfig::rank_of(const std::string& module) const {
  for (const auto& [key, r] : rank_pattern) {
    if (pattern_matches(key, module)) return r;
  }
  return r;
}

double LoraConfig::alpha_of(const std::string& module) const {
  for (const auto& [key, a] : alpha_pattern) {
    if (pattern_matches(key, module)) return a;
  }
  return lora_alpha;
}

double LoraConfig::scaling_of(const std::string& module) const {
  const double rank = static_cast<double>(rank_of(module));
  return alpha_of(module) / (use_rslora ? std::sqrt(rank) : rank);
}

LoraConfig parse_lora_config(std::string_view json_text, const std::string& label) {
  ojson j;
  try {
    j = ojson::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", label, e.what());
  }
  if (!j.is_object()) fail("{}: must be a JSON object (a PEFT adapter config)", label);
  LoraConfig c;
  if (!j.contains("peft_type") || !j["peft_type"].is_string()) {
    fail("{}: has no \"peft_type\" string; not a PEFT adapter config", label);
  }
  c.peft_type = j["peft_type"].get<std::string>();
  if (c.peft_type != "LORA") {
    fail(
        "{}: peft_type '{}' is not supported: smelt applies LoRA adapters (peft_type \"LORA\") "
        "only; merge a {} adapter into its model with PEFT's merge_and_unload first",
        label, c.peft_type, c.peft_type);
  }
  if (j.contains("r") && !j["r"].is_null()) c.r = get_rank(j["r"], "\"r\"", label);
  c.lora_alpha = get_number(j, "lora_alpha", c.lora_alpha, label);
  c.use_rslora = get_bool(j, "use_rslora", false, label);
  c.use_dora = get_bool(j, "use_dora", false, label);
  c.fan_in_fan_out = get_bool(j, "fan_in_fan_out", false, label);
  c.lora_bias = get_bool(j, "lora_bias", false, label);
  if (j.contains("bias") && !j["bias"].is_null()) {
    const ojson& b = j["bias"];
    if (!b.is_string() || (b != "none" && b != "all" && b != "lora_only")) {
      fail("{}: \"bias\" must be \"none\", \"all\" or \"lora_only\"", label);
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_object())
      fail("{}: \"{}\" must be an object {{module pattern: value}}", label, key);
    for (const auto& [k, v] : j[key].items()) {
      check_pattern(k, label, key);
      if (std::string_view(key) == "rank_pattern") {
        c.rank_pattern.emplace_back(k, get_rank(v, fmt::format("rank_pattern['{}']", k), label));
      } else {
        if (!v.is_number() || !std::isfinite(v.get<double>())) {
          fail("{}: alpha_pattern['{}'] must be a finite number", label, k);
        }
        c.alpha_pattern.emplace_back(k, v.get<double>());
      }
    }
  }
  if (j.contains("target_modules") && !j["target_modules"].is_null()) {
    const ojson& t = j["target_modules"];
    if (t.is_string()) {
      c.target_regex = t.get<std::string>();
      if (c.target_regex->size() > kMaxPatternBytes) {
        fail(
            "{}: \"target_modules\" pattern of {} bytes is longer than the {} bytes smelt "
            "accepts",
            label, c.target_regex->size(), kMaxPatternBytes);
      }
    } else {
      c.target_modules = get_string_list(j, "target_modules", label);
    }
  }
  c.modules_to_save = get_string_list(j, "modules_to_save", label);
  // Options under which the adapter is not a fixed W + ΔW (or not LoRA factors at all): PEFT
  // cannot merge them either, or they need parts of the model smelt does not rebuild.
  static const std::vector<std::pair<const char*, const char*>> kUnbakeable = {
      {"alora_invocation_tokens",
       "an activated LoRA (aLoRA) acts only after its invocation tokens"},
      {"target_parameters", "LoRA on bare nn.Parameters (target_parameters) is not supported"},
      {"trainable_token_indices", "trainable token deltas are not supported"},
      {"layer_replication", "layer replication builds layers the base model does not have"},
      {"use_qalora", "QALoRA adapters are not supported"},
      {"arrow_config", "Arrow routes between adapters per token; it has no merged weights"},
      {"use_bdlora", "block-diagonal LoRA is not supported"},
      {"kasa_config", "KaSA adapters are not supported"},
      {"velora_config", "VeLoRA adapters are not supported"},
      {"monteclora_config", "MonteCLoRA adapters are not supported"},
  };
  for (const auto& [key, why] : kUnbakeable) {
    if (is_set(j, key)) fail("{}: \"{}\" is set: {}", label, key, why);
  }
  return c;
}

std::shared_ptr<const LoraAdapter> LoraAdapter::open(const fs::path& given) {
  std::error_code ec;
  fs::path dir = given;
  if (fs::is_regular_file(given, ec)) {
    const std::string name = given.filename().string();
    if (name != "adapter_config.json" && !name.starts_with("adapter_model.")) {
      fail(
          "LoRA adapter {}: is a file; give the adapter folder (with adapter_config.json and "
          "adapter_model.safetensors)",
          given.string());
    }
    dir = given.parent_path().empty() ? fs::path(".") : given.parent_path();
  } else if (!fs::is_directory(given, ec)) {
    fail("LoRA adapter {}: no such folder", given.string());
  }
  auto a = std::shared_ptr<LoraAdapter>(new LoraAdapter());
  a->dir_ = dir;
  const fs::path config_path = dir / "adapter_config.json";
  if (!fs::is_regular_file(config_path, ec)) {
    fail(
        "LoRA adapter {}: adapter_config.json is missing (a PEFT adapter folder holds "
        "adapter_config.json and adapter_model.safetensors)",
        dir.string());
  }
  const uint64_t size = fs::file_size(config_path, ec);
  if (ec || size > kMaxConfigBytes) {
    fail("{}: is {} bytes; an adapter config is at most {} bytes", config_path.string(), size,
         kMaxConfigBytes);
  }
  a->config_ = parse_lora_config(read_whole_file(config_path), config_path.string());
  if (fs::is_regular_file(dir / "adapter_model.safetensors", ec)) {
    a->file_ = SafetensorsFile::open(dir / "adapter_model.safetensors");
  } else if (fs::is_regular_file(dir / "adapter_model.bin", ec)) {
    a->file_ = TorchFile::open(dir / "adapter_model.bin");
  } else {
    fail("LoRA adapter {}: has neither adapter_model.safetensors nor adapter_model.bin",
         dir.string());
  }
  const std::string label = a->file_->path().string();
  static const std::string kPrefix = "base_model.model.";
  for (const TensorInfo& t : a->file_->tensors()) {
    if (!t.name.starts_with(kPrefix)) {
      fail(
          "{}: tensor '{}' does not start with '{}': not a PEFT LoRA adapter of a transformers "
          "model",
          label, t.name, kPrefix);
    }
    const std::string rest = t.name.substr(kPrefix.size());
    std::vector<std::string> seg;
    for (size_t p = 0;;) {
      const size_t dot = rest.find('.', p);
      seg.push_back(rest.substr(p, dot == std::string::npos ? std::string::npos : dot - p));
      if (dot == std::string::npos) break;
      p = dot + 1;
    }
    // The last segment that names a PEFT part; what precedes it is the module path.
    static const std::set<std::string> kParts = {"lora_A",
                                                 "lora_B",
                                                 "lora_embedding_A",
                                                 "lora_embedding_B",
                                                 "lora_magnitude_vector",
                                                 "modules_to_save",
                                                 "original_module"};
    size_t part = seg.size();
    for (size_t i = seg.size(); i-- > 0;) {
      if (kParts.count(seg[i])) {
        part = i;
        break;
      }
    }
    Entry e;
    e.info = &t;
    if (part == seg.size()) {
      // A full tensor, as PEFT saves modules_to_save and trained biases: the model's own name.
      e.role = Entry::Role::kReplace;
      e.module = rest;
      a->entries_.push_back(e);
      continue;
    }
    if (part == 0) fail("{}: tensor '{}' names no module", label, t.name);
    std::string module = seg[0];
    for (size_t i = 1; i < part; ++i) module += "." + seg[i];
    const std::string& p = seg[part];
    const std::vector<std::string> after(seg.begin() + static_cast<long>(part) + 1, seg.end());
    // `after` without an adapter name ("default" in memory, removed on save) in front.
    auto tail_is = [&](const std::vector<std::string>& want) {
      if (after == want) return true;
      if (after.size() != want.size() + 1) return false;
      return std::equal(want.begin(), want.end(), after.begin() + 1);
    };
    e.module = module;
    if (p == "original_module") continue;  // the untouched copy beside a modules_to_save module
    if (p == "modules_to_save") {
      if (after.empty()) fail("{}: tensor '{}' names no parameter", label, t.name);
      // modules_to_save.<param> or modules_to_save.<adapter>.<param...>.
      std::string param = after.back();
      if (after.size() >= 2) {
        param = after[1];
        for (size_t i = 2; i < after.size(); ++i) param += "." + after[i];
      }
      e.role = Entry::Role::kReplace;
      e.module = module + "." + param;
    } else if ((p == "lora_A" || p == "lora_B") && tail_is({"weight"})) {
      e.role = p == "lora_A" ? Entry::Role::kA : Entry::Role::kB;
    } else if (p == "lora_B" && tail_is({"bias"})) {
      e.role = Entry::Role::kBias;
    } else if ((p == "lora_embedding_A" || p == "lora_embedding_B") && after.size() <= 1) {
      e.role = p == "lora_embedding_A" ? Entry::Role::kEmbeddingA : Entry::Role::kEmbeddingB;
    } else if (p == "lora_magnitude_vector" && after.size() <= 2 &&
               (after.size() < 2 || after[1] == "weight")) {
      e.role = Entry::Role::kMagnitude;
    } else {
      fail(
          "{}: tensor '{}' is not a LoRA tensor smelt knows (lora_A.weight, lora_B.weight, "
          "lora_B.bias, lora_embedding_A/B, lora_magnitude_vector)",
          label, t.name);
    }
    a->entries_.push_back(e);
  }
  if (a->entries_.empty()) fail("{}: holds no LoRA tensors", label);
  return a;
}

std::vector<LoraEdit> LoraAdapter::bind(const Model& base) const {
  const std::string label = file_->path().string();
  const std::string model = base.resolved().ref;
  if (base.resolved().gguf) {
    fail(
        "LoRA adapter {}: cannot be applied to GGUF model '{}' (its tensors are named blk.N.*, "
        "not after transformers modules); apply it to the safetensors model, then convert",
        dir_.string(), model);
  }
  struct Group {
    std::map<Entry::Role, const TensorInfo*> parts;
  };
  std::map<std::string, Group> groups;  // module -> its LoRA tensors
  std::vector<LoraEdit> edits;
  std::map<std::string, std::string> changed_by;  // base tensor -> adapter tensor changing it
  auto claim = [&](const std::string& target, const std::string& by) {
    auto [it, fresh] = changed_by.emplace(target, by);
    if (!fresh) {
      fail("{}: tensors '{}' and '{}' both change the model's '{}'", label, it->second, by, target);
    }
  };
  auto base_tensor = [&](const std::string& name, const std::string& module,
                         const std::string& by) -> const TensorInfo& {
    const ModelTensor mt = base.find(name);
    if (!mt.info) {
      fail(
          "{}: module '{}' (tensor '{}') is not in the model: '{}' has no tensor '{}'; the "
          "adapter was made for another base model",
          label, module, by, model, name);
    }
    if (!dtype_is_convertible_float(mt.info->dtype) || mt.info->quantized()) {
      fail("{}: the model's '{}' is {}, not a floating-point tensor an adapter can change", label,
           name, dtype_name(mt.info->dtype));
    }
    return *mt.info;
  };
  for (const Entry& e : entries_) {
    if (!dtype_is_convertible_float(e.info->dtype)) {
      fail("{}: tensor '{}' is {}, not a floating-point type", label, e.info->name,
           dtype_name(e.info->dtype));
    }
    if (e.role == Entry::Role::kReplace) {
      const TensorInfo& w = base_tensor(e.module, e.module, e.info->name);
      if (w.shape != e.info->shape) {
        fail(
            "{}: tensor '{}' replaces the model's '{}' but is {} where the model's is {}; the "
            "adapter was made for another base model (or a resized vocabulary)",
            label, e.info->name, e.module, shape_str(e.info->shape), shape_str(w.shape));
      }
      claim(e.module, e.info->name);
      LoraEdit edit;
      edit.kind = LoraEdit::Kind::kReplace;
      edit.module = e.module;
      edit.target = e.module;
      edit.source = e.info;
      edits.push_back(edit);
      continue;
    }
    const TensorInfo*& slot = groups[e.module].parts[e.role];
    if (slot) {
      fail("{}: tensors '{}' and '{}' are the same part of module '{}'", label, slot->name,
           e.info->name, e.module);
    }
    slot = e.info;
  }
  using Role = Entry::Role;
  for (const auto& group : groups) {
    // Named copies: lambdas cannot capture structured bindings before clang 16 (fuzz builds).
    const auto& module = group.first;
    const auto& g = group.second;
    auto part = [&](Role r) -> const TensorInfo* {
      auto it = g.parts.find(r);
      return it == g.parts.end() ? nullptr : it->second;
    };
    const bool embedding = part(Role::kEmbeddingA) || part(Role::kEmbeddingB);
    const TensorInfo* a = embedding ? part(Role::kEmbeddingA) : part(Role::kA);
    const TensorInfo* b = embedding ? part(Role::kEmbeddingB) : part(Role::kB);
    const char* a_name = embedding ? "lora_embedding_A" : "lora_A.weight";
    const char* b_name = embedding ? "lora_embedding_B" : "lora_B.weight";
    if (embedding && (part(Role::kA) || part(Role::kB))) {
      fail("{}: module '{}' has both lora_A/B and lora_embedding_A/B tensors", label, module);
    }
    if (!a || !b) {
      fail("{}: module '{}' has {} but no {}", label, module,
           a   ? a_name
           : b ? b_name
               : "a bias",
           !a ? a_name : b_name);
    }
    const std::string target = module + ".weight";
    const TensorInfo& w = base_tensor(target, module, a->name);
    const int64_t rank = config_.rank_of(module);
    const auto r = static_cast<uint64_t>(rank);
    auto mismatch = [&](const TensorInfo& t, const std::string& want) {
      fail(
          "{}: module '{}': {} is {} but the model's '{}' is {}, which needs {}; the adapter was "
          "made for another base model",
          label, module, t.name.substr(t.name.rfind(module) + module.size() + 1),
          shape_str(t.shape), target, shape_str(w.shape), want);
    };
    if (a->shape.empty() || b->shape.size() < 2 || a->shape[0] != r || b->shape[1] != r) {
      fail(
          "{}: module '{}': {} is {} and {} is {}, but adapter_config.json gives this module "
          "rank {}",
          label, module, a_name, shape_str(a->shape), b_name, shape_str(b->shape), rank);
    }
    LoraEdit edit;
    edit.kind = LoraEdit::Kind::kLowRank;
    edit.module = module;
    edit.target = target;
    edit.a = a;
    edit.b = b;
    edit.rank = rank;
    edit.scaling = config_.scaling_of(module);
    edit.embedding = embedding;
    edit.transposed = embedding || config_.fan_in_fan_out;
    uint64_t out_features = 0;
    if (w.shape.size() < 2) {
      fail(
          "{}: module '{}': the model's '{}' is {}; LoRA changes matrices (2-D or convolution "
          "kernels)",
          label, module, target, shape_str(w.shape));
    }
    if (embedding) {
      // W [vocab, dim]; lora_embedding_A [r, vocab], lora_embedding_B [dim, r].
      if (w.shape.size() != 2) mismatch(*a, "a 2-D embedding");
      if (a->shape != std::vector<uint64_t>{r, w.shape[0]}) {
        mismatch(*a, shape_str({r, w.shape[0]}));
      }
      if (b->shape != std::vector<uint64_t>{w.shape[1], r}) {
        mismatch(*b, shape_str({w.shape[1], r}));
      }
      out_features = w.shape[1];
    } else if (w.shape.size() == 2) {
      // W [out, in] (fan_in_fan_out: [in, out]); lora_A [r, in], lora_B [out, r].
      const uint64_t out = config_.fan_in_fan_out ? w.shape[1] : w.shape[0];
      const uint64_t in = config_.fan_in_fan_out ? w.shape[0] : w.shape[1];
      if (a->shape != std::vector<uint64_t>{r, in}) mismatch(*a, shape_str({r, in}));
      if (b->shape != std::vector<uint64_t>{out, r}) mismatch(*b, shape_str({out, r}));
      out_features = out;
    } else {
      // Convolutions: W [out, in, k...]; lora_A [r, in, k...], lora_B [out, r, 1...].
      if (config_.fan_in_fan_out) {
        fail("{}: module '{}': fan_in_fan_out applies to 2-D weights, but '{}' is {}", label,
             module, target, shape_str(w.shape));
      }
      std::vector<uint64_t> want_a = w.shape;
      want_a[0] = r;
      std::vector<uint64_t> want_b(w.shape.size(), 1);
      want_b[0] = w.shape[0];
      want_b[1] = r;
      if (a->shape != want_a) mismatch(*a, shape_str(want_a));
      if (b->shape != want_b) mismatch(*b, shape_str(want_b));
      out_features = w.shape[0];
    }
    if (const TensorInfo* m = part(Role::kMagnitude)) {
      if (!config_.use_dora) {
        fail(
            "{}: module '{}' has a lora_magnitude_vector but adapter_config.json has no "
            "\"use_dora\": true",
            label, module);
      }
      if (m->numel() != out_features) {
        fail(
            "{}: module '{}': lora_magnitude_vector is {} but the model's '{}' is {}, which has "
            "{} output features; the adapter was made for another base model",
            label, module, shape_str(m->shape), target, shape_str(w.shape), out_features);
      }
      edit.magnitude = m;
    } else if (config_.use_dora) {
      fail(
          "{}: module '{}' has no lora_magnitude_vector, but adapter_config.json sets "
          "\"use_dora\": true",
          label, module);
    }
    claim(target, a->name);
    edits.push_back(edit);
    if (const TensorInfo* bias = part(Role::kBias)) {
      if (embedding) fail("{}: module '{}': an embedding has no lora bias", label, module);
      if (!config_.lora_bias) {
        fail("{}: tensor '{}' is a LoRA bias, but adapter_config.json has no \"lora_bias\": true",
             label, bias->name);
      }
      const std::string bias_target = module + ".bias";
      if (!base.find(bias_target).info) {
        fail(
            "{}: module '{}' has a LoRA bias (lora_B.bias) but the model's '{}' has no bias "
            "('{}' is missing); PEFT cannot merge it either",
            label, module, target, bias_target);
      }
      const TensorInfo& wb = base_tensor(bias_target, module, bias->name);
      if (bias->shape != std::vector<uint64_t>{out_features} || wb.shape != bias->shape) {
        fail("{}: module '{}': lora_B.bias is {} but the model's '{}' is {}", label, module,
             shape_str(bias->shape), bias_target, shape_str(wb.shape));
      }
      claim(bias_target, bias->name);
      LoraEdit be;
      be.kind = LoraEdit::Kind::kBias;
      be.module = module;
      be.target = bias_target;
      be.b = bias;
      be.rank = rank;
      be.scaling = edit.scaling;
      edits.push_back(be);
    }
  }
  // target_modules that select no module at all (PEFT: "Target modules ... not found in the base
  // model"); a list may name modules some architectures lack, as PEFT allows.
  std::set<std::string> modules;
  for (const ModelTensor& t : base.tensors()) {
    const std::string& n = t.info->name;
    if (const size_t dot = n.rfind('.'); dot != std::string::npos) modules.insert(n.substr(0, dot));
  }
  auto selects = [&](const auto& match) {
    return std::any_of(modules.begin(), modules.end(), match);
  };
  if (!config_.target_modules.empty()) {
    const bool any = selects([&](const std::string& m) {
      return std::any_of(config_.target_modules.begin(), config_.target_modules.end(),
                         [&](const std::string& t) { return m == t || m.ends_with("." + t); });
    });
    if (!any) {
      fail(
          "{}: target_modules [{}] name no module of the model '{}'; the adapter was made for "
          "another architecture",
          (dir_ / "adapter_config.json").string(), fmt::join(config_.target_modules, ", "), model);
    }
  } else if (config_.target_regex && *config_.target_regex != "all-linear") {
    std::optional<std::regex> re;
    try {
      re.emplace(*config_.target_regex);
    } catch (const std::regex_error&) {
      // A Python-only construct: PEFT's own load would tell; smelt applies the tensors present.
    }
    if (re && !selects([&](const std::string& m) { return std::regex_match(m, *re); })) {
      fail("{}: target_modules '{}' matches no module of the model '{}'",
           (dir_ / "adapter_config.json").string(), *config_.target_regex, model);
    }
  }
  // Every adapter value finite, before any base tensor is read.
  std::vector<float> f32;
  std::vector<char> raw;
  for (const LoraEdit& e : edits) {
    for (const TensorInfo* t : {e.a, e.b, e.magnitude, e.source}) {
      if (!t) continue;
      const uint64_t es = static_cast<uint64_t>(dtype_bits(t->dtype) / 8);
      const uint64_t n = t->numel();
      for (uint64_t first = 0; first < n; first += kScanElements) {
        const uint64_t count = std::min(kScanElements, n - first);
        raw.resize(count * es);
        f32.resize(count);
        file_->read(*t, first * es, raw.data(), count * es);
        kernels::to_f32(t->dtype, raw.data(), f32.data(), count);
        for (uint64_t i = 0; i < count; ++i) {
          if (!std::isfinite(f32[i])) {
            fail("{}: tensor '{}' holds {} (element {}); the adapter is broken", label, t->name,
                 std::isnan(f32[i]) ? "NaN" : "Inf", first + i);
          }
        }
      }
    }
  }
  // In the base model's tensor order.
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < base.tensors().size(); ++i) order[base.tensors()[i].info->name] = i;
  std::sort(edits.begin(), edits.end(), [&](const LoraEdit& x, const LoraEdit& y) {
    return order.at(x.target) < order.at(y.target);
  });
  return edits;
}

}  // namespace smelt::io
