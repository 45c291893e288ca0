// PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors or adapter_model.bin):
// the config and the adapter tensors parsed, checked against a base model and turned into edits of
// the base model's tensors (docs/lora.md, "Baking adapters").
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "smelt/io/tensor_file.h"

namespace smelt::io {

class Model;

// The keys of adapter_config.json that change what baking an adapter computes, with PEFT's
// defaults.
struct LoraConfig {
  std::string peft_type = "LORA";
  int64_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  bool use_dora = false;
  bool fan_in_fan_out = false;
  bool lora_bias = false;
  // Per-module overrides in file order: the first key matching a dotted suffix of the module
  // name wins (PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", module)).
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // target_modules: a list of names, or one regex (matched against whole module names), or
  // "all-linear"; both empty when null.
  std::vector<std::string> target_modules;
  std::optional<std::string> target_regex;
  std::vector<std::string> modules_to_save;

  // The rank of `module`: rank_pattern's value for the first key matching it, else r.
  int64_t rank_of(const std::string& module) const;
  // The alpha of `module`: alpha_pattern's value for the first key matching it, else lora_alpha.
  double alpha_of(const std::string& module) const;
  // alpha / rank, or alpha / sqrt(rank) with use_rslora.
  double scaling_of(const std::string& module) const;
};

// Parses and checks adapter_config.json text: a LORA peft_type (other PEFT methods are refused
// by name), a positive r, finite alphas, patterns that compile, and no option whose adapter
// cannot be baked into plain weights (aLoRA, target_parameters, trainable tokens, ...). Throws
// smelt::Error naming `label` and the key.
LoraConfig parse_lora_config(std::string_view json_text, const std::string& label);

// One tensor of the base model as the adapter changes it.
struct LoraEdit {
  enum class Kind {
    kLowRank,  // W' = W + s·B·A (DoRA: scaled to the magnitude vector)
    kBias,     // b' = b + s·lora_B.bias
    kReplace,  // the adapter's full tensor (modules_to_save, saved biases)
  };
  Kind kind = Kind::kLowRank;
  std::string module;  // the module path, e.g. model.layers.0.self_attn.q_proj
  std::string target;  // the base model's tensor name
  // kLowRank: lora_A and lora_B (or lora_embedding_A/B); kBias: b = lora_B.bias.
  const TensorInfo* a = nullptr;
  const TensorInfo* b = nullptr;
  const TensorInfo* magnitude = nullptr;  // DoRA's lora_magnitude_vector; nullptr without DoRA
  const TensorInfo* source = nullptr;     // kReplace: the adapter's tensor
  // W is stored [in, out] (fan_in_fan_out, GPT-2's Conv1D) or is an embedding [vocab, dim]:
  // the delta is (B·A)ᵀ and DoRA normalises columns of the stored tensor, not rows.
  bool transposed = false;
  bool embedding = false;
  int64_t rank = 0;
  double scaling = 0;
};

// A PEFT LoRA adapter folder opened for reading. Every tensor name is parsed at open; shapes are
// checked against a base model by bind().
class LoraAdapter {
 public:
  // Opens `dir`: adapter_config.json (parse_lora_config) and adapter_model.safetensors, else
  // adapter_model.bin. Throws smelt::Error naming the folder or file when one is missing or bad.
  static std::shared_ptr<const LoraAdapter> open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const LoraConfig& config() const { return config_; }
  // adapter_model.safetensors or adapter_model.bin.
  const TensorFile& file() const { return *file_; }
  const std::filesystem::path& weights_path() const { return file_->path(); }

  // The edits this adapter makes to `base`, one per changed base tensor, in the base model's
  // tensor order. Checks, before reading any tensor data of the base: every module and replaced
  // tensor exists in `base`, ranks agree with the config, every shape fits the base tensor it
  // changes (the error names the module and both shapes), lora_bias has a base bias, no tensor is
  // changed twice; then reads the adapter's tensors once to refuse NaN or Inf. Throws
  // smelt::Error naming the adapter file, the module and the shapes.
  std::vector<LoraEdit> bind(const Model& base) const;

 private:
  // One parsed adapter tensor name.
  struct Entry {
    enum class Role { kA, kB, kBias, kEmbeddingA, kEmbeddingB, kMagnitude, kReplace };
    Role role = Role::kA;
    std::string module;  // for kReplace: the replaced tensor's name
    const TensorInfo* info = nullptr;
  };

  LoraAdapter() = default;
  std::filesystem::path dir_;
  LoraConfig config_;
  std::shared_ptr<TensorFile> file_;
  std::vector<Entry> entries_;
};

}  // namespace smelt::io
