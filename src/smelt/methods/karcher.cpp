// karcher: the Riemannian (Karcher) mean of every input on the unit hypersphere, scaled by the
// inputs' mean norm; each tensor is one flattened vector (docs/methods.md).
//
// The mean direction u starts as a combination of the unit inputs u_i = x_i/r_i and every update
// (u ← cos‖T‖·u + sin‖T‖·T/‖T‖, with T = Σ β_i (u_i − cos θ_i·u)) is again one, so u is tracked as
// its coefficient vector c over the inputs. One statistics pass gathers the Gram matrix
// ⟨x_i, x_j⟩; every inner product the iteration needs is then cᵀG c', so all iterations run on
// N×N numbers without reading the data again, and the merge pass writes Σ k_i x_i.
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

// Symmetric N×N matrix stored in full.
struct Gram {
  size_t n = 0;
  std::vector<double> g;
  double at(size_t i, size_t j) const { return g[i * n + j]; }
  // (G y)_i.
  double row_dot(size_t i, const std::vector<double>& y) const {
    double s = 0.0;
    for (size_t j = 0; j < n; ++j) s += at(i, j) * y[j];
    return s;
  }
  // xᵀ G y.
  double form(const std::vector<double>& x, const std::vector<double>& y) const {
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += x[i] * row_dot(i, y);
    return s;
  }
  double norm(const std::vector<double>& x) const { return std::sqrt(std::max(0.0, form(x, x))); }
};

// The coefficients k_i of the Karcher mean Σ k_i x_i of vectors with Gram matrix `gram`, each
// weighted 1/N (mergekit's algorithm, on coefficient vectors instead of tensors).
std::vector<double> karcher_combination(const Gram& gram, int max_iter, double tol) {
  const size_t n = gram.n;
  const double alpha = 1.0 / static_cast<double>(n);
  std::vector<double> r(n);
  std::vector<size_t> valid;  // inputs with r_i > tol
  for (size_t i = 0; i < n; ++i) {
    r[i] = std::sqrt(std::max(0.0, gram.at(i, i)));
    if (r[i] > tol) valid.push_back(i);
  }
  std::vector<double> c(n, 0.0);
  if (valid.empty()) return c;  // every input (nearly) zero: the result is zero
  // Equal weights renormalised over the valid inputs.
  const double beta = 1.0 / static_cast<double>(valid.size());

  // Initial guess: the normalised mean of the unit vectors (the first one if that is ~0).
  for (size_t i : valid) c[i] = beta / r[i];
  const double norm_u = gram.norm(c);
  if (norm_u < tol) {
    std::fill(c.begin(), c.end(), 0.0);
    c[valid.front()] = 1.0 / r[valid.front()];
  } else {
    for (double& v : c) v /= norm_u;
  }

  std::vector<double> t(n);
  for (int iter = 0; iter < max_iter; ++iter) {
    std::fill(t.begin(), t.end(), 0.0);
    for (size_t i : valid) {
      const double cos_theta = std::clamp(gram.row_dot(i, c) / r[i], -1.0, 1.0);  // ⟨u, u_i⟩
      const double theta = std::acos(cos_theta);
      if (theta < tol) continue;
      const double f = beta * theta / std::sin(theta);
      // T += f · (u_i − cos θ_i · u)
      t[i] += f / r[i];
      for (size_t j = 0; j < n; ++j) t[j] -= f * cos_theta * c[j];
    }
    const double norm_t = gram.norm(t);
    if (norm_t < tol) break;
    const double cos_t = std::cos(norm_t);
    const double sin_t = std::sin(norm_t) / norm_t;
    for (size_t j = 0; j < n; ++j) c[j] = cos_t * c[j] + sin_t * t[j];
    const double norm_c = gram.norm(c);
    if (norm_c > tol) {
      for (double& v : c) v /= norm_c;
    }
  }

  // Scale: the mean norm over all inputs, zero-norm ones included.
  double scale = 0.0;
  for (size_t i = 0; i < n; ++i) scale += alpha * r[i];
  for (double& v : c) v *= scale;
  return c;
}

class CopyMerger : public TensorMerger {
 public:
  void merge(const Chunk& chunk, float* out) override {
    std::memcpy(out, chunk.inputs[0], chunk.n * sizeof(float));
  }
};

class KarcherMerger : public TensorMerger {
 public:
  KarcherMerger(size_t inputs, int max_iter, double tol)
      : inputs_(inputs), max_iter_(max_iter), tol_(tol) {}

  int stat_passes() const override { return 1; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    std::vector<double> upper(inputs_ * (inputs_ + 1) / 2);  // ⟨x_i, x_j⟩ for i <= j, row by row
    kernels::gram_upper(chunk.inputs, inputs_, chunk.n, upper.data());
    partials_.put(chunk.index, upper);
  }

  void end_pass(int /*pass*/) override {
    const size_t n = inputs_;
    Gram gram{n, std::vector<double>(n * n, 0.0)};
    for (const auto& [index, upper] : partials_.in_order()) {
      size_t s = 0;
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = i; j < n; ++j) gram.g[i * n + j] += upper[s++];
      }
    }
    partials_.clear();
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < i; ++j) gram.g[i * n + j] = gram.g[j * n + i];
    }
    const std::vector<double> k = karcher_combination(gram, max_iter_, tol_);
    coefficients_.assign(k.begin(), k.end());
  }

  void merge(const Chunk& chunk, float* out) override {
    kernels::weighted_sum(chunk.inputs, coefficients_.data(), inputs_, false, 1.0f, out, chunk.n);
  }

 private:
  size_t inputs_;
  int max_iter_;
  double tol_;
  ChunkPartials<std::vector<double>> partials_;
  std::vector<float> coefficients_;
};

class Karcher : public Method {
 public:
  std::string_view name() const override { return "karcher"; }
  std::string_view pretty_name() const override { return "Karcher Mean"; }
  std::string_view reference_url() const override {
    return "https://en.wikipedia.org/wiki/Karcher_mean";
  }
  std::vector<ParamSpec> global_params() const override {
    return {
        {"max_iter", 10.0, "maximum number of iterations"},
        {"tol", 1e-5, "convergence tolerance (also the smallest norm an input may have to count)"},
    };
  }
  BaseUse base_use() const override { return BaseUse::kNone; }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs == 0) fail("karcher: no model has tensor {}", ctx.name);
    const double max_iter = ctx.params->global_value("max_iter");
    if (!(max_iter >= 0.0 && max_iter <= 1e6 && max_iter == std::floor(max_iter))) {
      fail("karcher: max_iter {} for tensor {} must be a whole number from 0 to 1000000", max_iter,
           ctx.name);
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    if (ctx.num_inputs == 1) return std::make_unique<CopyMerger>();
    return std::make_unique<KarcherMerger>(ctx.num_inputs,
                                           static_cast<int>(ctx.params->global_value("max_iter")),
                                           ctx.params->global_value("tol"));
  }
};

}  // namespace

std::unique_ptr<Method> make_karcher() { return std::make_unique<Karcher>(); }

}  // namespace smelt::methods
