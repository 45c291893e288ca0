#include "smelt/moe/gate_vectors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "smelt/error.h"
#include "smelt/eval/eval_model.h"

namespace smelt::moe {
namespace {

// Eigenvalues of a symmetric n × n matrix (row-major, overwritten) by cyclic Jacobi rotations.
std::vector<double> symmetric_eigenvalues(std::vector<double> a, int64_t n) {
  auto at = [&](int64_t i, int64_t j) -> double& { return a[static_cast<size_t>(i * n + j)]; };
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, diag = 0;
    for (int64_t i = 0; i < n; ++i) {
      diag += at(i, i) * at(i, i);
      for (int64_t j = i + 1; j < n; ++j) off += at(i, j) * at(i, j);
    }
    if (off <= 1e-30 * std::max(diag, 1e-300)) break;
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        if (at(p, q) == 0) continue;
        const double theta = (at(q, q) - at(p, p)) / (2 * at(p, q));
        const double t =
            (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = at(k, p), akq = at(k, q);
          at(k, p) = c * akp - s * akq;
          at(k, q) = s * akp + c * akq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = at(p, k), aqk = at(q, k);
          at(p, k) = c * apk - s * aqk;
          at(q, k) = s * apk + c * aqk;
        }
      }
    }
  }
  std::vector<double> ev(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ev[static_cast<size_t>(i)] = at(i, i);
  return ev;
}

}  // namespace

double condition_number(const float* m, int64_t rows, int64_t cols) {
  // σ² are the eigenvalues of the smaller Gram matrix.
  const bool by_rows = rows <= cols;
  const int64_t n = by_rows ? rows : cols, len = by_rows ? cols : rows;
  std::vector<double> g(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < len; ++k) {
        const double a = by_rows ? m[i * cols + k] : m[k * cols + i];
        const double b = by_rows ? m[j * cols + k] : m[k * cols + j];
        s += a * b;
      }
      g[static_cast<size_t>(i * n + j)] = g[static_cast<size_t>(j * n + i)] = s;
    }
  }
  const auto ev = symmetric_eigenvalues(std::move(g), n);
  const double hi = *std::max_element(ev.begin(), ev.end());
  const double lo = *std::min_element(ev.begin(), ev.end());
  if (!(hi > 0)) return std::numeric_limits<double>::infinity();
  if (lo <= hi * 1e-14) return std::numeric_limits<double>::infinity();
  return std::sqrt(hi / lo);
}

GateVectors compute_gate_vectors(const config::MoeConfig& cfg,
                                 const std::filesystem::path& base_folder, size_t threads,
                                 const std::filesystem::path& base_lora) {
  eval::EvalModel base =
      eval::open_eval_model(base_folder.string(), {.threads = threads, .lora_adapter = base_lora});
  const infer::ModelInfo& mi = base.model->info();
  GateVectors g;
  g.layers = mi.n_layer;
  g.experts = static_cast<int64_t>(cfg.experts.size());
  g.hidden = mi.n_embd;
  const int64_t L = g.layers, H = g.hidden;
  g.values.assign(static_cast<size_t>(L * g.experts * H), 0.0f);
  const std::string bos_text =
      base.bos ? base.tokenizer->id_to_token(*base.bos).value_or("") : std::string();
  const std::string& mode = cfg.gate_mode;

  auto tokens_of = [&](const std::string& prompt, const std::string& path) {
    if (base.tokenizer->encode(prompt, {.add_special_tokens = false}).ids.empty())
      fail("{}: the prompt tokenizes to no tokens", path);
    auto ids = base.tokenizer->encode(bos_text + prompt, {.add_special_tokens = false}).ids;
    if (ids.size() > static_cast<size_t>(1 << 20))
      fail("{}: the prompt is too long ({} tokens)", path, ids.size());
    return ids;
  };
  // L × H: the mean over the prompts (hidden modes), or the normalised embedding sum repeated.
  auto vectors = [&](const std::vector<std::string>& prompts, const std::string& path) {
    std::vector<double> acc(static_cast<size_t>(L * H), 0.0);
    if (mode == "cheap_embed") {
      std::vector<double> sum(static_cast<size_t>(H), 0.0);
      for (size_t j = 0; j < prompts.size(); ++j) {
        for (const int32_t t : tokens_of(prompts[j], fmt::format("{}[{}]", path, j))) {
          const auto row = base.model->embedding_row(t);
          for (int64_t i = 0; i < H; ++i)
            sum[static_cast<size_t>(i)] += row[static_cast<size_t>(i)];
        }
      }
      double ss = 0;
      for (const double v : sum) ss += v * v;
      const double norm = std::max(std::sqrt(ss), 1e-8);
      for (int64_t l = 0; l < L; ++l)
        for (int64_t i = 0; i < H; ++i)
          acc[static_cast<size_t>(l * H + i)] = sum[static_cast<size_t>(i)] / norm;
      return acc;
    }
    const bool average = mode == "hidden_avg";
    for (size_t j = 0; j < prompts.size(); ++j) {
      const auto ids = tokens_of(prompts[j], fmt::format("{}[{}]", path, j));
      const auto h = base.model->layer_inputs(ids, average);
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += h[i];
    }
    for (double& v : acc) v /= static_cast<double>(prompts.size());
    return acc;
  };

  for (int64_t e = 0; e < g.experts; ++e) {
    const auto& x = cfg.experts[static_cast<size_t>(e)];
    const std::string path = fmt::format("experts[{}]", e);
    std::vector<double> v = vectors(x.positive_prompts, path + ".positive_prompts");
    if (!x.negative_prompts.empty()) {
      const auto neg = vectors(x.negative_prompts, path + ".negative_prompts");
      for (size_t i = 0; i < v.size(); ++i) v[i] -= neg[i];
    }
    for (int64_t l = 0; l < L; ++l) {
      const double* src = v.data() + static_cast<size_t>(l * H);
      double ss = 0;
      for (int64_t i = 0; i < H; ++i) ss += src[i] * src[i];
      const double norm = std::max(std::sqrt(ss), 1e-8);
      float* row = g.values.data() + static_cast<size_t>((l * g.experts + e) * H);
      for (int64_t i = 0; i < H; ++i) row[i] = static_cast<float>(src[i] / norm);
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    if (condition_number(g.values.data() + static_cast<size_t>(l * g.experts * H), g.experts, H) >
        5)
      g.degenerate_layers.push_back(static_cast<int>(l));
  }
  return g;
}

}  // namespace smelt::moe
