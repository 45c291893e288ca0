// The HF -> GGUF name mapping as data: architectures, dropped tensors, loose tensors and the
// tensors of one layer, each with the architectures that load it.
#include "smelt/io/gguf_names.h"

#include <fmt/format.h>

#include <cstdint>
#include <string_view>

#include "smelt/error.h"
#include "smelt/io/gguf_json.h"

namespace smelt::io {
namespace {

// ---- the tables ---------------------------------------------------------------------------------

// config.json "architectures"[0] -> GGUF architecture.
struct ArchRow {
  std::string_view hf_class, gguf_arch;
};
constexpr ArchRow kArchitectures[] = {
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "llama"},  // llama.cpp runs Mistral as llama
    {"Qwen2ForCausalLM", "qwen2"},
};

// Name endings of tensors llama.cpp's converter drops.
constexpr std::string_view kDroppedSuffixes[] = {
    ".rotary_emb.inv_freq",
    ".attention.masked_bias",
    ".attention.bias",
};

// A mapped name and the architectures whose llama.cpp loader has the tensor.
struct NameRow {
  std::string_view hf, gguf;
  bool llama, qwen2;
};

// Tensors outside the layers: full names.
constexpr NameRow kLooseTensors[] = {
    {"model.embed_tokens.weight", "token_embd.weight", true, true},
    {"model.norm.weight", "output_norm.weight", true, true},
    {"lm_head.weight", "output.weight", true, true},
    {"lm_head.bias", "output.bias", false, true},
};

// Tensors of layer N: "model.layers.N.<hf>.<suffix>" -> "blk.N.<gguf>.<suffix>". Every row has
// a .weight in both architectures; the flags say which loads the .bias.
constexpr NameRow kLayerTensors[] = {
    {"input_layernorm", "attn_norm", false, false},
    {"self_attn.q_proj", "attn_q", true, true},
    {"self_attn.k_proj", "attn_k", true, true},
    {"self_attn.v_proj", "attn_v", true, true},
    {"self_attn.o_proj", "attn_output", true, false},
    {"post_attention_layernorm", "ffn_norm", false, false},
    {"mlp.gate_proj", "ffn_gate", true, false},
    {"mlp.up_proj", "ffn_up", true, false},
    {"mlp.down_proj", "ffn_down", true, false},
};

// ---- lookups ------------------------------------------------------------------------------------

// Parses "model.layers.<N>.<rest>"; false when `name` does not have that form.
bool split_layer_name(std::string_view name, uint64_t& layer, std::string_view& rest) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return false;
  name.remove_prefix(kPrefix.size());
  size_t digits = 0;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') ++digits;
  // A canonical decimal index (no leading zeros, at most 6 digits) followed by '.'.
  if (digits == 0 || digits > 6 || (digits > 1 && name[0] == '0') || digits >= name.size() ||
      name[digits] != '.') {
    return false;
  }
  layer = 0;
  for (size_t i = 0; i < digits; ++i) layer = layer * 10 + static_cast<uint64_t>(name[i] - '0');
  rest = name.substr(digits + 1);
  return true;
}

}  // namespace

std::string gguf_arch_for(const nlohmann::json& config) {
  const nlohmann::json* archs = gguf_json::find(config, "architectures");
  if (!archs || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    fail(
        "config.json has no 'architectures' list; GGUF export supports llama, mistral and qwen2 "
        "models");
  }
  const std::string arch = (*archs)[0].get<std::string>();
  for (const ArchRow& row : kArchitectures) {
    if (arch == row.hf_class) return std::string(row.gguf_arch);
  }
  fail("GGUF export supports llama, mistral and qwen2 models; {} is not supported yet", arch);
}

std::optional<std::string> gguf_tensor_name(const std::string& arch, const std::string& hf_name) {
  if (arch != "llama" && arch != "qwen2") {
    fail("GGUF export: unknown GGUF architecture '{}' (expected llama or qwen2)", arch);
  }
  const bool llama = arch == "llama";
  const std::string_view name = hf_name;
  for (std::string_view dropped : kDroppedSuffixes) {
    if (name.ends_with(dropped)) return std::nullopt;
  }
  for (const NameRow& row : kLooseTensors) {
    if (name == row.hf && (llama ? row.llama : row.qwen2)) return std::string(row.gguf);
  }
  uint64_t layer = 0;
  std::string_view rest;
  if (split_layer_name(name, layer, rest)) {
    for (const NameRow& row : kLayerTensors) {
      if (!rest.starts_with(row.hf) || rest.size() <= row.hf.size() || rest[row.hf.size()] != '.')
        continue;
      const std::string_view suffix = rest.substr(row.hf.size() + 1);
      const bool ok = suffix == "weight" || (suffix == "bias" && (llama ? row.llama : row.qwen2));
      if (ok) return fmt::format("blk.{}.{}.{}", layer, row.gguf, suffix);
    }
  }
  fail("GGUF export: tensor '{}' has no GGUF name in a {} model (llama.cpp would refuse the file)",
       hf_name, arch);
}

}  // namespace smelt::io
