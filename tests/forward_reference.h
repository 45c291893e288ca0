// Shared by the GGUF export and forward pass tests: an independent double-precision forward pass
// of the Hugging Face decoder families (docs/inference.md, "Forward pass") over a model folder's
// weights, and llama.cpp (tests/node/llama_eval.mjs through node-llama-cpp) as a second reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"
#include "test_util.h"

namespace smelt::testing {

inline nlohmann::json read_json_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// A model folder's weights as f32 arrays plus what the reference needs from config.json.
struct TinyLlama {
  nlohmann::json config;
  std::string family;  // "llama", "mistral", "qwen2", "qwen3", "gemma2"
  int hidden, heads, kv_heads, hd, inter, layers, vocab;
  double eps, theta;
  std::map<std::string, std::vector<float>> w;  // HF name -> values (row-major)
  std::map<std::string, std::vector<uint64_t>> shape;
};

// The family of a config.json (architectures[0]).
inline std::string reference_family(const nlohmann::json& config) {
  const std::string arch = config.at("architectures")[0];
  if (arch == "MistralForCausalLM") return "mistral";
  if (arch == "Qwen2ForCausalLM") return "qwen2";
  if (arch == "Qwen3ForCausalLM") return "qwen3";
  if (arch == "Gemma2ForCausalLM") return "gemma2";
  return "llama";
}

// Reads a model folder's tensors as f32 and multiplies every matrix by `scale` (the generator's
// 0.02 weights make attention nearly uniform, which would hide a wrong Q/K layout).
inline TinyLlama load_tiny_llama(const std::filesystem::path& dir, float scale) {
  TinyLlama m;
  m.config = read_json_file(dir / "config.json");
  const auto& c = m.config;
  m.family = reference_family(c);
  m.hidden = c["hidden_size"];
  m.heads = c["num_attention_heads"];
  m.kv_heads = c.value("num_key_value_heads", m.heads);
  m.hd = c.contains("head_dim") ? c["head_dim"].get<int>()
                                : (m.family == "gemma2" ? 256 : m.hidden / m.heads);
  m.inter = c["intermediate_size"];
  m.layers = c["num_hidden_layers"];
  m.vocab = c["vocab_size"];
  m.eps = c.value("rms_norm_eps", 1e-6);
  m.theta = c.value("rope_theta", 10000.0);
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

// RMSNorm with weight w (+ `add`, 1 for gemma2's (1 + w)).
inline std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<float>& w,
                                    double eps, double add = 0.0) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * (w[i] + add);
  return y;
}

struct ReferenceOptions {
  // RoPE on pairs (2i, 2i+1) instead of HF's (i, i + hd/2): what a GGUF written without the Q/K
  // permutation would give, used to show a test can tell them apart.
  bool interleaved_rope = false;
  // The RoPE frequencies (hd/2); empty: theta^(-2i/hd) without scaling.
  std::vector<double> inv_freq;
  // Ignore every sliding window (to show a test's window matters).
  bool no_window = false;
  // gemma2's embedding multiplier; 0: sqrt(hidden_size).
  double embed_scale = 0;
};

// Keys visible to a query in layer `l` (0 = all), from config.json as the families define it.
inline int reference_window(const TinyLlama& m, int l) {
  const auto& c = m.config;
  auto sw = [&](int fallback) {
    return c.contains("sliding_window")
               ? (c["sliding_window"].is_null() ? 0 : c["sliding_window"].get<int>())
               : fallback;
  };
  if (m.family == "mistral") return sw(4096);
  if (m.family == "qwen2" || m.family == "qwen3") {
    if (!c.value("use_sliding_window", false)) return 0;
    return l >= c.value("max_window_layers", 28) ? sw(4096) : 0;
  }
  if (m.family == "gemma2") return l % 2 == 0 ? sw(4096) : 0;
  return 0;
}

// The HF forward pass in double precision: log-softmax of the logits after every token.
inline std::vector<std::vector<double>> reference_log_softmax_all(
    const TinyLlama& m, const std::vector<int>& ids, const ReferenceOptions& opt = {}) {
  const size_t T = ids.size();
  const bool gemma = m.family == "gemma2";
  const double norm_add = gemma ? 1.0 : 0.0;
  auto W = [&](const std::string& n) -> const std::vector<float>& { return m.w.at(n); };
  auto has = [&](const std::string& n) { return m.w.count(n) != 0; };
  std::vector<double> inv = opt.inv_freq;
  if (inv.empty())
    for (int i = 0; i < m.hd / 2; ++i) inv.push_back(std::pow(m.theta, -2.0 * i / m.hd));
  const double scale = gemma ? 1.0 / std::sqrt(m.config.value("query_pre_attn_scalar", 256.0))
                             : 1.0 / std::sqrt(static_cast<double>(m.hd));
  const double attn_cap = gemma ? m.config.value("attn_logit_softcapping", 50.0) : 0.0;
  const double final_cap = gemma ? m.config.value("final_logit_softcapping", 30.0) : 0.0;
  std::vector<std::vector<double>> x(T, std::vector<double>(m.hidden));
  for (size_t t = 0; t < T; ++t)
    for (int i = 0; i < m.hidden; ++i)
      x[t][i] = W("model.embed_tokens.weight")[ids[t] * m.hidden + i] *
                (!gemma                ? 1.0
                 : opt.embed_scale > 0 ? opt.embed_scale
                                       : std::sqrt(static_cast<double>(m.hidden)));
  auto rope = [&](std::vector<double>& v, int n_heads, size_t pos) {
    for (int h = 0; h < n_heads; ++h) {
      double* head = v.data() + h * m.hd;
      for (int i = 0; i < m.hd / 2; ++i) {
        const double angle = static_cast<double>(pos) * inv[i];
        const int a = opt.interleaved_rope ? 2 * i : i;
        const int b = opt.interleaved_rope ? 2 * i + 1 : i + m.hd / 2;
        const double x0 = head[a], x1 = head[b];
        head[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
        head[b] = x1 * std::cos(angle) + x0 * std::sin(angle);
      }
    }
  };
  auto add = [&](std::vector<double>& y, const std::string& bias) {
    if (!has(bias)) return;
    for (size_t i = 0; i < y.size(); ++i) y[i] += W(bias)[i];
  };
  auto head_norm = [&](std::vector<double>& v, int n_heads, const std::string& w) {
    if (!has(w)) return;
    for (int h = 0; h < n_heads; ++h) {
      std::vector<double> one(v.begin() + h * m.hd, v.begin() + (h + 1) * m.hd);
      one = rms_norm(one, W(w), m.eps);
      std::copy(one.begin(), one.end(), v.begin() + h * m.hd);
    }
  };
  for (int l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int window = opt.no_window ? 0 : reference_window(m, l);
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      const auto h = rms_norm(x[t], W(p + "input_layernorm.weight"), m.eps, norm_add);
      q[t] = matvec(W(p + "self_attn.q_proj.weight"), h, m.heads * m.hd);
      k[t] = matvec(W(p + "self_attn.k_proj.weight"), h, m.kv_heads * m.hd);
      v[t] = matvec(W(p + "self_attn.v_proj.weight"), h, m.kv_heads * m.hd);
      add(q[t], p + "self_attn.q_proj.bias");
      add(k[t], p + "self_attn.k_proj.bias");
      add(v[t], p + "self_attn.v_proj.bias");
      head_norm(q[t], m.heads, p + "self_attn.q_norm.weight");
      head_norm(k[t], m.kv_heads, p + "self_attn.k_norm.weight");
      rope(q[t], m.heads, t);
      rope(k[t], m.kv_heads, t);
    }
    std::vector<std::vector<double>> x_next = x;
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> attn(m.heads * m.hd, 0.0);
      for (int h = 0; h < m.heads; ++h) {
        const int g = h / (m.heads / m.kv_heads);
        std::vector<double> s(t + 1, 0.0);
        std::vector<bool> visible(t + 1, true);
        double mx = -1e300;
        for (size_t u = 0; u <= t; ++u) {
          // Key u is visible to query t iff t - window < u (HF's sliding window).
          if (window > 0 && static_cast<long>(u) <= static_cast<long>(t) - window) {
            visible[u] = false;
            continue;
          }
          double d = 0;
          for (int i = 0; i < m.hd; ++i) d += q[t][h * m.hd + i] * k[u][g * m.hd + i];
          s[u] = d * scale;
          if (attn_cap > 0) s[u] = attn_cap * std::tanh(s[u] / attn_cap);
          mx = std::max(mx, s[u]);
        }
        double sum = 0;
        for (size_t u = 0; u <= t; ++u) sum += visible[u] ? (s[u] = std::exp(s[u] - mx)) : 0.0;
        for (size_t u = 0; u <= t; ++u)
          if (visible[u])
            for (int i = 0; i < m.hd; ++i) attn[h * m.hd + i] += s[u] / sum * v[u][g * m.hd + i];
      }
      auto o = matvec(W(p + "self_attn.o_proj.weight"), attn, m.hidden);
      if (gemma) o = rms_norm(o, W(p + "post_attention_layernorm.weight"), m.eps, norm_add);
      for (int i = 0; i < m.hidden; ++i) x_next[t][i] += o[i];
      const auto h2 = rms_norm(
          x_next[t],
          W(p + (gemma ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")),
          m.eps, norm_add);
      const auto gate = matvec(W(p + "mlp.gate_proj.weight"), h2, m.inter);
      const auto up = matvec(W(p + "mlp.up_proj.weight"), h2, m.inter);
      std::vector<double> act(m.inter);
      for (int i = 0; i < m.inter; ++i) {
        const double g = gate[i];
        act[i] = gemma ? 0.5 * g *
                             (1 + std::tanh(std::sqrt(2 / std::numbers::pi) *
                                            (g + 0.044715 * g * g * g))) *
                             up[i]
                       : g / (1.0 + std::exp(-g)) * up[i];
      }
      auto down = matvec(W(p + "mlp.down_proj.weight"), act, m.hidden);
      if (gemma) down = rms_norm(down, W(p + "post_feedforward_layernorm.weight"), m.eps, norm_add);
      for (int i = 0; i < m.hidden; ++i) x_next[t][i] += down[i];
    }
    x = std::move(x_next);
  }
  std::vector<std::vector<double>> out;
  const std::string head = has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
  for (size_t t = 0; t < T; ++t) {
    const auto h = rms_norm(x[t], W("model.norm.weight"), m.eps, norm_add);
    auto logits = matvec(W(head), h, m.vocab);
    if (final_cap > 0)
      for (double& z : logits) z = final_cap * std::tanh(z / final_cap);
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double z : logits) sum += std::exp(z - mx);
    for (double& z : logits) z -= mx + std::log(sum);
    out.push_back(std::move(logits));
  }
  return out;
}

// Log-softmax after the last token.
inline std::vector<double> reference_log_softmax(const TinyLlama& m, const std::vector<int>& ids,
                                                 bool interleaved_rope = false) {
  ReferenceOptions opt;
  opt.interleaved_rope = interleaved_rope;
  return reference_log_softmax_all(m, ids, opt).back();
}

// ---- llama.cpp via node-llama-cpp -------------------------------------------------------------

// Why llama.cpp cannot run here (tests/node/node_modules lacks node-llama-cpp, or no node >= 20);
// empty when it can.
inline std::string node_llama_cpp_missing() {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(SMELT_SOURCE_DIR) / "tests/node/node_modules/node-llama-cpp")) {
    return "tests/node/node_modules is missing (npm ci in tests/node)";
  }
  if (run_command(node_command() +
                  " -e 'process.exit(+process.versions.node.split(\".\")[0] >= 20 ? 0 : 1)'")
          .exit_code != 0) {
    return "node >= 20 is not installed (node-llama-cpp needs it; " + node_command() + ")";
  }
  return "";
}

// Fails the calling test unless node-llama-cpp and node >= 20 are installed (scripts/setup.sh
// installs both), so that CI cannot pass without running llama.cpp. SMELT_SKIP_LLAMA_CPP=1 turns
// the failure into a skip on machines that cannot have them; CI never sets it.
#define REQUIRE_NODE_LLAMA_CPP()                                                          \
  do {                                                                                    \
    if (const std::string why = smelt::testing::node_llama_cpp_missing(); !why.empty()) { \
      const char* opt_out = std::getenv("SMELT_SKIP_LLAMA_CPP");                          \
      if (opt_out && std::string_view(opt_out) == "1") {                                  \
        GTEST_SKIP() << why << " (SMELT_SKIP_LLAMA_CPP=1)";                               \
      }                                                                                   \
      FAIL() << why                                                                       \
             << ": run scripts/setup.sh, or set SMELT_SKIP_LLAMA_CPP=1 to skip the "      \
                "llama.cpp checks";                                                       \
    }                                                                                     \
  } while (0)

// Runs llama.cpp (tests/node/llama_eval.mjs) on `gguf` and returns the next-token log-softmax
// after the last of `ids` (empty, with a test failure, when it cannot).
inline std::vector<double> llama_cpp_log_softmax(const std::filesystem::path& gguf,
                                                 const std::vector<int>& ids,
                                                 const std::filesystem::path& work) {
  namespace fs = std::filesystem;
  const fs::path node_dir = fs::path(SMELT_SOURCE_DIR) / "tests" / "node";
  const fs::path err = work / "stderr.txt";
  auto r =
      run_command("( " + node_command() + " " + quote(node_dir / "llama_eval.mjs") + " " +
                  quote(gguf) + " '" + nlohmann::json(ids).dump() + "' 2>" + quote(err) + " )");
  EXPECT_EQ(r.exit_code, 0) << r.output << read_bytes(err);
  std::vector<double> out;
  try {
    const nlohmann::json parsed = nlohmann::json::parse(r.output);
    for (const auto& v : parsed.at("logits")) out.push_back(v.get<double>());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "llama_eval output is not JSON: " << r.output;
  }
  return out;
}

}  // namespace smelt::testing
