// sce (docs/methods.md, FuseChat's Select–Calculate–Erase): task vectors restricted to the elements
// where the models disagree most, weighted by their mean square, merged after sign election.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/topk.h"
#include "smelt/methods/factories.h"
#include "smelt/methods/mask_pool.h"

namespace smelt::methods {
namespace {

// mergekit's guards: a sum of the matrix-level weights below kWeightSumEpsilon makes them uniform;
// the per-element divisor is at least kDivisorFloor.
constexpr double kWeightSumEpsilon = 1e-6;
constexpr float kDivisorFloor = 1e-6f;

// The selection keys (kernels::selection_keys) order like the variance and are never 0, so that
// after TopKMagnitude::keep_top an element is selected exactly when its key is nonzero, even when
// the selection reaches elements of variance 0.

class SceMerger : public TensorMerger {
 public:
  explicit SceMerger(const TensorContext& ctx)
      : base_(static_cast<size_t>(ctx.base)),
        numel_(ctx.numel),
        select_topk_(ctx.params->global_value("select_topk")),
        selection_(ctx.numel) {
    for (size_t i = 0; i < ctx.num_inputs; ++i) {
      if (i != base_) tasks_.push_back(i);
    }
    if (tasks_.empty() || select_topk_ <= 0.0) {
      // No task vector, or a selection of nothing: every τ is zero and the result is the base.
      phase_ = Phase::kDone;
      base_only_ = true;
    } else {
      phase_ = Phase::kWeights;
      if (select_topk_ < 1.0) {
        // k depends on the count of nonzero variances, gathered in the selection's first pass.
        phase_ = Phase::kSelect;
        top_ = kernels::TopKMagnitude::with_k_later(numel_);
        // A sample first on large tensors, so that the selection can end after one full pass
        // (kernels/topk.h).
        if (numel_ >= kSampleMinElements) top_->sample_first();
      }
    }
  }

  int stat_passes() const override { return passes_done_ + (phase_ != Phase::kDone ? 1 : 0); }
  bool sample_pass(int /*pass*/) const override { return sampling(); }

  void gather(int /*pass*/, const Chunk& chunk) override {
    const size_t n = chunk.n;
    thread_local std::vector<float> values;
    switch (phase_) {
      case Phase::kSelect:
        values.resize(n);
        {
          const uint64_t nonzero = selection_keys(chunk, values.data());
          if (sampling()) {
            sample_nonzero_.fetch_add(nonzero, std::memory_order_relaxed);
            sampled_.fetch_add(n, std::memory_order_relaxed);
          } else if (!k_known_) {
            nonzero_.fetch_add(nonzero, std::memory_order_relaxed);
          }
        }
        top_->add(chunk.offset, values.data(), n);
        return;
      case Phase::kWeights: {
        values.resize(tasks_.size() * n);
        task_vectors(chunk, values.data());
        std::vector<double> squares(tasks_.size());
        for (size_t t = 0; t < tasks_.size(); ++t) {
          const float* tau = values.data() + t * n;
          squares[t] = kernels::dot(tau, tau, n);
        }
        squares_.put(chunk.index, squares);
        return;
      }
      case Phase::kDone:
        return;
    }
  }

  void end_pass(int /*pass*/) override {
    ++passes_done_;
    switch (phase_) {
      case Phase::kSelect:
        if (sampling()) {
          // k estimated from the sample's share of nonzero variances.
          const uint64_t sampled = sampled_.load(std::memory_order_relaxed);
          if (sampled > 0) {
            const double nonzero = static_cast<double>(sample_nonzero_.load()) /
                                   static_cast<double>(sampled) * static_cast<double>(numel_);
            top_->estimate_k(static_cast<uint64_t>(nonzero * select_topk_));
          }
          top_->end_pass();
          return;
        }
        if (!k_known_) {
          // k = int(count_nonzero(var) * select_topk), a product torch computes in f32.
          k_known_ = true;
          const uint64_t nonzero = nonzero_.load(std::memory_order_relaxed);
          const auto k =
              static_cast<uint64_t>(static_cast<float>(nonzero) * static_cast<float>(select_topk_));
          if (k == 0) {
            top_.reset();
            phase_ = Phase::kDone;
            base_only_ = true;
            return;
          }
          top_->set_k(std::min(k, numel_));
          select_all_ = k >= numel_;
          if (select_all_) {
            phase_ = Phase::kWeights;
            return;
          }
        }
        top_->end_pass();
        if (top_->pass() == kernels::TopKMagnitude::Pass::kDone) phase_ = Phase::kWeights;
        return;
      case Phase::kWeights: {
        // c_i = mean(τ_i²), normalised to sum 1 (uniform when the sum is below 1e-6).
        std::vector<double> mean(tasks_.size(), 0.0);
        for (const auto& [index, squares] : squares_.in_order()) {
          for (size_t t = 0; t < tasks_.size(); ++t) mean[t] += squares[t];
        }
        squares_.clear();
        double sum = 0.0;
        for (double& m : mean) {
          m /= static_cast<double>(numel_);
          sum += m;
        }
        weights_.resize(tasks_.size());
        for (size_t t = 0; t < tasks_.size(); ++t) {
          weights_[t] = std::abs(sum) < kWeightSumEpsilon ? 1.0f / static_cast<float>(tasks_.size())
                                                          : static_cast<float>(mean[t] / sum);
        }
        phase_ = Phase::kDone;
        return;
      }
      case Phase::kDone:
        return;
    }
  }

  void merge(const Chunk& chunk, float* out) override {
    const size_t n = chunk.n;
    const float* base = chunk.inputs[base_];
    if (base_only_) {
      std::memcpy(out, base, n * sizeof(float));
      return;
    }
    thread_local std::vector<float> scratch;
    scratch.resize(tasks_.size() * n);
    task_vectors(chunk, scratch.data());
    // TIES "sum" election on the unweighted τ (0 counts as +, zeros never match), weighted sums.
    thread_local std::vector<const float*> tau;
    tau.resize(tasks_.size());
    for (size_t t = 0; t < tasks_.size(); ++t) tau[t] = scratch.data() + t * n;
    kernels::sign_weighted_merge(tau.data(), weights_.data(), tasks_.size(), base, kDivisorFloor, n,
                                 out);
  }

 private:
  enum class Phase { kSelect, kWeights, kDone };

  bool sampling() const {
    return phase_ == Phase::kSelect && top_->pass() == kernels::TopKMagnitude::Pass::kSample;
  }

  // Population variance over the task vectors of each element (in double, rounded to f32).
  void variance(const Chunk& chunk, float* var) const {
    thread_local std::vector<const float*> inputs;
    inputs.resize(tasks_.size());
    for (size_t t = 0; t < tasks_.size(); ++t) inputs[t] = chunk.inputs[tasks_[t]];
    kernels::variance_of_differences(inputs.data(), inputs.size(), chunk.inputs[base_], chunk.n,
                                     var);
  }

  // The selection keys of the chunk's variances; returns how many variances were nonzero.
  uint64_t selection_keys(const Chunk& chunk, float* keys) const {
    variance(chunk, keys);
    return kernels::selection_keys(keys, chunk.n);
  }

  // τ_i = x_i − b for every task (n values each, task-major), zeroed outside the selection.
  void task_vectors(const Chunk& chunk, float* tau) const {
    const size_t n = chunk.n;
    const float* base = chunk.inputs[base_];
    const bool selecting = top_ && !select_all_;
    // The merge pass reads the selection the weights pass kept (mask_pool.h), when it could.
    if (const uint8_t* m = selecting ? selection_.complete() : nullptr) {
      for (size_t t = 0; t < tasks_.size(); ++t) {
        kernels::masked_difference(m + chunk.offset / 8, chunk.inputs[tasks_[t]], base, tau + t * n,
                                   n);
      }
      return;
    }
    for (size_t t = 0; t < tasks_.size(); ++t) {
      kernels::subtract(chunk.inputs[tasks_[t]], base, tau + t * n, n);
    }
    if (!selecting) return;
    thread_local std::vector<float> keys;
    keys.resize(n);
    selection_keys(chunk, keys.data());
    top_->keep_top(chunk.offset, keys.data(), n);
    for (size_t t = 0; t < tasks_.size(); ++t)
      kernels::keep_where_nonzero(keys.data(), tau + t * n, n);
    // Selected exactly where the key was kept (keys are never +0).
    if (phase_ == Phase::kWeights) {
      if (uint8_t* m = selection_.chunk(chunk.offset)) {
        kernels::not_positive_zero(keys.data(), m, n);
        selection_.filled(n);
      }
    }
  }

  size_t base_;
  uint64_t numel_;
  double select_topk_;
  std::vector<size_t> tasks_;  // non-base inputs, in input order
  Phase phase_ = Phase::kDone;
  int passes_done_ = 0;
  bool base_only_ = false;
  std::atomic<uint64_t> nonzero_{0};             // elements with nonzero variance
  std::atomic<uint64_t> sample_nonzero_{0};      // the same in the sample
  std::atomic<uint64_t> sampled_{0};             // elements in the sample
  bool k_known_ = false;                         // the selection's k was set
  std::unique_ptr<kernels::TopKMagnitude> top_;  // the selection, when select_topk < 1
  bool select_all_ = false;                      // k ≥ numel: every element selected
  ChunkPartials<std::vector<double>> squares_;   // Σ τ_i² per chunk
  std::vector<float> weights_;                   // c_i
  mutable TaskMask selection_;                   // the selection, kept by the weights pass
};

class Sce : public Method {
 public:
  std::string_view name() const override { return "sce"; }
  std::string_view pretty_name() const override { return "SCE"; }
  std::string_view reference_url() const override { return "https://arxiv.org/abs/2408.07990"; }
  std::vector<ParamSpec> global_params() const override {
    return {
        {"int8_mask", 0.0, "store masks as int8 (memory only in mergekit; no effect here)"},
        {"select_topk", 1.0,
         "fraction of the elements with nonzero variance across the models that are kept"},
    };
  }
  BaseUse base_use() const override { return BaseUse::kRequired; }
  // The selection's bit mask (mask_pool.h), kept from the weights pass to the merge pass.
  uint64_t state_bytes(const TensorContext& ctx) const override {
    const double select_topk = ctx.params->global_value("select_topk");
    if (!(select_topk > 0.0 && select_topk < 1.0) || ctx.numel > kMaxMaskElements) return 0;
    return mask_bytes(ctx.numel);
  }

  void validate(const TensorContext& ctx) const override {
    if (ctx.base < 0 || static_cast<size_t>(ctx.base) >= ctx.num_inputs) {
      fail("sce needs a base model for tensor {}; set base_model to a model that has this tensor",
           ctx.name);
    }
  }

  std::vector<std::string> warnings(const TensorContext& ctx) const override {
    const double select_topk = ctx.params->global_value("select_topk");
    if (select_topk > 0.0 || ctx.num_inputs < 2) return {};
    return {fmt::format(
        "sce: select_topk {} selects no element of tensor {}, so the tensor is the base model's "
        "(mergekit writes the base's values with an extra leading dimension here)",
        select_topk, ctx.name)};
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    return std::make_unique<SceMerger>(ctx);
  }
};

}  // namespace

std::unique_ptr<Method> make_sce() { return std::make_unique<Sce>(); }

}  // namespace smelt::methods
