// config.json -> <arch>.* GGUF hyper-parameters, RoPE scaling and llama3's rope_freqs.
#include "smelt/io/gguf_hparams.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <numbers>

#include "smelt/error.h"
#include "smelt/io/gguf_json.h"
#include "smelt/io/gguf_names.h"

namespace smelt::io {
using gguf_json::find;
using gguf_json::optional_u32;
using gguf_json::positive_f32;
using gguf_json::positive_u32;
using gguf_json::required_u32;
using nlohmann::json;

namespace {

// The RoPE parameters: "rope_parameters" (transformers >= 5) or "rope_scaling"; may be empty.
json rope_params(const json& config) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (const json* v = find(config, key)) {
      if (!v->is_object()) fail("config.json: '{}' must be an object (it is {})", key, v->dump());
      return *v;
    }
  }
  return json::object();
}

std::string rope_type(const json& params) {
  for (const char* key : {"rope_type", "type"}) {
    if (const json* v = find(params, key)) {
      if (!v->is_string())
        fail("config.json: rope '{}' must be a string (it is {})", key, v->dump());
      return v->get<std::string>();
    }
  }
  return "";
}

float rope_theta(const json& config) {
  if (const json* v = find(config, "rope_theta")) return positive_f32(*v, "rope_theta");
  if (const json* v = find(rope_params(config), "rope_theta"))
    return positive_f32(*v, "rope_theta");
  return 10000.0f;
}

// Gemma2's config (transformers' Gemma2Config) has other defaults than llama's.
bool is_gemma2(const json& config) {
  const json* archs = find(config, "architectures");
  if (archs && archs->is_array() && !archs->empty() && (*archs)[0] == "Gemma2ForCausalLM")
    return true;
  const json* type = find(config, "model_type");
  return type && *type == "gemma2";
}

// A config value that must be a positive number: `fallback` when the key is absent, an error
// when it is null (llama.cpp has no way to turn the feature off).
float positive_or_default(const json& config, const char* key, float fallback) {
  if (config.contains(key) && config[key].is_null()) {
    fail(
        "config.json: '{}' is null; llama.cpp's gemma2 always applies it, so GGUF export needs a "
        "number",
        key);
  }
  const json* v = find(config, key);
  return v ? positive_f32(*v, key) : fallback;
}

}  // namespace

uint32_t gguf_head_count(const json& config) { return required_u32(config, "num_attention_heads"); }

uint32_t gguf_head_count_kv(const json& config) {
  return optional_u32(config, "num_key_value_heads").value_or(gguf_head_count(config));
}

uint32_t gguf_head_dim(const json& config) {
  if (auto hd = optional_u32(config, "head_dim")) return *hd;
  if (is_gemma2(config)) return 256;  // Gemma2Config's default
  const uint32_t hidden = required_u32(config, "hidden_size");
  const uint32_t heads = gguf_head_count(config);
  if (hidden % heads != 0) {
    fail("config.json: hidden_size {} is not a multiple of num_attention_heads {}", hidden, heads);
  }
  return hidden / heads;
}

uint32_t gguf_vocab_size(const json& config) {
  const uint32_t vocab_size = required_u32(config, "vocab_size");
  if (vocab_size > kGgufMaxArrayElements) {
    fail("config.json: vocab_size {} exceeds the {} tokens a GGUF array can hold", vocab_size,
         kGgufMaxArrayElements);
  }
  return vocab_size;
}

void gguf_add_hparam_kvs(std::vector<GgufKv>& kvs, const std::string& arch, const json& config,
                         int64_t block_count_override) {
  auto set_arch = [&](const std::string& key, GgufValue v) {
    gguf_set_kv(kvs, arch + "." + key, std::move(v));
  };
  std::optional<uint32_t> context;
  for (const char* key : {"max_position_embeddings", "n_ctx", "n_positions", "max_length",
                          "max_sequence_length", "model_max_length"}) {
    if ((context = optional_u32(config, key))) break;
  }
  if (!context) fail("config.json: 'max_position_embeddings' is missing; GGUF export needs it");
  const uint32_t hidden = required_u32(config, "hidden_size");
  uint32_t blocks = required_u32(config, "num_hidden_layers");
  if (block_count_override != -1) {
    if (block_count_override <= 0 || block_count_override > std::numeric_limits<uint32_t>::max()) {
      fail("GGUF export: block count {} is not a positive layer count", block_count_override);
    }
    blocks = static_cast<uint32_t>(block_count_override);
  }
  const uint32_t heads = gguf_head_count(config);
  const uint32_t heads_kv = gguf_head_count_kv(config);
  if (heads % heads_kv != 0) {
    fail("config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}", heads,
         heads_kv);
  }
  const json* eps = find(config, "rms_norm_eps");
  if (!eps) fail("config.json: 'rms_norm_eps' is missing; GGUF export needs it");
  const uint32_t vocab_size = gguf_vocab_size(config);

  set_arch("context_length", GgufValue::of(*context));
  set_arch("embedding_length", GgufValue::of(hidden));
  set_arch("block_count", GgufValue::of(blocks));
  set_arch("feed_forward_length", GgufValue::of(required_u32(config, "intermediate_size")));
  // Mixtral (num_local_experts) and Qwen2-MoE (num_experts): experts per layer and per token;
  // Qwen2-MoE's expert and shared-expert widths.
  std::optional<uint32_t> experts = optional_u32(config, "num_local_experts");
  if (!experts) experts = optional_u32(config, "num_experts");
  if (experts) {
    const uint32_t used = optional_u32(config, "num_experts_per_tok").value_or(2);
    if (used == 0 || used > *experts)
      fail("config.json: num_experts_per_tok {} must be 1 to num_local_experts {}", used, *experts);
    set_arch("expert_count", GgufValue::of(*experts));
    set_arch("expert_used_count", GgufValue::of(used));
    if (auto w = optional_u32(config, "moe_intermediate_size"))
      set_arch("expert_feed_forward_length", GgufValue::of(*w));
    if (auto w = optional_u32(config, "shared_expert_intermediate_size"))
      set_arch("expert_shared_feed_forward_length", GgufValue::of(*w));
  }
  set_arch("attention.head_count", GgufValue::of(heads));
  set_arch("attention.head_count_kv", GgufValue::of(heads_kv));
  set_arch("attention.layer_norm_rms_epsilon", GgufValue::of(positive_f32(*eps, "rms_norm_eps")));
  set_arch("rope.freq_base", GgufValue::of(rope_theta(config)));
  const uint32_t hd = gguf_head_dim(config);
  if (hd % 2 != 0) fail("config.json: head dimension {} is odd; RoPE needs pairs", hd);
  set_arch("rope.dimension_count", GgufValue::of(hd));
  set_arch("vocab_size", GgufValue::of(vocab_size));
  if (find(config, "head_dim") || arch == "gemma2") {
    set_arch("attention.key_length", GgufValue::of(hd));
    set_arch("attention.value_length", GgufValue::of(hd));
  }
  if (arch == "gemma2") {
    // Soft-capping and the sliding window, with Gemma2Config's defaults (docs/gguf.md,
    // "Gemma2").
    set_arch("attn_logit_softcapping",
             GgufValue::of(positive_or_default(config, "attn_logit_softcapping", 50.0f)));
    set_arch("final_logit_softcapping",
             GgufValue::of(positive_or_default(config, "final_logit_softcapping", 30.0f)));
    if (config.contains("sliding_window") && config["sliding_window"].is_null()) {
      fail(
          "config.json: 'sliding_window' is null; llama.cpp's gemma2 always slides its even "
          "layers, so GGUF export needs a window");
    }
    set_arch("attention.sliding_window",
             GgufValue::of(optional_u32(config, "sliding_window").value_or(4096)));
    // llama.cpp has no key for the query scale: it uses 1/sqrt(head_dim), or
    // 1/sqrt(hidden/heads) for a 46-layer model (Gemma 2 27B). A config whose
    // query_pre_attn_scalar differs would run with another attention scale.
    const float scalar = positive_or_default(config, "query_pre_attn_scalar", 256.0f);
    const uint32_t used = blocks == 46 ? hidden / heads : hd;
    if (scalar != static_cast<float>(used)) {
      fail(
          "config.json: query_pre_attn_scalar {} is not the {} llama.cpp's gemma2 uses for a "
          "{}-layer model (head_dim, or hidden_size / num_attention_heads with 46 layers); the "
          "export would change the attention scale",
          scalar, used, blocks);
    }
  }

  // RoPE scaling (what the converter writes; llama3 needs the rope_freqs tensor instead).
  const json params = rope_params(config);
  std::string scaling = rope_type(params);
  std::transform(scaling.begin(), scaling.end(), scaling.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const json* factor = find(params, "factor");
  if (scaling == "llama3" && arch != "llama") {
    fail("config.json: llama3 RoPE scaling is not supported for GGUF export of {} models", arch);
  }
  if (scaling.empty() || scaling == "default" || scaling == "llama3" || scaling == "dynamic") {
    // Nothing to write: plain RoPE, llama3 (rope_freqs.weight, see gguf_rope_freqs) or dynamic
    // NTK (which the converter also leaves out; it only changes contexts past the trained one).
  } else if ((scaling == "linear" || scaling == "yarn") && factor) {
    set_arch("rope.scaling.type", GgufValue::of(scaling));
    set_arch("rope.scaling.factor", GgufValue::of(positive_f32(*factor, "rope_scaling.factor")));
    if (scaling == "yarn") {
      const json* orig = find(params, "original_max_position_embeddings");
      if (!orig) orig = find(config, "original_max_position_embeddings");
      if (!orig) fail("config.json: yarn RoPE scaling needs original_max_position_embeddings");
      set_arch("rope.scaling.original_context_length",
               GgufValue::of(positive_u32(*orig, "original_max_position_embeddings")));
      const std::pair<const char*, const char*> kYarn[] = {
          {"extrapolation_factor", "rope.scaling.yarn_ext_factor"},
          {"attention_factor", "rope.scaling.yarn_attn_factor"},
          {"attn_factor", "rope.scaling.yarn_attn_factor"},
          {"beta_fast", "rope.scaling.yarn_beta_fast"},
          {"beta_slow", "rope.scaling.yarn_beta_slow"},
      };
      for (const auto& [hf, gguf] : kYarn) {
        if (const json* v = find(params, hf)) {
          if (!v->is_number()) fail("config.json: rope_scaling.{} must be a number", hf);
          set_arch(gguf, GgufValue::of(v->get<float>()));
        }
      }
    }
  } else if (scaling != "linear" && scaling != "yarn") {
    fail("config.json: RoPE scaling type '{}' is not supported for GGUF export", scaling);
  }
}

std::optional<std::vector<float>> gguf_rope_freqs(const json& config) {
  const json params = rope_params(config);
  std::string type = rope_type(params);
  std::transform(type.begin(), type.end(), type.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (type != "llama3") return std::nullopt;
  // Only llama.cpp's llama graph applies rope_freqs; any other architecture would refuse the
  // file for an unused tensor.
  if (const std::string arch = gguf_arch_for(config); arch != "llama") {
    fail("config.json: llama3 RoPE scaling is not supported for GGUF export of {} models", arch);
  }
  auto number = [&](const char* key, double fallback) {
    const json* v = find(params, key);
    return v ? static_cast<double>(positive_f32(*v, key)) : fallback;
  };
  const double base = rope_theta(config);
  const uint32_t dim = gguf_head_dim(config);
  const double factor = number("factor", 8.0);
  const double low = number("low_freq_factor", 1.0);
  const double high = number("high_freq_factor", 4.0);
  // The converter's L: rope_scaling's original_max_position_embeddings, else the top-level key,
  // else 8192 (docs/gguf.md, "Hyper-parameters").
  const json* top = find(config, "original_max_position_embeddings");
  const double old_ctx = number(
      "original_max_position_embeddings",
      top ? static_cast<double>(positive_f32(*top, "original_max_position_embeddings")) : 8192.0);
  const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
  std::vector<float> out;
  for (uint32_t k = 0; k < dim; k += 2) {
    // As the converter: freq = 1 / base^(k/dim) in f32, then the wavelength bands.
    const float freq =
        1.0f / std::pow(static_cast<float>(base), static_cast<float>(k) / static_cast<float>(dim));
    const double wavelen = 2 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(static_cast<float>(factor));
    } else {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      out.push_back(static_cast<float>(1.0 / ((1 - smooth) / factor + smooth)));
    }
  }
  return out;
}

}  // namespace smelt::io
