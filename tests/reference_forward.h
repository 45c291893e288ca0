// An independent double-precision forward pass of the Hugging Face causal LMs smelt exports and
// runs (llama, mistral, qwen2, qwen3, gemma2), written from the behaviour docs/gguf.md and
// docs/inference.md ("Forward pass") describe, for tests that compare llama.cpp or smelt's own
// forward pass against it. Slow and simple on purpose: every value in double, no caches, no
// batching. tests/llama_cpp_client.h runs llama.cpp, the other reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"

namespace smelt::testing {

// A model's config and its tensors as f32 (HF names, row-major).
struct TinyModel {
  nlohmann::json config;
  std::string family;  // "llama" (also mistral, qwen2), "qwen3" or "gemma2"
  int hidden = 0, heads = 0, kv_heads = 0, hd = 0, inter = 0, layers = 0, vocab = 0;
  int experts = 0, experts_used = 0;  // Mixtral: num_local_experts, num_experts_per_tok
  // qwen2_moe (experts from num_experts): per-expert width moe_intermediate_size (in `inter`),
  // the shared expert's width, and whether the top-k weights are renormalised (Mixtral: always).
  bool qwen2_moe = false;
  int shared_inter = 0;
  bool norm_topk = true;
  double eps = 0, theta = 0;
  double query_scale = 0;    // multiplies q·k: query_pre_attn_scalar^-0.5 (gemma2), else hd^-0.5
  double attn_softcap = 0;   // gemma2 attn_logit_softcapping; 0 = none
  double final_softcap = 0;  // gemma2 final_logit_softcapping; 0 = none
  // Multiplies the embeddings: gemma2's sqrt(hidden_size) rounded to the config's torch_dtype
  // (HF builds it as a tensor of the activation dtype; llama.cpp uses sqrtf, the same in f32 but
  // not in bf16 when sqrt(hidden_size) is not exact), else 1.
  double embed_scale = 1;
  int sliding_window = 0;  // keys visible to a query: t - W < u <= t; 0 = none
  // The layers the window applies to: gemma2 0, 2, 4, ...; mistral all; qwen2/qwen3 with
  // use_sliding_window those from max_window_layers on.
  std::vector<bool> sliding_layers;
  std::vector<double> inv_freq;  // RoPE inverse frequencies (hd / 2), scaling applied
  std::map<std::string, std::vector<float>> w;  // HF name -> values
  std::map<std::string, std::vector<uint64_t>> shape;
};

// The RoPE parameters of `config`: "rope_parameters" (transformers >= 5) or "rope_scaling";
// null when neither is an object.
inline nlohmann::json reference_rope_params(const nlohmann::json& config) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (config.contains(key) && config[key].is_object()) return config[key];
  }
  return nullptr;
}

// A number of `config`, `fallback` when absent and `if_null` when null (HF's "off").
inline double reference_number(const nlohmann::json& config, const char* key, double fallback,
                               double if_null = 0) {
  if (!config.contains(key)) return fallback;
  return config[key].is_null() ? if_null : config[key].get<double>();
}

// HF's RoPE inverse frequencies for `config` (rope_scaling default, linear or llama3; the
// formulas docs/gguf.md cites, in double).
inline std::vector<double> reference_inv_freq(const nlohmann::json& config, int hd, double theta) {
  std::vector<double> inv(static_cast<size_t>(hd / 2));
  for (int i = 0; i < hd / 2; ++i) inv[i] = std::pow(theta, -2.0 * i / hd);
  const nlohmann::json rs = reference_rope_params(config);
  if (!rs.is_object()) return inv;
  const std::string type = rs.value("rope_type", rs.value("type", std::string()));
  const double factor = rs.value("factor", 1.0);
  if (type == "linear") {
    for (double& f : inv) f /= factor;
  } else if (type == "llama3") {
    const double low = rs.value("low_freq_factor", 1.0), high = rs.value("high_freq_factor", 4.0);
    const double L = rs.value("original_max_position_embeddings",
                              config.value("original_max_position_embeddings", 8192.0));
    for (double& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen < L / high) continue;
      if (wavelen > L / low) {
        f /= factor;
      } else {
        const double s = (L / wavelen - low) / (high - low);
        f = (1 - s) * f / factor + s * f;
      }
    }
  }
  return inv;
}

// Reads a model folder's config.json and tensors (as f32), multiplying every 2-D tensor by
// `scale` (the generator's 0.02 weights make attention nearly uniform, which would hide a wrong
// Q/K layout; `smelt dev make-model --weight-std` is the other way to get sharper weights).
inline TinyModel load_tiny_model(const std::filesystem::path& dir, float scale) {
  TinyModel m;
  {
    std::ifstream in(dir / "config.json");
    m.config = nlohmann::json::parse(in);
  }
  const auto& c = m.config;
  const std::string arch = c.value("architectures", nlohmann::json::array({""}))[0];
  m.family = arch == "Qwen3ForCausalLM"    ? "qwen3"
             : arch == "Gemma2ForCausalLM" ? "gemma2"
                                           : "llama";
  const bool gemma2 = m.family == "gemma2";
  m.hidden = c["hidden_size"];
  m.heads = c["num_attention_heads"];
  m.kv_heads = c.value("num_key_value_heads", m.heads);
  m.hd = c.contains("head_dim") && c["head_dim"].is_number() ? c["head_dim"].get<int>()
         : gemma2                                            ? 256
                                                             : m.hidden / m.heads;
  m.inter = c["intermediate_size"];
  m.layers = c["num_hidden_layers"];
  m.vocab = c["vocab_size"];
  m.eps = c.value("rms_norm_eps", 1e-6);
  if (arch == "MixtralForCausalLM") {
    m.experts = c["num_local_experts"];
    m.experts_used = c.value("num_experts_per_tok", 2);
  } else if (arch == "Qwen2MoeForCausalLM") {
    // Every layer sparse (decoder_sparse_step 1, no mlp_only_layers), as smelt moe writes it.
    m.qwen2_moe = true;
    m.experts = c["num_experts"];
    m.experts_used = c.value("num_experts_per_tok", 2);
    m.inter = c["moe_intermediate_size"];
    m.shared_inter = c["shared_expert_intermediate_size"];
    m.norm_topk = c.value("norm_topk_prob", false);
  }
  const nlohmann::json rope = reference_rope_params(c);
  m.theta = c.contains("rope_theta")                          ? c["rope_theta"].get<double>()
            : rope.is_object() && rope.contains("rope_theta") ? rope["rope_theta"].get<double>()
                                                              : 10000.0;
  m.inv_freq = reference_inv_freq(c, m.hd, m.theta);
  m.query_scale = 1.0 / std::sqrt(gemma2 ? reference_number(c, "query_pre_attn_scalar", 256.0)
                                         : static_cast<double>(m.hd));
  if (gemma2) {
    m.attn_softcap = reference_number(c, "attn_logit_softcapping", 50.0);
    m.final_softcap = reference_number(c, "final_logit_softcapping", 30.0);
    m.sliding_window = static_cast<int>(reference_number(c, "sliding_window", 4096));
    for (int l = 0; l < m.layers; ++l) m.sliding_layers.push_back(l % 2 == 0);
    const float root = std::sqrt(static_cast<float>(m.hidden));
    const auto dtype = parse_torch_dtype(c.value("torch_dtype", "float32"));
    m.embed_scale = root;
    if (dtype && (*dtype == DType::kBF16 || *dtype == DType::kF16)) {
      uint16_t half = 0;
      float back = 0;
      kernels::from_f32(*dtype, &root, &half, 1);
      kernels::to_f32(*dtype, &half, &back, 1);
      m.embed_scale = back;
    }
  } else if (arch == "MistralForCausalLM" || c.value("model_type", "") == "mistral") {
    m.sliding_window = static_cast<int>(reference_number(c, "sliding_window", 4096));
    m.sliding_layers.assign(m.layers, true);
  } else if ((arch == "Qwen2ForCausalLM" || arch == "Qwen2MoeForCausalLM" || m.family == "qwen3") &&
             c.value("use_sliding_window", false)) {
    m.sliding_window = static_cast<int>(reference_number(c, "sliding_window", 4096));
    const int first = c.value("max_window_layers", 28);
    for (int l = 0; l < m.layers; ++l) m.sliding_layers.push_back(l >= first);
  }
  m.sliding_layers.resize(m.layers, false);
  auto model = io::Model::open(dir.string());
  for (const io::ModelTensor& t : model->tensors()) {
    std::vector<char> bytes(t.info->nbytes);
    t.file->read(*t.info, 0, bytes.data(), bytes.size());
    std::vector<float> v(t.info->numel());
    kernels::to_f32(t.info->dtype, bytes.data(), v.data(), v.size());
    if (t.info->shape.size() == 2) {
      for (float& x : v) x *= scale;
    }
    m.w[t.info->name] = std::move(v);
    m.shape[t.info->name] = t.info->shape;
  }
  return m;
}

// Switches that make the reference compute something else on purpose: the result of a known
// mistake (to show a test can tell it apart) or a known deviation of llama.cpp from HF.
struct ReferenceOptions {
  // RoPE on pairs (2i, 2i+1) instead of HF's (i, i + hd/2): a llama GGUF without the Q/K
  // permutation.
  bool interleaved_rope = false;
  // gemma2 norms as w instead of 1 + w: an export that forgot the converter's +1.
  bool gemma_norm_without_one = false;
  bool skip_qk_norm = false;  // qwen3 without q_norm / k_norm
  bool ignore_sliding_window = false;
  bool skip_softcapping = false;   // gemma2 without either soft-capping
  bool skip_rope_scaling = false;  // plain θ^(-2i/d) frequencies
  // llama.cpp's CPU GeGLU looks gelu up in a table indexed by x rounded to F16 and stores the
  // result as F16 (ggml's GGML_GELU_FP16; |x| >= 10 is exact); true reproduces that rounding.
  bool llama_cpp_gelu = false;
  // Called with every position's hidden state entering each layer (layer, positions × hidden).
  std::function<void(int, const std::vector<std::vector<double>>&)> on_layer_input;
};

namespace reference_detail {

inline std::vector<double> matvec(const std::vector<float>& w, const std::vector<double>& x,
                                  int out) {
  const size_t in = x.size();
  std::vector<double> y(static_cast<size_t>(out), 0.0);
  for (int o = 0; o < out; ++o) {
    double s = 0;
    for (size_t i = 0; i < in; ++i) s += static_cast<double>(w[o * in + i]) * x[i];
    y[o] = s;
  }
  return y;
}

// RMSNorm of x[0..n) times w (or 1 + w when `plus_one`, gemma2's convention).
inline void rms_norm_into(const double* x, size_t n, const float* w, double eps, bool plus_one,
                          double* y) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * r * (plus_one ? 1.0 + w[i] : w[i]);
}

inline double round_to_f16(double v) {
  const float f = static_cast<float>(v);
  uint16_t h = 0;
  kernels::from_f32(DType::kF16, &f, &h, 1);
  float back = 0;
  kernels::to_f32(DType::kF16, &h, &back, 1);
  return back;
}

inline double gelu_tanh(double x, bool llama_cpp) {
  auto g = [](double v) {
    return 0.5 * v *
           (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
  };
  if (!llama_cpp) return g(x);
  const float xf = static_cast<float>(x);
  if (xf <= -10.0f) return 0.0;
  if (xf >= 10.0f) return xf;
  return round_to_f16(g(round_to_f16(xf)));
}

}  // namespace reference_detail

// HF's forward pass in double precision: the log-softmax of the next-token logits after every
// position of `ids` (one vector of vocab values per position).
inline std::vector<std::vector<double>> reference_log_softmax_all(
    const TinyModel& m, const std::vector<int>& ids, const ReferenceOptions& opt = {}) {
  using namespace reference_detail;
  const size_t T = ids.size();
  const bool gemma2 = m.family == "gemma2";
  const bool qwen3 = m.family == "qwen3" && !opt.skip_qk_norm;
  const bool plus_one = gemma2 && !opt.gemma_norm_without_one;
  auto W = [&](const std::string& n) -> const std::vector<float>& { return m.w.at(n); };
  auto norm = [&](const std::vector<double>& x, const std::string& name) {
    std::vector<double> y(x.size());
    rms_norm_into(x.data(), x.size(), W(name).data(), m.eps, plus_one, y.data());
    return y;
  };
  const std::vector<double> inv_freq =
      opt.skip_rope_scaling ? reference_inv_freq(nlohmann::json::object(), m.hd, m.theta)
                            : m.inv_freq;
  const double embed_scale = m.embed_scale;
  std::vector<std::vector<double>> x(T, std::vector<double>(m.hidden));
  for (size_t t = 0; t < T; ++t)
    for (int i = 0; i < m.hidden; ++i)
      x[t][i] = W("model.embed_tokens.weight")[ids[t] * m.hidden + i] * embed_scale;
  auto rope = [&](std::vector<double>& v, int n_heads, size_t pos) {
    for (int h = 0; h < n_heads; ++h) {
      double* head = v.data() + h * m.hd;
      for (int i = 0; i < m.hd / 2; ++i) {
        const double angle = static_cast<double>(pos) * inv_freq[i];
        const int a = opt.interleaved_rope ? 2 * i : i;
        const int b = opt.interleaved_rope ? 2 * i + 1 : i + m.hd / 2;
        const double x0 = head[a], x1 = head[b];
        head[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
        head[b] = x1 * std::cos(angle) + x0 * std::sin(angle);
      }
    }
  };
  auto head_norm = [&](std::vector<double>& v, int n_heads, const std::string& name) {
    std::vector<double> out(m.hd);
    for (int h = 0; h < n_heads; ++h) {
      rms_norm_into(v.data() + h * m.hd, m.hd, W(name).data(), m.eps, false, out.data());
      std::copy(out.begin(), out.end(), v.begin() + h * m.hd);
    }
  };
  for (int l = 0; l < m.layers; ++l) {
    if (opt.on_layer_input) opt.on_layer_input(l, x);
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const bool sliding = m.sliding_window > 0 && !opt.ignore_sliding_window && m.sliding_layers[l];
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      const auto h = norm(x[t], p + "input_layernorm.weight");
      q[t] = matvec(W(p + "self_attn.q_proj.weight"), h, m.heads * m.hd);
      k[t] = matvec(W(p + "self_attn.k_proj.weight"), h, m.kv_heads * m.hd);
      v[t] = matvec(W(p + "self_attn.v_proj.weight"), h, m.kv_heads * m.hd);
      for (const char* proj : {"q", "k", "v"}) {
        auto& dst = proj[0] == 'q' ? q[t] : proj[0] == 'k' ? k[t] : v[t];
        const std::string bias = p + "self_attn." + proj + "_proj.bias";
        if (m.w.count(bias)) {
          for (size_t i = 0; i < dst.size(); ++i) dst[i] += W(bias)[i];
        }
      }
      if (qwen3) {
        head_norm(q[t], m.heads, p + "self_attn.q_norm.weight");
        head_norm(k[t], m.kv_heads, p + "self_attn.k_norm.weight");
      }
      rope(q[t], m.heads, t);
      rope(k[t], m.kv_heads, t);
    }
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> attn(m.heads * m.hd, 0.0);
      const size_t first =
          sliding && t + 1 > static_cast<size_t>(m.sliding_window) ? t + 1 - m.sliding_window : 0;
      for (int h = 0; h < m.heads; ++h) {
        const int g = h / (m.heads / m.kv_heads);
        std::vector<double> s(t + 1, 0.0);
        double mx = -1e300;
        for (size_t u = first; u <= t; ++u) {
          double d = 0;
          for (int i = 0; i < m.hd; ++i) d += q[t][h * m.hd + i] * k[u][g * m.hd + i];
          d *= m.query_scale;
          if (m.attn_softcap > 0 && !opt.skip_softcapping)
            d = m.attn_softcap * std::tanh(d / m.attn_softcap);
          s[u] = d;
          mx = std::max(mx, d);
        }
        double sum = 0;
        for (size_t u = first; u <= t; ++u) sum += (s[u] = std::exp(s[u] - mx));
        for (size_t u = first; u <= t; ++u)
          for (int i = 0; i < m.hd; ++i) attn[h * m.hd + i] += s[u] / sum * v[u][g * m.hd + i];
      }
      auto o = matvec(W(p + "self_attn.o_proj.weight"), attn, m.hidden);
      if (m.w.count(p + "self_attn.o_proj.bias")) {
        for (int i = 0; i < m.hidden; ++i) o[i] += W(p + "self_attn.o_proj.bias")[i];
      }
      if (gemma2) o = norm(o, p + "post_attention_layernorm.weight");
      for (int i = 0; i < m.hidden; ++i) x[t][i] += o[i];
      const auto h2 = norm(x[t], p + (gemma2 ? "pre_feedforward_layernorm.weight"
                                             : "post_attention_layernorm.weight"));
      auto mlp = [&](const std::string& gate_name, const std::string& up_name,
                     const std::string& down_name, int width) {
        const auto gate = matvec(W(gate_name), h2, width);
        const auto up = matvec(W(up_name), h2, width);
        std::vector<double> act(width);
        for (int i = 0; i < width; ++i) {
          act[i] = (gemma2 ? gelu_tanh(gate[i], opt.llama_cpp_gelu)
                           : gate[i] / (1.0 + std::exp(-gate[i]))) *
                   up[i];
        }
        return matvec(W(down_name), act, m.hidden);
      };
      std::vector<double> down(m.hidden, 0.0);
      if (m.experts > 0) {
        // Mixtral: softmax over the router's logits, the top k, renormalised weights.
        // qwen2_moe: the same, renormalised only with norm_topk_prob, plus the shared expert
        // times sigmoid(shared_expert_gate · h).
        const std::string moe = p + (m.qwen2_moe ? "mlp." : "block_sparse_moe.");
        const auto r = matvec(W(moe + "gate.weight"), h2, m.experts);
        const double mx = *std::max_element(r.begin(), r.end());
        std::vector<double> prob(m.experts);
        double sum = 0;
        for (int e = 0; e < m.experts; ++e) sum += prob[e] = std::exp(r[e] - mx);
        std::vector<int> order(m.experts);
        for (int e = 0; e < m.experts; ++e) order[e] = e;
        std::stable_sort(order.begin(), order.end(),
                         [&](int a, int b) { return prob[a] > prob[b]; });
        double top = 0;
        for (int k = 0; k < m.experts_used; ++k) top += prob[order[k]] / sum;
        if (!m.norm_topk) top = 1;
        for (int k = 0; k < m.experts_used; ++k) {
          const int e = order[k];
          const std::string x = moe + "experts." + std::to_string(e) + ".";
          const auto y = m.qwen2_moe
                             ? mlp(x + "gate_proj.weight", x + "up_proj.weight",
                                   x + "down_proj.weight", m.inter)
                             : mlp(x + "w1.weight", x + "w3.weight", x + "w2.weight", m.inter);
          for (int i = 0; i < m.hidden; ++i) down[i] += prob[e] / sum / top * y[i];
        }
        if (m.qwen2_moe) {
          const std::string sh = moe + "shared_expert.";
          const auto y = mlp(sh + "gate_proj.weight", sh + "up_proj.weight",
                             sh + "down_proj.weight", m.shared_inter);
          const double g = matvec(W(moe + "shared_expert_gate.weight"), h2, 1)[0];
          const double w = 1.0 / (1.0 + std::exp(-g));
          for (int i = 0; i < m.hidden; ++i) down[i] += w * y[i];
        }
      } else {
        down = mlp(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight",
                   m.inter);
      }
      if (gemma2) down = norm(down, p + "post_feedforward_layernorm.weight");
      for (int i = 0; i < m.hidden; ++i) x[t][i] += down[i];
    }
  }
  const std::string head =
      m.w.count("lm_head.weight") && !gemma2 ? "lm_head.weight" : "model.embed_tokens.weight";
  std::vector<std::vector<double>> out(T);
  for (size_t t = 0; t < T; ++t) {
    const auto h = norm(x[t], "model.norm.weight");
    auto logits = matvec(W(head), h, m.vocab);
    if (m.w.count("lm_head.bias") && head == "lm_head.weight") {
      for (int i = 0; i < m.vocab; ++i) logits[i] += W("lm_head.bias")[i];
    }
    if (m.final_softcap > 0 && !opt.skip_softcapping) {
      for (double& z : logits) z = m.final_softcap * std::tanh(z / m.final_softcap);
    }
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double z : logits) sum += std::exp(z - mx);
    for (double& z : logits) z -= mx + std::log(sum);
    out[t] = std::move(logits);
  }
  return out;
}

// The log-softmax after the last position of `ids` (the llama-only tests' signature).
inline std::vector<double> reference_log_softmax(const TinyModel& m, const std::vector<int>& ids,
                                                 bool interleaved_rope = false) {
  ReferenceOptions opt;
  opt.interleaved_rope = interleaved_rope;
  return reference_log_softmax_all(m, ids, opt).back();
}

}  // namespace smelt::testing
