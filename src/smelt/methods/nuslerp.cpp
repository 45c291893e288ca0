// nuslerp: spherical interpolation between two models (or their task vectors from a base), over
// the whole tensor, each row, or each column (docs/methods.md).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// mergekit's constants: norms are clamped to at least kNormFloor before normalising; where
// |sin θ| < kColinearSin the two vectors are lerped; |w_1 + w_2| < kWeightSumEpsilon gives t = ½.
constexpr double kNormFloor = 1e-7;
constexpr double kColinearSin = 1e-8;
constexpr double kWeightSumEpsilon = 1e-6;

// ‖a‖², ‖c‖² and ⟨a, c⟩ of one pair of vectors.
struct PairStats {
  double aa = 0.0;
  double cc = 0.0;
  double ac = 0.0;
};

// out = ka·a + kc·c: the slerp of a and c at t, with unnormalised a and c (mergekit's form).
struct Coefficients {
  float ka = 0.0f;
  float kc = 0.0f;
};

Coefficients coefficients(double t, const PairStats& s) {
  // ‖a‖·‖c‖ with each norm clamped; as √(‖a‖²‖c‖²) when neither is, so that exactly
  // (anti)parallel vectors such as c = −2a get cos θ = ±1 exactly and take the lerp branch
  // instead of dividing by a sin θ that is only rounding error.
  const double floor2 = kNormFloor * kNormFloor;
  const double norms = s.aa >= floor2 && s.cc >= floor2 ? std::sqrt(s.aa * s.cc)
                                                        : std::max(std::sqrt(s.aa), kNormFloor) *
                                                              std::max(std::sqrt(s.cc), kNormFloor);
  const double theta = std::acos(std::clamp(s.ac / norms, -1.0, 1.0));
  const double sin_theta = std::sin(theta);
  if (std::fabs(sin_theta) < kColinearSin) {
    return {static_cast<float>(1.0 - t), static_cast<float>(t)};
  }
  return {static_cast<float>(std::sin((1.0 - t) * theta) / sin_theta),
          static_cast<float>(std::sin(t * theta) / sin_theta)};
}

// Which vectors of the tensor are interpolated.
enum class Layout {
  kWhole,    // the flattened tensor is one vector
  kRows,     // each run of `length` = shape[-1] consecutive elements (rows of [out, in])
  kColumns,  // element k, k + length, k + 2·length, … for each k < length = numel / shape[0]
             // (dims 0 and −1 transposed: columns of [out, in])
};

struct Geometry {
  Layout layout = Layout::kWhole;
  uint64_t length = 1;
};

Geometry geometry(const TensorContext& ctx, bool row_wise, bool flatten) {
  // A 1-D (or 0-D) tensor is one vector whichever way it is read.
  if (flatten || ctx.numel == 0 || ctx.shape.size() <= 1) return {Layout::kWhole, 1};
  if (!row_wise) {
    const uint64_t row = ctx.shape.back();
    if (row == ctx.numel) return {Layout::kWhole, 1};
    return {Layout::kRows, row};
  }
  const uint64_t columns = ctx.numel / ctx.shape.front();
  if (columns == 1) return {Layout::kWhole, 1};
  return {Layout::kColumns, columns};
}

// Per-column statistics of a tensor seen in row-aligned chunks, folded into the totals strictly
// in chunk order as chunks complete, so the totals are bit-identical for any thread count and
// processing order. A chunk that finishes before its predecessors waits in `pending_`; since the
// executor hands chunks out in index order, only about one per thread ever waits, so memory
// stays O(columns · threads) rather than O(columns · chunks).
class OrderedColumnSums {
 public:
  explicit OrderedColumnSums(size_t width) : total_(width, 0.0) {}

  // Records chunk `index`'s partial sums (width values). Chunk indices are 0, 1, 2, …
  void put(size_t index, std::vector<double> partial) {
    std::lock_guard lock(mutex_);
    pending_.emplace(index, std::move(partial));
    while (!pending_.empty() && pending_.begin()->first == next_) {
      fold(pending_.begin()->second);
      pending_.erase(pending_.begin());
      ++next_;
    }
  }

  // The totals over every chunk put. Call when no put() is running.
  const std::vector<double>& totals() {
    for (const auto& [index, partial] : pending_) fold(partial);  // only if indices had gaps
    pending_.clear();
    return total_;
  }

 private:
  void fold(const std::vector<double>& partial) {
    for (size_t k = 0; k < total_.size(); ++k) total_[k] += partial[k];
  }

  std::mutex mutex_;
  std::vector<double> total_;
  std::map<size_t, std::vector<double>> pending_;
  size_t next_ = 0;
};

class CopyMerger : public TensorMerger {
 public:
  void merge(const Chunk& chunk, float* out) override {
    std::memcpy(out, chunk.inputs[0], chunk.n * sizeof(float));
  }
};

class NuslerpMerger : public TensorMerger {
 public:
  // Interpolates from input `first` (t = 0) to input `second` (t = 1), relative to input `base`
  // when base >= 0.
  NuslerpMerger(Geometry geometry, int base, size_t first, size_t second, double t)
      : geometry_(geometry), base_(base), first_(first), second_(second), t_(t) {
    if (geometry_.layout == Layout::kColumns) {
      column_sums_ = std::make_unique<OrderedColumnSums>(3 * geometry_.length);
    }
  }

  // Rows lie whole in a chunk, so they need no statistics pass.
  int stat_passes() const override { return geometry_.layout == Layout::kRows ? 0 : 1; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    if (geometry_.layout == Layout::kWhole) {
      double g[3];  // {a·a, a·c, c·c}
      if (base_ >= 0) {
        kernels::gram2_of_differences(chunk.inputs[first_], chunk.inputs[second_],
                                      chunk.inputs[base_], chunk.n, g);
      } else {
        const float* v[2] = {chunk.inputs[first_], chunk.inputs[second_]};
        kernels::gram_upper(v, 2, chunk.n, g);
      }
      partials_.put(chunk.index, {g[0], g[2], g[1]});
      return;
    }
    const float* a;
    const float* c;
    vectors(chunk, &a, &c);
    // kColumns: the chunk holds whole rows of `columns` elements; sums run over its rows in order.
    const size_t columns = geometry_.length;
    std::vector<double> partial(3 * columns, 0.0);
    for (size_t row = 0; row < chunk.n / columns; ++row) {
      const float* ar = a + row * columns;
      const float* cr = c + row * columns;
      for (size_t k = 0; k < columns; ++k) {
        const double av = ar[k];
        const double cv = cr[k];
        partial[3 * k] += av * av;
        partial[3 * k + 1] += cv * cv;
        partial[3 * k + 2] += av * cv;
      }
    }
    column_sums_->put(chunk.index, std::move(partial));
  }

  void end_pass(int /*pass*/) override {
    if (geometry_.layout == Layout::kWhole) {
      PairStats total;
      for (const auto& [index, p] : partials_.in_order()) {
        total.aa += p.aa;
        total.cc += p.cc;
        total.ac += p.ac;
      }
      partials_.clear();
      whole_ = coefficients(t_, total);
      return;
    }
    const std::vector<double>& sums = column_sums_->totals();
    column_coefficients_.resize(geometry_.length);
    for (size_t k = 0; k < geometry_.length; ++k) {
      column_coefficients_[k] = coefficients(t_, {sums[3 * k], sums[3 * k + 1], sums[3 * k + 2]});
    }
    column_sums_.reset();
  }

  void merge(const Chunk& chunk, float* out) override {
    const size_t n = chunk.n;
    if (geometry_.layout == Layout::kWhole && base_ >= 0) {
      kernels::weighted_pair_of_differences(whole_.ka, chunk.inputs[first_], whole_.kc,
                                            chunk.inputs[second_], chunk.inputs[base_], out, n);
      return;
    }
    const float* a;
    const float* c;
    vectors(chunk, &a, &c);
    switch (geometry_.layout) {
      case Layout::kWhole:
        kernels::weighted_pair(whole_.ka, a, whole_.kc, c, out, n);
        break;
      case Layout::kRows: {
        const size_t length = geometry_.length;
        for (size_t start = 0; start < n; start += length) {
          const float* ar = a + start;
          const float* cr = c + start;
          const Coefficients k =
              coefficients(t_, {kernels::dot(ar, ar, length), kernels::dot(cr, cr, length),
                                kernels::dot(ar, cr, length)});
          kernels::weighted_pair(k.ka, ar, k.kc, cr, out + start, length);
        }
        break;
      }
      case Layout::kColumns: {
        const size_t columns = geometry_.length;
        for (size_t start = 0; start < n; start += columns) {
          for (size_t k = 0; k < columns; ++k) {
            const Coefficients& kk = column_coefficients_[k];
            out[start + k] = kk.ka * a[start + k] + kk.kc * c[start + k];
          }
        }
        break;
      }
    }
    if (base_ >= 0) kernels::scale_add(1.0f, chunk.inputs[base_], out, n);  // + b (exact 1·b)
  }

 private:
  // The chunk's two vectors: the inputs themselves, or their differences from the base (in f32,
  // in per-thread scratch).
  void vectors(const Chunk& chunk, const float** a, const float** c) const {
    if (base_ < 0) {
      *a = chunk.inputs[first_];
      *c = chunk.inputs[second_];
      return;
    }
    thread_local std::vector<float> scratch;
    scratch.resize(2 * chunk.n);
    kernels::subtract(chunk.inputs[first_], chunk.inputs[base_], scratch.data(), chunk.n);
    kernels::subtract(chunk.inputs[second_], chunk.inputs[base_], scratch.data() + chunk.n,
                      chunk.n);
    *a = scratch.data();
    *c = scratch.data() + chunk.n;
  }

  Geometry geometry_;
  int base_;
  size_t first_;
  size_t second_;
  double t_;
  ChunkPartials<PairStats> partials_;               // kWhole
  Coefficients whole_;                              // kWhole
  std::unique_ptr<OrderedColumnSums> column_sums_;  // kColumns: ‖a‖², ‖c‖², ⟨a, c⟩ per column
  std::vector<Coefficients> column_coefficients_;  // kColumns
};

class Nuslerp : public Method {
 public:
  std::string_view name() const override { return "nuslerp"; }
  std::string_view pretty_name() const override { return "NuSLERP"; }
  std::string_view reference_url() const override { return ""; }  // mergekit gives none
  std::vector<ParamSpec> global_params() const override {
    return {
        {"nuslerp_row_wise", 0.0,
         "interpolate each column (vectors along dim 0) instead of each row; without "
         "nuslerp_flatten: false it has no effect"},
        {"nuslerp_flatten", 1.0, "interpolate the whole tensor as one vector"},
    };
  }
  std::vector<ParamSpec> model_params() const override {
    return {{"weight", std::nullopt,
             "the model's share of the interpolation (t = w_2 / (w_1 + w_2)); not needed for the "
             "base model"}};
  }
  BaseUse base_use() const override { return BaseUse::kOptional; }

  uint64_t chunk_alignment(const TensorContext& ctx) const override {
    const Geometry g = geometry_of(ctx);
    return g.layout == Layout::kWhole ? 1 : g.length;
  }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs == 0) fail("nuslerp: no model has tensor {}", ctx.name);
    if (ctx.num_inputs == 1) return;  // copied, as mergekit does
    if (ctx.base >= 0 && ctx.num_inputs != 3) {
      fail(
          "nuslerp needs exactly two models besides the base for tensor {}, got {} inputs "
          "including the base; the base model can not be one of the two models to merge",
          ctx.name, ctx.num_inputs);
    }
    if (ctx.base < 0 && ctx.num_inputs != 2) {
      fail("nuslerp needs exactly two models (plus an optional base) for tensor {}, got {}",
           ctx.name, ctx.num_inputs);
    }
    for (size_t i = 0; i < ctx.num_inputs; ++i) {
      if (static_cast<int>(i) == ctx.base) continue;
      if (!ctx.params->model_value(i, "weight")) {
        fail("nuslerp: model {} has no weight for tensor {}; give both models a weight", i,
             ctx.name);
      }
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    if (ctx.num_inputs == 1) return std::make_unique<CopyMerger>();
    std::vector<size_t> models;
    for (size_t i = 0; i < ctx.num_inputs; ++i) {
      if (static_cast<int>(i) != ctx.base) models.push_back(i);
    }
    const double w1 = *ctx.params->model_value(models[0], "weight");
    const double w2 = *ctx.params->model_value(models[1], "weight");
    // mergekit's guard: equal and opposite weights would divide by zero.
    const double t = std::fabs(w1 + w2) < kWeightSumEpsilon ? 0.5 : w2 / (w1 + w2);
    return std::make_unique<NuslerpMerger>(geometry_of(ctx), ctx.base, models[0], models[1], t);
  }

 private:
  static Geometry geometry_of(const TensorContext& ctx) {
    return geometry(ctx, ctx.params->global_value("nuslerp_row_wise") != 0.0,
                    ctx.params->global_value("nuslerp_flatten") != 0.0);
  }
};

}  // namespace

std::unique_ptr<Method> make_nuslerp() { return std::make_unique<Nuslerp>(); }

}  // namespace smelt::methods
