// arcee_fusion: keeps the other model's changes to the base only where their importance (|p − q|
// times the row's KL divergence between softmax(p) and softmax(q)) is an outlier: at least
// median + 1.5·IQR of the importance (docs/methods.md).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// mergekit adds this to both softmax distributions before taking the KL divergence.
constexpr double kProbabilityEpsilon = 1e-8;
// Quantiles are estimated from about this many elements of the importance (all of them when the
// tensor is no larger).
constexpr uint64_t kSampleSize = 1000000;
// Salt of the sampling stream (DARE's streams use the input index as salt).
constexpr uint64_t kSampleSalt = 0xA4CEEF0510Full;

// KL(softmax(p) + ε ‖ softmax(q) + ε) over one row of n elements, in double.
double row_kl(const float* p, const float* q, size_t n) {
  const float p_max = *std::max_element(p, p + n);
  const float q_max = *std::max_element(q, q + n);
  double p_sum = 0.0;
  double q_sum = 0.0;
  for (size_t j = 0; j < n; ++j) {
    p_sum += std::exp(double{p[j]} - p_max);
    q_sum += std::exp(double{q[j]} - q_max);
  }
  double kl = 0.0;
  for (size_t j = 0; j < n; ++j) {
    const double pj = std::exp(double{p[j]} - p_max) / p_sum + kProbabilityEpsilon;
    const double qj = std::exp(double{q[j]} - q_max) / q_sum + kProbabilityEpsilon;
    kl += pj * std::log(pj / qj);
  }
  return kl;
}

class CopyMerger : public TensorMerger {
 public:
  void merge(const Chunk& chunk, float* out) override {
    std::memcpy(out, chunk.inputs[0], chunk.n * sizeof(float));
  }
};

// Statistics pass: each chunk (whole rows) computes its rows' KL divergences, which merge reuses,
// and the importance of the sampled elements. end_pass sorts the sample and sets the threshold.
class ArceeFusionMerger : public TensorMerger {
 public:
  ArceeFusionMerger(const TensorContext& ctx, uint64_t row)
      : base_(static_cast<size_t>(ctx.base)),
        other_(1 - base_),
        row_(row),
        row_kl_(ctx.numel / row),
        sample_key_(kernels::stream_key(ctx.seed, ctx.name, kSampleSalt)),
        sample_all_(ctx.numel <= kSampleSize),
        sample_p_(static_cast<float>(static_cast<double>(kSampleSize) /
                                     static_cast<double>(std::max<uint64_t>(ctx.numel, 1)))) {}

  int stat_passes() const override { return 1; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    const float* p = chunk.inputs[other_];
    const float* q = chunk.inputs[base_];
    std::vector<double> sample;
    for (size_t start = 0; start < chunk.n; start += row_) {
      const uint64_t row = (chunk.offset + start) / row_;
      const double kl = row_kl(p + start, q + start, row_);
      row_kl_[row] = kl;  // each row is written by the one chunk that holds it
      for (size_t j = start; j < start + row_; ++j) {
        if (sample_all_ || kernels::random_uniform(sample_key_, chunk.offset + j) < sample_p_) {
          sample.push_back(importance(p[j], q[j], kl));
        }
      }
    }
    samples_.put(chunk.index, sample);
  }

  void end_pass(int /*pass*/) override {
    std::vector<double> sample;
    for (const auto& [index, part] : samples_.in_order()) {
      sample.insert(sample.end(), part.begin(), part.end());
    }
    samples_.clear();
    if (sample.empty()) return;  // an empty tensor: nothing to merge
    std::sort(sample.begin(), sample.end());
    // mergekit's estimate: the element at index floor(q·(n − 1)) of the sorted sample.
    auto quantile = [&](double q) {
      return sample[static_cast<size_t>(q * static_cast<double>(sample.size() - 1))];
    };
    threshold_ = quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25));
  }

  void merge(const Chunk& chunk, float* out) override {
    const float* p = chunk.inputs[other_];
    const float* q = chunk.inputs[base_];
    for (size_t start = 0; start < chunk.n; start += row_) {
      const double kl = row_kl_[(chunk.offset + start) / row_];
      for (size_t j = start; j < start + row_; ++j) {
        // mergekit's q + (p − q)·mask, in f32.
        out[j] = importance(p[j], q[j], kl) >= threshold_ ? q[j] + (p[j] - q[j]) : q[j];
      }
    }
  }

 private:
  // |p − q| (in f32) times the row's KL divergence; the same bits in both passes.
  static double importance(float p, float q, double kl) { return double{std::fabs(p - q)} * kl; }

  size_t base_;
  size_t other_;
  uint64_t row_;
  std::vector<double> row_kl_;  // one value per row of the tensor
  uint64_t sample_key_;
  bool sample_all_;
  float sample_p_;
  ChunkPartials<std::vector<double>> samples_;
  double threshold_ = 0.0;
};

class ArceeFusion : public Method {
 public:
  std::string_view name() const override { return "arcee_fusion"; }
  std::string_view pretty_name() const override { return "Arcee Fusion"; }
  std::string_view reference_url() const override { return "https://arcee.ai"; }
  BaseUse base_use() const override { return BaseUse::kRequired; }

  // Softmax and KL run along the last dimension, so chunks hold whole rows.
  uint64_t chunk_alignment(const TensorContext& ctx) const override { return row_length(ctx); }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs == 1) return;  // copied, as mergekit does
    if (ctx.num_inputs != 2) {
      fail("arcee_fusion needs exactly 2 models (the base and one other) for tensor {}, got {}",
           ctx.name, ctx.num_inputs);
    }
    if (ctx.base < 0 || ctx.base > 1) {
      fail("arcee_fusion needs a base model for tensor {}; set base_model to one of the two models",
           ctx.name);
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    if (ctx.num_inputs == 1) return std::make_unique<CopyMerger>();
    return std::make_unique<ArceeFusionMerger>(ctx, row_length(ctx));
  }

 private:
  // The last dimension's size (the whole tensor for 0-D and 1-D tensors); at least 1.
  static uint64_t row_length(const TensorContext& ctx) {
    const uint64_t row = ctx.shape.empty() ? ctx.numel : ctx.shape.back();
    return std::max<uint64_t>(row, 1);
  }
};

}  // namespace

std::unique_ptr<Method> make_arcee_fusion() { return std::make_unique<ArceeFusion>(); }

}  // namespace smelt::methods
