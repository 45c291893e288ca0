// The magnitude_outliers (breadcrumbs) and della_magprune (della) sparsifications
// (docs/methods.md).
#include "smelt/methods/sparsify_ranked.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <mutex>
#include <numeric>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/rank.h"
#include "smelt/kernels/topk.h"
#include "smelt/methods/factories.h"
#include "smelt/methods/mask_pool.h"

namespace smelt::methods {
namespace {

constexpr double kDefaultGamma = 0.01;
constexpr double kDefaultEpsilon = 0.15;

// ---------------------------------------------------------------------------------------------
// magnitude_outliers

// mergekit's counts, computed as Python does (int() of double products).
struct OutlierCounts {
  uint64_t keep = 0;   // elements kept
  uint64_t n_top = 0;  // highest-ranked elements dropped
};

OutlierCounts outlier_counts(double density, double gamma, uint64_t numel) {
  const double n = static_cast<double>(numel);
  OutlierCounts c;
  c.keep = std::min(numel, static_cast<uint64_t>(density * n));
  // gamma ≥ 0 (validated); n_top ≥ numel behaves like n_top = numel − keep, as in mergekit.
  c.n_top = static_cast<uint64_t>(std::min(gamma * n, n));
  // n_bot = numel − keep − n_top < 0: mergekit shrinks n_top so that `keep` elements remain.
  if (c.keep + c.n_top > numel) c.n_top = numel - c.keep;
  return c;
}

class OutlierSparsifier : public Sparsifier {
 public:
  OutlierSparsifier(uint64_t numel, const OutlierCounts& c)
      : upper_(numel, c.keep + c.n_top), top_(numel, c.n_top), drop_top_(c.n_top > 0) {
    // Both selections start with a sample on large tensors (kernels/topk.h), so that each can
    // end after one full pass.
    if (numel >= kSampleMinElements) {
      upper_.sample_first();
      top_.sample_first();
    }
  }

  bool wants_pass() const override { return !done(upper_) || !done(top_); }
  bool wants_sample() const override {
    return (done(upper_) || sampling(upper_)) && (done(top_) || sampling(top_));
  }

  void gather(const Chunk& chunk, const float* delta) override {
    gather_difference(chunk, delta, nullptr);
  }

  // While both selections are in the same counting pass (kSample or kHigh), only upper_ counts:
  // top_ takes its histogram, and its window records come from upper_'s add.
  void gather_difference(const Chunk& chunk, const float* x, const float* base) override {
    const bool share = shared();
    if (!done(upper_))
      upper_.add_difference(chunk.offset, x, base, chunk.n, share ? &top_ : nullptr);
    if (!done(top_) && !share) top_.add_difference(chunk.offset, x, base, chunk.n);
  }

  // bf16 inputs while every selection still counting is in pass kSample or kHigh.
  bool takes_bf16() const override {
    return (done(upper_) || kernels::TopKMagnitude::takes_bf16(upper_.pass())) &&
           (done(top_) || kernels::TopKMagnitude::takes_bf16(top_.pass()));
  }
  void gather_difference_bf16(const Chunk& chunk, const uint16_t* x,
                              const uint16_t* base) override {
    const bool share = shared();
    if (!done(upper_))
      upper_.add_difference_bf16(chunk.offset, x, base, chunk.n, share ? &top_ : nullptr);
    if (!done(top_) && !share) top_.add_difference_bf16(chunk.offset, x, base, chunk.n);
  }

  void end_pass() override {
    if (shared()) {
      top_.end_pass_from(upper_);
      upper_.end_pass();
      return;
    }
    if (!done(upper_)) upper_.end_pass();
    if (!done(top_)) top_.end_pass();
  }

  // Keeps top(keep + n_top), then zeroes what top(n_top) keeps. An element of top(n_top) that is
  // ±0 is zero either way, so "kept by top_" can be read as "nonzero after top_.keep_top".
  void apply(const Chunk& chunk, float* delta) const override {
    const size_t n = chunk.n;
    thread_local std::vector<float> outliers;
    if (drop_top_) {
      outliers.assign(delta, delta + n);
      top_.keep_top(chunk.offset, outliers.data(), n);
    }
    upper_.keep_top(chunk.offset, delta, n);
    if (drop_top_) kernels::zero_where_nonzero(outliers.data(), delta, n);
  }

  // The same on x − base, without storing the difference first.
  void apply_difference(const Chunk& chunk, const float* x, const float* base,
                        float* delta) const override {
    const size_t n = chunk.n;
    // Most chunks split no tie of either threshold: then the kept elements are a band of
    // magnitudes, selected in one loop.
    uint32_t lo = 0, hi = UINT32_MAX;
    if (upper_.pure_cut(chunk.offset, &lo) && (!drop_top_ || top_.pure_cut(chunk.offset, &hi))) {
      kernels::keep_band_difference(lo, hi, x, base, delta, n);
      return;
    }
    upper_.keep_top_difference(chunk.offset, x, base, delta, n);
    if (drop_top_) {
      thread_local std::vector<float> outliers;
      outliers.resize(n);
      top_.keep_top_difference(chunk.offset, x, base, outliers.data(), n);
      kernels::zero_where_nonzero(outliers.data(), delta, n);
    }
  }

 private:
  static bool done(const kernels::TopKMagnitude& t) {
    return t.pass() == kernels::TopKMagnitude::Pass::kDone;
  }
  static bool sampling(const kernels::TopKMagnitude& t) {
    return t.pass() == kernels::TopKMagnitude::Pass::kSample;
  }
  bool shared() const {
    return upper_.pass() == top_.pass() &&
           (sampling(upper_) || upper_.pass() == kernels::TopKMagnitude::Pass::kHigh);
  }

  kernels::TopKMagnitude upper_;  // top(keep + n_top)
  kernels::TopKMagnitude top_;    // top(n_top)
  bool drop_top_;
};

class MagnitudeOutliers : public Sparsification {
 public:
  std::vector<ParamSpec> model_params() const override {
    return {{"gamma", kDefaultGamma,
             "fraction of the largest-magnitude task-vector entries removed as outliers"}};
  }

  void validate(const TensorContext& ctx, size_t input, double density) const override {
    if (density >= 1.0) return;  // gamma is unused, as in mergekit
    const double gamma = model_value_or(ctx, input, "gamma", kDefaultGamma);
    if (!(gamma >= 0.0 && std::isfinite(gamma))) {
      fail(
          "gamma {} of model {} for tensor {} must be a finite number >= 0 (the fraction of the "
          "largest task-vector entries removed)",
          gamma, input, ctx.name);
    }
  }

  std::optional<std::string> warning(const TensorContext& ctx, size_t input,
                                     double density) const override {
    if (density >= 1.0) return std::nullopt;
    const double gamma = model_value_or(ctx, input, "gamma", kDefaultGamma);
    if (!(gamma >= 0.0 && std::isfinite(gamma))) return std::nullopt;  // validate reports it
    if (outlier_counts(density, gamma, ctx.numel).keep > 0) return std::nullopt;
    return fmt::format(
        "model {}'s density {} keeps none of the {} elements of tensor {} (floor({} * {}) = 0), "
        "so its task vector is left out of this tensor",
        input, density, ctx.numel, ctx.name, density, ctx.numel);
  }

  std::unique_ptr<Sparsifier> begin(const TensorContext& ctx, size_t input,
                                    double density) const override {
    const double gamma = model_value_or(ctx, input, "gamma", kDefaultGamma);
    return std::make_unique<OutlierSparsifier>(ctx.numel,
                                               outlier_counts(density, gamma, ctx.numel));
  }
};

// ---------------------------------------------------------------------------------------------
// della_magprune

// The ranking groups of a tensor: groups of `size` elements `stride` apart; a slice along dim 0
// (size · stride elements, contiguous) holds `stride` whole groups.
struct Groups {
  uint64_t size = 1;
  uint64_t stride = 1;
};

Groups della_groups(const TensorContext& ctx) {
  // mergekit unsqueezes tensors of fewer than 2 dimensions to one row.
  if (ctx.shape.size() < 2) return {std::max<uint64_t>(ctx.numel, 1), 1};
  uint64_t stride = 1;
  for (size_t d = 2; d < ctx.shape.size(); ++d) stride *= ctx.shape[d];
  return {std::max<uint64_t>(ctx.shape[1], 1), std::max<uint64_t>(stride, 1)};
}

class DropAll : public Sparsifier {
 public:
  void apply(const Chunk& chunk, float* delta) const override {
    std::fill(delta, delta + chunk.n, 0.0f);
  }
};

class DellaSparsifier : public Sparsifier {
 public:
  DellaSparsifier(uint64_t key, Groups groups, double density, double epsilon, uint64_t numel)
      : mask_(numel),
        key_(key),
        groups_(groups),
        density_(static_cast<float>(density)),
        low_(static_cast<float>(density - epsilon)),
        epsilon_(static_cast<float>(epsilon)),
        denom_(static_cast<float>(groups.size - 1)) {}

  // Under the L1 rescale: ranks and decides once, keeping the decisions as a bit mask for the
  // merge pass (mask_pool.h). A decision's mark is "the result is not +0": exact, since a dropped
  // element becomes +0 and a kept +0 stays +0 either way.
  std::array<double, 2> l1_norms(const Chunk& chunk, const float* x,
                                 const float* base) const override {
    const float* sparse = nullptr;
    const std::array<double, 2> sums = materialized_l1_norms(chunk, x, base, &sparse);
    if (uint8_t* m = mask_.chunk(chunk.offset)) {
      kernels::not_positive_zero(sparse, m, chunk.n);
      mask_.filled(chunk.n);
    }
    return sums;
  }

  void apply_difference(const Chunk& chunk, const float* x, const float* base,
                        float* delta) const override {
    if (const uint8_t* m = mask_.complete()) {
      // Chunks start at multiples of 8 elements when the mask is complete (mask_pool.h).
      kernels::masked_difference(m + chunk.offset / 8, x, base, delta, chunk.n);
      return;
    }
    kernels::subtract(x, base, delta, chunk.n);
    apply(chunk, delta);
  }

  void apply(const Chunk& chunk, float* delta) const override {
    const uint64_t size = groups_.size;
    const uint64_t stride = groups_.stride;
    const uint64_t slice = size * stride;
    for (uint64_t start = 0; start < chunk.n; start += slice) {
      for (uint64_t g = 0; g < stride; ++g) {
        // Element b of the group is x[b * stride], tensor element first + b * stride.
        float* x = delta + start + g;
        const uint64_t first = chunk.offset + start + g;
        if (size == 1) {
          if (!(kernels::draw_uniform(key_, first) < density_)) x[0] = 0.0f;
        } else if (size <= kernels::kMaxRankedGroup) {
          kernels::keep_random_by_rank(key_, first, low_, epsilon_, x, size, stride);
        } else {
          apply_indexed(x, first);
        }
      }
    }
  }

 private:
  // Keeps or zeroes the element of rank r = q + 1 (q = 0 for the lowest) at group index b, as
  // kernels::keep_random_by_rank does.
  void decide(float* x, uint64_t first, uint64_t b, uint64_t q) const {
    const float p = kernels::della_probability(q, low_, epsilon_, denom_);
    const uint64_t offset = b * groups_.stride;
    if (!(kernels::draw_uniform(key_, first + offset) < p)) x[offset] = 0.0f;
  }

  // Groups too large for 32-bit ranks sort indices with a comparator.
  void apply_indexed(float* x, uint64_t first) const {
    const uint64_t size = groups_.size;
    std::vector<uint32_t> bits(size);
    std::vector<uint64_t> order(size);
    for (uint64_t b = 0; b < size; ++b) bits[b] = kernels::magnitude_bits(x[b * groups_.stride]);
    std::iota(order.begin(), order.end(), uint64_t{0});
    std::sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) {
      return bits[a] != bits[b] ? bits[a] < bits[b] : a > b;
    });
    for (uint64_t q = 0; q < size; ++q) decide(x, first, order[q], q);
  }

  mutable TaskMask mask_;  // decisions from l1_norms
  uint64_t key_;
  Groups groups_;
  float density_;
  float low_;  // density − ε
  float epsilon_;
  float denom_;  // n − 1
};

class DellaMagprune : public Sparsification {
 public:
  std::vector<ParamSpec> model_params() const override {
    return {{"epsilon", kDefaultEpsilon,
             "half-width of the keep-probability range around density, by magnitude rank"}};
  }

  uint64_t chunk_alignment(const TensorContext& ctx) const override {
    const Groups groups = della_groups(ctx);
    return groups.size * groups.stride;
  }

  void validate(const TensorContext& ctx, size_t input, double density) const override {
    if (!(density > 0.0 && density < 1.0)) return;  // epsilon unused, as in mergekit
    const double epsilon = model_value_or(ctx, input, "epsilon", kDefaultEpsilon);
    if (!(density - epsilon > 0.0 && density + epsilon < 1.0)) {
      fail(
          "epsilon {} of model {} for tensor {} must keep density - epsilon and density + "
          "epsilon inside (0, 1) (density {}); choose |epsilon| < {}",
          epsilon, input, ctx.name, density, std::min(density, 1.0 - density));
    }
  }

  std::unique_ptr<Sparsifier> begin(const TensorContext& ctx, size_t input,
                                    double density) const override {
    if (density <= 0.0) return std::make_unique<DropAll>();
    const double epsilon = model_value_or(ctx, input, "epsilon", kDefaultEpsilon);
    return std::make_unique<DellaSparsifier>(kernels::stream_key(ctx.seed, ctx.name, input),
                                             della_groups(ctx), density, epsilon, ctx.numel);
  }
};

}  // namespace

const Sparsification& magnitude_outliers_sparsification() {
  static const MagnitudeOutliers outliers;
  return outliers;
}

const Sparsification& della_sparsification() {
  static const DellaMagprune della;
  return della;
}

}  // namespace smelt::methods
