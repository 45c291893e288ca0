// multislerp: weighted barycentric interpolation of several models on the hypersphere, with an
// optional base whose task vectors are interpolated instead (docs/methods.md).
//
// Every vector the algorithm builds (the unit inputs, their weighted mean, the tangent vectors,
// the result) is a linear combination of the input vectors v_i, so one statistics pass gathers
// the Gram matrix ⟨v_i, v_j⟩ and the whole algorithm then runs on K×K numbers; the merge pass
// writes the resulting combination Σ k_i v_i.
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// The models that are interpolated: every input except the base, in input order.
std::vector<size_t> interpolated_inputs(const TensorContext& ctx) {
  std::vector<size_t> models;
  for (size_t i = 0; i < ctx.num_inputs; ++i) {
    if (static_cast<int>(i) != ctx.base) models.push_back(i);
  }
  return models;
}

std::vector<double> read_weights(const TensorContext& ctx, const std::vector<size_t>& models) {
  std::vector<double> weights;
  for (size_t i : models) {
    const std::optional<double> w = ctx.params->model_value(i, "weight");
    if (!w) {
      fail(
          "multislerp: model {} has no weight for tensor {}; give every model except the base a "
          "weight",
          i, ctx.name);
    }
    weights.push_back(*w);
  }
  return weights;
}

double sum(const std::vector<double>& values) {
  double s = 0.0;
  for (double v : values) s += v;
  return s;
}

// Symmetric K×K matrix stored in full.
struct Gram {
  size_t k = 0;
  std::vector<double> g;
  double at(size_t i, size_t j) const { return g[i * k + j]; }
  // xᵀ G y.
  double form(const std::vector<double>& x, const std::vector<double>& y) const {
    double s = 0.0;
    for (size_t i = 0; i < k; ++i) {
      double row = 0.0;
      for (size_t j = 0; j < k; ++j) row += at(i, j) * y[j];
      s += x[i] * row;
    }
    return s;
  }
};

class CopyMerger : public TensorMerger {
 public:
  explicit CopyMerger(size_t input) : input_(input) {}
  void merge(const Chunk& chunk, float* out) override {
    std::memcpy(out, chunk.inputs[input_], chunk.n * sizeof(float));
  }

 private:
  size_t input_;
};

class MultislerpMerger : public TensorMerger {
 public:
  MultislerpMerger(const TensorContext& ctx, std::vector<size_t> models,
                   std::vector<double> weights, double eps)
      : name_(ctx.name),
        base_(ctx.base),
        models_(std::move(models)),
        weights_(std::move(weights)),
        eps_(eps) {}

  int stat_passes() const override { return 1; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    const size_t k = models_.size();
    const std::vector<const float*> v = vectors(chunk);
    std::vector<double> upper(k * (k + 1) / 2);  // ⟨v_i, v_j⟩ for i <= j, row by row
    kernels::gram_upper(v.data(), k, chunk.n, upper.data());
    partials_.put(chunk.index, upper);
  }

  void end_pass(int /*pass*/) override {
    const size_t k = models_.size();
    Gram gram{k, std::vector<double>(k * k, 0.0)};
    for (const auto& [index, upper] : partials_.in_order()) {
      size_t s = 0;
      for (size_t i = 0; i < k; ++i) {
        for (size_t j = i; j < k; ++j) gram.g[i * k + j] += upper[s++];
      }
    }
    partials_.clear();
    for (size_t i = 0; i < k; ++i) {
      for (size_t j = 0; j < i; ++j) gram.g[i * k + j] = gram.g[j * k + i];
    }
    const std::vector<double> c = combination(gram);
    coefficients_.assign(c.begin(), c.end());
    if (base_ >= 0) coefficients_.push_back(1.0f);  // the weight of b in merge
  }

  void merge(const Chunk& chunk, float* out) override {
    const size_t n = chunk.n;
    std::vector<const float*> v = vectors(chunk);
    if (base_ >= 0) v.push_back(chunk.inputs[base_]);  // + b, weight 1 (exact 1·b)
    kernels::weighted_sum(v.data(), coefficients_.data(), v.size(), false, 1.0f, out, n);
  }

 private:
  // The coefficients k_i of the result Σ k_i v_i, from the Gram matrix of the v_i.
  std::vector<double> combination(const Gram& gram) const {
    const size_t k = models_.size();
    const std::vector<double>& w = weights_;
    std::vector<double> r(k);  // ‖v_i‖
    for (size_t i = 0; i < k; ++i) r[i] = std::sqrt(std::max(0.0, gram.at(i, i)));
    // m = Σ w_i u_i with u_i = v_i / (r_i + eps): coefficients a.
    std::vector<double> a(k);
    for (size_t i = 0; i < k; ++i) a[i] = w[i] / (r[i] + eps_);
    const double m_norm = std::sqrt(std::max(0.0, gram.form(a, a)));
    if (m_norm < eps_) {
      // mergekit falls back to the weighted sum for two inputs and gives up otherwise.
      if (k == 2) return w;
      fail(
          "multislerp: the weighted sum of the unit vectors of tensor {} is zero (norm {} < eps "
          "{}): antipodal inputs whose weights ({}) balance out; change the weights",
          name_, m_norm, eps_, fmt::join(w, ", "));
    }
    // m̂ = m / ‖m‖: coefficients mu.
    std::vector<double> mu(k);
    for (size_t i = 0; i < k; ++i) mu[i] = a[i] / m_norm;
    // Tangent vectors τ_i = u_i − ⟨u_i, m̂⟩ m̂; τ = Σ w_i τ_i = m − (Σ w_i ⟨u_i, m̂⟩) m̂.
    double s = 0.0;
    for (size_t i = 0; i < k; ++i) {
      double g_mu = 0.0;
      for (size_t j = 0; j < k; ++j) g_mu += gram.at(i, j) * mu[j];
      s += w[i] * g_mu / (r[i] + eps_);
    }
    std::vector<double> tau(k);
    for (size_t i = 0; i < k; ++i) tau[i] = a[i] - s * mu[i];
    const double n = std::sqrt(std::max(0.0, gram.form(tau, tau))) + eps_;
    // p = m̂ cos n + τ sin(n)/n, scaled by the weighted mean norm Σ w_i r_i.
    double scale = 0.0;
    for (size_t i = 0; i < k; ++i) scale += w[i] * r[i];
    std::vector<double> result(k);
    for (size_t i = 0; i < k; ++i) {
      result[i] = (mu[i] * std::cos(n) + tau[i] * (std::sin(n) / n)) * scale;
    }
    return result;
  }

  // The chunk's vectors v_i: the inputs, or their differences from the base (f32, per-thread
  // scratch).
  std::vector<const float*> vectors(const Chunk& chunk) const {
    std::vector<const float*> v(models_.size());
    if (base_ < 0) {
      for (size_t i = 0; i < models_.size(); ++i) v[i] = chunk.inputs[models_[i]];
      return v;
    }
    thread_local std::vector<float> scratch;
    scratch.resize(models_.size() * chunk.n);
    for (size_t i = 0; i < models_.size(); ++i) {
      float* d = scratch.data() + i * chunk.n;
      kernels::subtract(chunk.inputs[models_[i]], chunk.inputs[base_], d, chunk.n);
      v[i] = d;
    }
    return v;
  }

  std::string name_;
  int base_;
  std::vector<size_t> models_;
  std::vector<double> weights_;  // normalised when normalize_weights
  double eps_;
  ChunkPartials<std::vector<double>> partials_;
  std::vector<float> coefficients_;  // per model, then 1 for b when there is a base
};

class Multislerp : public Method {
 public:
  std::string_view name() const override { return "multislerp"; }
  std::string_view pretty_name() const override { return "Multi-SLERP"; }
  std::string_view reference_url() const override {
    return "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea";
  }
  std::vector<ParamSpec> global_params() const override {
    return {
        {"normalize_weights", 1.0, "divide the weights by their sum"},
        {"eps", 1e-8, "small constant added to norms for numerical stability"},
    };
  }
  std::vector<ParamSpec> model_params() const override {
    return {{"weight", std::nullopt, "the model's weight (not needed for the base model)"}};
  }
  BaseUse base_use() const override { return BaseUse::kOptional; }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs == 0) fail("multislerp: no model has tensor {}", ctx.name);
    const std::vector<size_t> models = interpolated_inputs(ctx);
    if (models.size() <= 1) return;  // the single model (or the base alone) is copied
    const std::vector<double> weights = read_weights(ctx, models);
    // mergekit divides by zero here and writes inf/NaN; smelt refuses instead.
    if (ctx.params->global_value("normalize_weights") != 0.0 && sum(weights) == 0.0) {
      fail(
          "multislerp: the weights of tensor {} sum to zero ({}), so normalize_weights would "
          "divide by zero; change the weights or set normalize_weights: false",
          ctx.name, fmt::join(weights, ", "));
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    std::vector<size_t> models = interpolated_inputs(ctx);
    if (models.empty()) return std::make_unique<CopyMerger>(static_cast<size_t>(ctx.base));
    if (models.size() == 1) return std::make_unique<CopyMerger>(models[0]);
    std::vector<double> weights = read_weights(ctx, models);
    if (ctx.params->global_value("normalize_weights") != 0.0) {
      const double total = sum(weights);
      for (double& w : weights) w /= total;
    }
    return std::make_unique<MultislerpMerger>(ctx, std::move(models), std::move(weights),
                                              ctx.params->global_value("eps"));
  }
};

}  // namespace

std::unique_ptr<Method> make_multislerp() { return std::make_unique<Multislerp>(); }

}  // namespace smelt::methods
