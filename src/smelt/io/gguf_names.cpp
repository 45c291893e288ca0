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
    {"MixtralForCausalLM", "llama"},  // ... and Mixtral as llama with experts
    {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen2MoeForCausalLM", "qwen2moe"},
    {"Qwen3ForCausalLM", "qwen3"},
    {"Gemma2ForCausalLM", "gemma2"},
};

// GGUF architectures as bits, so that a table row can name the ones that load a tensor.
enum : uint8_t { kLlama = 1, kQwen2 = 2, kQwen3 = 4, kGemma2 = 8, kQwen2Moe = 16, kAll = 31 };

uint8_t arch_bit(const std::string& arch) {
  if (arch == "llama") return kLlama;
  if (arch == "qwen2") return kQwen2;
  if (arch == "qwen2moe") return kQwen2Moe;
  if (arch == "qwen3") return kQwen3;
  if (arch == "gemma2") return kGemma2;
  fail("GGUF export: unknown GGUF architecture '{}' (expected llama, qwen2, qwen3 or gemma2)",
       arch);
}

// Name endings of tensors llama.cpp's converter drops.
constexpr std::string_view kDroppedSuffixes[] = {
    ".rotary_emb.inv_freq",
    ".attention.masked_bias",
    ".attention.bias",
};

// A mapped name, the architectures whose llama.cpp loader has the tensor (`archs`) and, for
// layer tensors, those that also load its .bias (`bias_archs`).
struct NameRow {
  std::string_view hf, gguf;
  uint8_t archs, bias_archs;
};

// Tensors outside the layers: full names. gemma2's loader reuses token_embd for the output, and
// its converter drops lm_head.weight (see gguf_tensor_name).
constexpr NameRow kLooseTensors[] = {
    {"model.embed_tokens.weight", "token_embd.weight", kAll, 0},
    {"model.norm.weight", "output_norm.weight", kAll, 0},
    {"lm_head.weight", "output.weight", kLlama | kQwen2 | kQwen3 | kQwen2Moe, 0},
    {"lm_head.bias", "output.bias", kQwen2, 0},
};

// Tensors of layer N: "model.layers.N.<hf>.<suffix>" -> "blk.N.<gguf>.<suffix>". The first row
// whose hf name and architecture match applies (post_attention_layernorm means different norms
// in llama and gemma2).
constexpr NameRow kLayerTensors[] = {
    {"input_layernorm", "attn_norm", kAll, 0},
    {"self_attn.q_proj", "attn_q", kAll, kLlama | kQwen2 | kQwen2Moe},
    {"self_attn.k_proj", "attn_k", kAll, kLlama | kQwen2 | kQwen2Moe},
    {"self_attn.v_proj", "attn_v", kAll, kLlama | kQwen2 | kQwen2Moe},
    {"self_attn.q_norm", "attn_q_norm", kQwen3, 0},
    {"self_attn.k_norm", "attn_k_norm", kQwen3, 0},
    {"self_attn.o_proj", "attn_output", kAll, kLlama},
    {"post_attention_layernorm", "ffn_norm", kLlama | kQwen2 | kQwen3 | kQwen2Moe, 0},
    {"post_attention_layernorm", "post_attention_norm", kGemma2, 0},
    {"pre_feedforward_layernorm", "ffn_norm", kGemma2, 0},
    {"post_feedforward_layernorm", "post_ffw_norm", kGemma2, 0},
    {"block_sparse_moe.gate", "ffn_gate_inp", kLlama, 0},  // Mixtral's router
    // Qwen2-MoE: the router, the shared expert and its sigmoid gate (1-D in GGUF).
    {"mlp.gate", "ffn_gate_inp", kQwen2Moe, 0},
    {"mlp.shared_expert_gate", "ffn_gate_inp_shexp", kQwen2Moe, 0},
    {"mlp.shared_expert.gate_proj", "ffn_gate_shexp", kQwen2Moe, 0},
    {"mlp.shared_expert.up_proj", "ffn_up_shexp", kQwen2Moe, 0},
    {"mlp.shared_expert.down_proj", "ffn_down_shexp", kQwen2Moe, 0},
    {"mlp.gate_proj", "ffn_gate", kAll, kLlama},
    {"mlp.up_proj", "ffn_up", kAll, kLlama},
    {"mlp.down_proj", "ffn_down", kAll, kLlama},
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

std::optional<GgufExpertSlice> gguf_expert_slice(const std::string& hf_name) {
  uint64_t layer = 0;
  std::string_view rest;
  if (!split_layer_name(hf_name, layer, rest)) return std::nullopt;
  // Mixtral's block_sparse_moe.experts.E.w1|w3|w2, Qwen2-MoE's mlp.experts.E.gate|up|down_proj.
  constexpr std::string_view kMixtral = "block_sparse_moe.experts.", kQwen = "mlp.experts.";
  const bool mixtral = rest.starts_with(kMixtral);
  if (!mixtral && !rest.starts_with(kQwen)) return std::nullopt;
  rest.remove_prefix(mixtral ? kMixtral.size() : kQwen.size());
  size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
  if (digits == 0 || digits > 4 || (digits > 1 && rest[0] == '0')) return std::nullopt;
  int expert = 0;
  for (size_t i = 0; i < digits; ++i) expert = expert * 10 + (rest[i] - '0');
  const std::string_view w = rest.substr(digits);
  const char* packed = w == (mixtral ? ".w1.weight" : ".gate_proj.weight")   ? "ffn_gate_exps"
                       : w == (mixtral ? ".w3.weight" : ".up_proj.weight")   ? "ffn_up_exps"
                       : w == (mixtral ? ".w2.weight" : ".down_proj.weight") ? "ffn_down_exps"
                                                                             : nullptr;
  if (!packed) return std::nullopt;
  return GgufExpertSlice{fmt::format("blk.{}.{}.weight", layer, packed), expert};
}

std::string gguf_arch_for(const nlohmann::json& config) {
  const nlohmann::json* archs = gguf_json::find(config, "architectures");
  if (!archs || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    fail(
        "config.json has no 'architectures' list; GGUF export supports llama, mistral, mixtral, "
        "qwen2, qwen3 and gemma2 models");
  }
  const std::string arch = (*archs)[0].get<std::string>();
  for (const ArchRow& row : kArchitectures) {
    if (arch == row.hf_class) return std::string(row.gguf_arch);
  }
  fail(
      "GGUF export supports llama, mistral, mixtral, qwen2, qwen3 and gemma2 models; {} is not "
      "supported yet",
      arch);
}

std::optional<std::string> gguf_tensor_name(const std::string& arch, const std::string& hf_name) {
  const uint8_t bit = arch_bit(arch);
  const std::string_view name = hf_name;
  for (std::string_view dropped : kDroppedSuffixes) {
    if (name.ends_with(dropped)) return std::nullopt;
  }
  // The converter leaves gemma2's lm_head out: llama.cpp uses the embeddings as the head.
  if (bit == kGemma2 && name == "lm_head.weight") return std::nullopt;
  for (const NameRow& row : kLooseTensors) {
    if (name == row.hf && (row.archs & bit)) return std::string(row.gguf);
  }
  uint64_t layer = 0;
  std::string_view rest;
  if (split_layer_name(name, layer, rest)) {
    for (const NameRow& row : kLayerTensors) {
      if (!(row.archs & bit)) continue;
      if (!rest.starts_with(row.hf) || rest.size() <= row.hf.size() || rest[row.hf.size()] != '.')
        continue;
      const std::string_view suffix = rest.substr(row.hf.size() + 1);
      const bool ok = suffix == "weight" || (suffix == "bias" && (row.bias_archs & bit));
      if (ok) return fmt::format("blk.{}.{}.{}", layer, row.gguf, suffix);
    }
  }
  fail("GGUF export: tensor '{}' has no GGUF name in a {} model (llama.cpp would refuse the file)",
       hf_name, arch);
}

}  // namespace smelt::io
