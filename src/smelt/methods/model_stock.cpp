// model_stock: moves from the base towards the average of the other models by a ratio t set by
// the mean angle between their task vectors, over the whole tensor or each row (docs/methods.md).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// mergekit clamps the product of two task vector norms to at least this before dividing.
constexpr double kNormProductFloor = 1e-6;

// t = N·cosθ / (1 + (N−1)·cosθ), where cosθ is the mean over pairs j < k of the clamped cosine
// between task vectors j and k, from their Gram matrix (upper triangle, row by row). Throws when
// the denominator is zero (mergekit writes inf/NaN there); `row` (or -1 for the whole tensor)
// names the place in the message.
double interpolation_ratio(const std::vector<double>& upper, size_t n, const std::string& tensor,
                           int64_t row) {
  std::vector<double> norm2(n);
  size_t s = 0;
  for (size_t j = 0; j < n; ++j) {
    norm2[j] = upper[s];
    s += n - j;
  }
  double cos_sum = 0.0;
  size_t pairs = 0;
  s = 0;
  for (size_t j = 0; j < n; ++j) {
    ++s;  // ⟨d_j, d_j⟩
    for (size_t k = j + 1; k < n; ++k, ++s) {
      const double norm_product = std::max(std::sqrt(norm2[j] * norm2[k]), kNormProductFloor);
      cos_sum += std::clamp(upper[s] / norm_product, -1.0, 1.0);
      ++pairs;
    }
  }
  const double cos_theta = cos_sum / static_cast<double>(pairs);
  const double nd = static_cast<double>(n);
  const double denominator = 1.0 + (nd - 1.0) * cos_theta;
  if (denominator == 0.0) {
    fail(
        "model_stock: the mean cosine between the task vectors of tensor {}{} is -1/(N-1) = {} "
        "with N = {} models, so t = N*cos/(1 + (N-1)*cos) divides by zero (mergekit writes "
        "inf/NaN); the models' task vectors point in opposite directions",
        tensor, row < 0 ? std::string() : fmt::format(" (row {})", row), cos_theta, n);
  }
  return nd * cos_theta / denominator;
}

// ⟨d_j, d_k⟩ for j <= k over m values of each task vector d.
std::vector<double> gram_upper(const std::vector<const float*>& d, size_t m) {
  std::vector<double> upper(d.size() * (d.size() + 1) / 2);
  kernels::gram_upper(d.data(), d.size(), m, upper.data());
  return upper;
}

class CopyMerger : public TensorMerger {
 public:
  void merge(const Chunk& chunk, float* out) override {
    std::memcpy(out, chunk.inputs[0], chunk.n * sizeof(float));
  }
};

class ModelStockMerger : public TensorMerger {
 public:
  // row == 0: one t for the whole tensor; else one t per run of `row` elements.
  ModelStockMerger(const TensorContext& ctx, uint64_t row)
      : name_(ctx.name), base_(static_cast<size_t>(ctx.base)), row_(row) {
    for (size_t i = 0; i < ctx.num_inputs; ++i) {
      if (i != base_) models_.push_back(i);
    }
  }

  int stat_passes() const override { return row_ == 0 ? 1 : 0; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    if (models_.size() == 2) {  // the usual case, without storing the task vectors
      std::vector<double> upper(3);
      kernels::gram2_of_differences(chunk.inputs[models_[0]], chunk.inputs[models_[1]],
                                    chunk.inputs[base_], chunk.n, upper.data());
      partials_.put(chunk.index, std::move(upper));
      return;
    }
    partials_.put(chunk.index, gram_upper(task_vectors(chunk), chunk.n));
  }

  void end_pass(int /*pass*/) override {
    std::vector<double> total;
    for (const auto& [index, upper] : partials_.in_order()) {
      if (total.empty()) total.assign(upper.size(), 0.0);
      for (size_t s = 0; s < upper.size(); ++s) total[s] += upper[s];
    }
    partials_.clear();
    if (total.empty()) total.assign(models_.size() * (models_.size() + 1) / 2, 0.0);
    t_ = interpolation_ratio(total, models_.size(), name_, -1);
  }

  void merge(const Chunk& chunk, float* out) override {
    const size_t n = chunk.n;
    if (row_ == 0 && models_.size() == 2) {
      kernels::blend_mean_pair(chunk.inputs[models_[0]], chunk.inputs[models_[1]], 2.0f,
                               static_cast<float>(t_), chunk.inputs[base_], out, n);
      return;
    }
    // The models' mean, in f32 in input order (mergekit's sum(ws) / len(ws)).
    std::memcpy(out, chunk.inputs[models_[0]], n * sizeof(float));
    for (size_t j = 1; j < models_.size(); ++j) {
      kernels::scale_add(1.0f, chunk.inputs[models_[j]], out, n);
    }
    kernels::divide(out, static_cast<float>(models_.size()), n);
    const float* base = chunk.inputs[base_];
    if (row_ == 0) {
      blend(static_cast<float>(t_), base, out, n);
      return;
    }
    const std::vector<const float*> d = task_vectors(chunk);
    std::vector<const float*> d_row(d.size());
    for (size_t start = 0; start < n; start += row_) {
      for (size_t j = 0; j < d.size(); ++j) d_row[j] = d[j] + start;
      const auto row = static_cast<int64_t>((chunk.offset + start) / row_);
      const double t = interpolation_ratio(gram_upper(d_row, row_), d.size(), name_, row);
      blend(static_cast<float>(t), base + start, out + start, row_);
    }
  }

 private:
  // out = t·mean + (1 − t)·b, with mean given in out.
  static void blend(float t, const float* base, float* out, size_t n) {
    kernels::weighted_pair(t, out, 1.0f - t, base, out, n);
  }

  // The chunk's task vectors x_j − b (f32, per-thread scratch).
  std::vector<const float*> task_vectors(const Chunk& chunk) const {
    thread_local std::vector<float> scratch;
    scratch.resize(models_.size() * chunk.n);
    std::vector<const float*> d(models_.size());
    for (size_t j = 0; j < models_.size(); ++j) {
      float* dj = scratch.data() + j * chunk.n;
      kernels::subtract(chunk.inputs[models_[j]], chunk.inputs[base_], dj, chunk.n);
      d[j] = dj;
    }
    return d;
  }

  std::string name_;
  size_t base_;
  uint64_t row_;
  std::vector<size_t> models_;
  ChunkPartials<std::vector<double>> partials_;
  double t_ = 0.0;
};

class ModelStock : public Method {
 public:
  std::string_view name() const override { return "model_stock"; }
  std::string_view pretty_name() const override { return "Model Stock"; }
  std::string_view reference_url() const override { return "https://arxiv.org/abs/2403.19522"; }
  std::vector<ParamSpec> global_params() const override {
    return {
        {"filter_wise", 0.0, "one ratio per row (along the last dimension) instead of per tensor"}};
  }
  BaseUse base_use() const override { return BaseUse::kRequired; }

  uint64_t chunk_alignment(const TensorContext& ctx) const override {
    const uint64_t row = row_length(ctx);
    return row == 0 ? 1 : row;
  }

  void validate(const TensorContext& ctx) const override {
    if (ctx.base < 0 || static_cast<size_t>(ctx.base) >= ctx.num_inputs) {
      fail(
          "model_stock needs a base model for tensor {}; set base_model to a model that has this "
          "tensor",
          ctx.name);
    }
    if (ctx.num_inputs == 1) return;  // only the base: copied, as mergekit does
    if (ctx.num_inputs < 3) {
      fail(
          "model_stock needs the base and at least 2 other models for tensor {}, got {} models "
          "including the base",
          ctx.name, ctx.num_inputs);
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    if (ctx.num_inputs == 1) return std::make_unique<CopyMerger>();
    return std::make_unique<ModelStockMerger>(ctx, row_length(ctx));
  }

 private:
  // The length of the rows that get their own t (along the last dimension), or 0 for one t over
  // the whole tensor (filter_wise off, or a tensor that is a single row).
  static uint64_t row_length(const TensorContext& ctx) {
    if (ctx.params->global_value("filter_wise") == 0.0) return 0;
    if (ctx.shape.size() <= 1 || ctx.numel == 0) return 0;
    const uint64_t row = ctx.shape.back();
    return row == ctx.numel ? 0 : row;
  }
};

}  // namespace

std::unique_ptr<Method> make_model_stock() { return std::make_unique<ModelStock>(); }

}  // namespace smelt::methods
