// HF llama / mistral / qwen2 / qwen3 / gemma2 -> GGUF: the Q/K permutation, gemma2's norm offset,
// tensor types and the metadata KVs (assembled from gguf_hparams and gguf_tokenizer).
#include "smelt/io/gguf_export.h"

#include <string_view>

#include "smelt/error.h"
#include "smelt/io/gguf_json.h"

namespace smelt::io {
namespace fs = std::filesystem;
using gguf_json::find;
using nlohmann::json;

namespace {

bool ends_with(std::string_view s, std::string_view suffix) { return s.ends_with(suffix); }

}  // namespace

int64_t gguf_qk_permute_heads(const std::string& arch, const std::string& hf_name, uint64_t rows,
                              const json& config) {
  if (arch != "llama") return 0;
  const bool q =
      ends_with(hf_name, "self_attn.q_proj.weight") || ends_with(hf_name, "self_attn.q_proj.bias");
  const bool k =
      ends_with(hf_name, "self_attn.k_proj.weight") || ends_with(hf_name, "self_attn.k_proj.bias");
  if (!q && !k) return 0;
  // The head counts come from config.json; a wrong one would permute rows across heads and
  // write a corrupt file, so they are checked against the tensor (docs/gguf.md, "Q/K
  // permutation").
  const char* heads_key =
      q || !find(config, "num_key_value_heads") ? "num_attention_heads" : "num_key_value_heads";
  const uint32_t heads = q ? gguf_head_count(config) : gguf_head_count_kv(config);
  const char* hd_key = find(config, "head_dim") ? "head_dim" : "hidden_size";
  const uint32_t hd = gguf_head_dim(config);
  if (hd % 2 != 0) {
    fail(
        "config.json: head dimension {} (from '{}') is odd; tensor '{}' needs an even one for "
        "llama.cpp's Q/K row order",
        hd, hd_key, hf_name);
  }
  if (rows != uint64_t{heads} * hd) {
    fail(
        "tensor '{}' has {} rows, but config.json's '{}' = {} heads of dimension {} (from '{}') "
        "make {}; fix '{}' in config.json",
        hf_name, rows, heads_key, heads, hd, hd_key, uint64_t{heads} * hd, heads_key);
  }
  return heads;
}

float gguf_value_offset(const std::string& arch, const std::string& hf_name) {
  return arch == "gemma2" && ends_with(hf_name, "norm.weight") ? 1.0f : 0.0f;
}

uint64_t gguf_qk_source_row(uint64_t out_row, uint64_t rows, int64_t n_head) {
  if (n_head <= 0 || rows == 0 || rows % (2 * static_cast<uint64_t>(n_head)) != 0) {
    fail("GGUF export: cannot permute {} rows into {} heads of an even size", rows, n_head);
  }
  if (out_row >= rows) fail("GGUF export: row {} is out of range ({} rows)", out_row, rows);
  const uint64_t hd = rows / static_cast<uint64_t>(n_head);
  const uint64_t h = out_row / hd, within = out_row % hd;
  const uint64_t i = within / 2, j = within % 2;
  return h * hd + j * (hd / 2) + i;
}

kernels::GgmlType gguf_default_type(const std::string& gguf_name,
                                    const std::vector<uint64_t>& shape, DType stored) {
  // Norms and MoE routers stay F32, as llama.cpp's converter keeps them.
  if (shape.size() <= 1 || ends_with(gguf_name, "_norm.weight") ||
      ends_with(gguf_name, "ffn_gate_inp.weight"))
    return kernels::GgmlType::kF32;
  return stored == DType::kBF16 ? kernels::GgmlType::kBF16 : kernels::GgmlType::kF16;
}

std::optional<uint32_t> gguf_file_type_for(kernels::GgmlType type) {
  using T = kernels::GgmlType;
  switch (type) {
    case T::kF32:
      return 0;
    case T::kF16:
      return 1;
    case T::kQ4_0:
      return 2;
    case T::kQ4_1:
      return 3;
    case T::kQ8_0:
      return 7;
    case T::kQ5_0:
      return 8;
    case T::kQ5_1:
      return 9;
    case T::kQ2_K:
      return 10;
    case T::kQ3_K:
      return 11;
    case T::kQ4_K:
      return 14;
    case T::kQ5_K:
      return 16;
    case T::kQ6_K:
      return 18;
    case T::kBF16:
      return 32;
    default:
      return std::nullopt;
  }
}

std::vector<GgufKv> gguf_export_kvs(const fs::path& model_dir, const json& config,
                                    const std::string& name, int64_t block_count_override) {
  const std::string arch = gguf_arch_for(config);
  std::vector<GgufKv> kvs;
  gguf_set_kv(kvs, "general.architecture", GgufValue::of(arch));
  if (!name.empty()) gguf_set_kv(kvs, "general.name", GgufValue::of(name));
  gguf_set_kv(kvs, "general.quantization_version", GgufValue::of(uint32_t{2}));
  gguf_add_hparam_kvs(kvs, arch, config, block_count_override);
  gguf_add_tokenizer_kvs(kvs, model_dir, config, gguf_vocab_size(config));
  // Gemma's SentencePiece tokenizer adds no space prefix; the converter always says so
  // (docs/gguf.md, "Gemma2").
  if (arch == "gemma2") gguf_set_kv(kvs, "tokenizer.ggml.add_space_prefix", GgufValue::of(false));
  return kvs;
}

}  // namespace smelt::io
