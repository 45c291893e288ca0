// The generalized task arithmetic merge shared by task_arithmetic, ties, dare_ties and
// dare_linear, and the magnitude and random sparsifications (docs/methods.md).
#include "smelt/methods/gta.h"

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/topk.h"
#include "smelt/methods/factories.h"
#include "smelt/methods/mask_pool.h"

namespace smelt::methods {
namespace {

// mergekit's guards: L1 rescale is skipped when either norm is below kRescaleEpsilon; a weight
// sum below kWeightSumEpsilon in magnitude is replaced by 1.
constexpr double kRescaleEpsilon = 1e-7;
constexpr float kWeightSumEpsilon = 1e-8f;

// floor(density · numel) in double, as mergekit's int(density * numel).
uint64_t kept_count(double density, uint64_t numel) {
  return static_cast<uint64_t>(density * static_cast<double>(numel));
}

// ---------------------------------------------------------------------------------------------
// Sparsifications.

// Scratch for the default Sparsifier steps (one chunk of δ per thread).
float* delta_scratch(size_t n, int which = 0) {
  thread_local std::vector<float> scratch[2];
  scratch[which].resize(n);
  return scratch[which].data();
}

class MagnitudeSparsifier : public Sparsifier {
 public:
  MagnitudeSparsifier(uint64_t numel, uint64_t k) : top_(numel, k) {
    // A sample first on large tensors, so that the selection can end after one full pass
    // (kernels/topk.h).
    if (numel >= kSampleMinElements) top_.sample_first();
  }
  bool wants_pass() const override { return top_.pass() != kernels::TopKMagnitude::Pass::kDone; }
  bool wants_sample() const override {
    return top_.pass() == kernels::TopKMagnitude::Pass::kSample;
  }
  void gather(const Chunk& chunk, const float* delta) override {
    top_.add(chunk.offset, delta, chunk.n);
  }
  void gather_difference(const Chunk& chunk, const float* x, const float* base) override {
    top_.add_difference(chunk.offset, x, base, chunk.n);
  }
  bool takes_bf16() const override { return kernels::TopKMagnitude::takes_bf16(top_.pass()); }
  void gather_difference_bf16(const Chunk& chunk, const uint16_t* x,
                              const uint16_t* base) override {
    top_.add_difference_bf16(chunk.offset, x, base, chunk.n);
  }
  void end_pass() override { top_.end_pass(); }
  void apply(const Chunk& chunk, float* delta) const override {
    top_.keep_top(chunk.offset, delta, chunk.n);
  }
  void apply_difference(const Chunk& chunk, const float* x, const float* base,
                        float* delta) const override {
    top_.keep_top_difference(chunk.offset, x, base, delta, chunk.n);
  }

 private:
  kernels::TopKMagnitude top_;
};

class Magnitude : public Sparsification {
 public:
  std::optional<std::string> warning(const TensorContext& ctx, size_t input,
                                     double density) const override {
    if (density >= 1.0 || kept_count(density, ctx.numel) > 0) return std::nullopt;
    return fmt::format(
        "model {}'s density {} keeps none of the {} elements of tensor {} (floor({} * {}) = 0), "
        "so its task vector is left out of this tensor (mergekit stops with an assertion here)",
        input, density, ctx.numel, ctx.name, density, ctx.numel);
  }
  std::unique_ptr<Sparsifier> begin(const TensorContext& ctx, size_t /*input*/,
                                    double density) const override {
    return std::make_unique<MagnitudeSparsifier>(ctx.numel, kept_count(density, ctx.numel));
  }
};

class RandomSparsifier : public Sparsifier {
 public:
  RandomSparsifier(uint64_t key, float density, uint64_t numel)
      : key_(key), density_(density), mask_(numel) {}
  void apply(const Chunk& chunk, float* delta) const override {
    kernels::keep_random(key_, chunk.offset, density_, delta, chunk.n);
  }
  void apply_difference(const Chunk& chunk, const float* x, const float* base,
                        float* delta) const override {
    if (const uint8_t* m = mask_.complete()) {
      // Chunks start at multiples of 8 elements when the mask is complete (mask_pool.h).
      kernels::masked_difference(m + chunk.offset / 8, x, base, delta, chunk.n);
      return;
    }
    kernels::keep_random_difference(key_, chunk.offset, density_, x, base, delta, chunk.n);
  }
  // Under the L1 rescale: draws the mask once, keeping it for the merge pass (mask_pool.h).
  std::array<double, 2> l1_norms(const Chunk& chunk, const float* x,
                                 const float* base) const override {
    uint8_t* m = mask_.chunk(chunk.offset);
    if (m == nullptr) {
      return kernels::random_kept_abs_sums(key_, chunk.offset, density_, x, base, chunk.n);
    }
    kernels::random_mask(key_, chunk.offset, density_, m, chunk.n);
    mask_.filled(chunk.n);
    return kernels::masked_abs_sums(m, x, base, chunk.n);
  }

 private:
  uint64_t key_;
  float density_;
  mutable TaskMask mask_;
};

class Random : public Sparsification {
 public:
  std::unique_ptr<Sparsifier> begin(const TensorContext& ctx, size_t input,
                                    double density) const override {
    return std::make_unique<RandomSparsifier>(kernels::stream_key(ctx.seed, ctx.name, input),
                                              static_cast<float>(density), ctx.numel);
  }
};

// Wraps a sparsifier with mergekit's L1 rescale: after the inner passes, one more pass measures
// ‖δ‖₁ and ‖sparsified δ‖₁ (the inner sparsifier is re-applied, which is deterministic), and
// apply scales kept elements by their ratio.
class L1Rescaled : public Sparsifier {
 public:
  explicit L1Rescaled(std::unique_ptr<Sparsifier> inner) : inner_(std::move(inner)) {}

  bool wants_pass() const override { return inner_->wants_pass() || !measured_; }
  bool wants_sample() const override { return inner_->wants_pass() && inner_->wants_sample(); }

  void gather(const Chunk& chunk, const float* delta) override {
    if (inner_->wants_pass()) {
      inner_->gather(chunk, delta);
      return;
    }
    float* sparse = delta_scratch(chunk.n, 1);
    std::memcpy(sparse, delta, chunk.n * sizeof(float));
    inner_->apply(chunk, sparse);
    partials_.put(chunk.index,
                  {kernels::abs_sum(delta, chunk.n), kernels::abs_sum(sparse, chunk.n)});
  }

  void gather_difference(const Chunk& chunk, const float* x, const float* base) override {
    if (inner_->wants_pass()) {
      inner_->gather_difference(chunk, x, base);
      return;
    }
    partials_.put(chunk.index, inner_->l1_norms(chunk, x, base));
  }

  bool takes_bf16() const override { return inner_->wants_pass() && inner_->takes_bf16(); }
  void gather_difference_bf16(const Chunk& chunk, const uint16_t* x,
                              const uint16_t* base) override {
    inner_->gather_difference_bf16(chunk, x, base);
  }

  void end_pass() override {
    if (inner_->wants_pass()) {
      inner_->end_pass();
      return;
    }
    double norm = 0.0;
    double sparse_norm = 0.0;
    for (const auto& [index, p] : partials_.in_order()) {
      norm += p[0];
      sparse_norm += p[1];
    }
    partials_.clear();
    if (norm >= kRescaleEpsilon && sparse_norm >= kRescaleEpsilon) {
      factor_ = static_cast<float>(norm / sparse_norm);
    }
    measured_ = true;
  }

  void apply(const Chunk& chunk, float* delta) const override {
    inner_->apply(chunk, delta);
    if (factor_ != 1.0f) kernels::scale(factor_, delta, delta, chunk.n);
  }
  void apply_difference(const Chunk& chunk, const float* x, const float* base,
                        float* delta) const override {
    inner_->apply_difference(chunk, x, base, delta);
    if (factor_ != 1.0f) kernels::scale(factor_, delta, delta, chunk.n);
  }

 private:
  std::unique_ptr<Sparsifier> inner_;
  ChunkPartials<std::array<double, 2>> partials_;  // ‖δ‖₁, ‖sparsified δ‖₁ per chunk
  bool measured_ = false;
  float factor_ = 1.0f;
};

// ---------------------------------------------------------------------------------------------
// The merge.

struct TaskVector {
  size_t input;
  float weight;
  std::unique_ptr<Sparsifier> sparsifier;  // nullptr: kept whole
};

class GtaMerger : public TensorMerger {
 public:
  GtaMerger(const GtaVariant& variant, const TensorContext& ctx)
      : base_(static_cast<size_t>(ctx.base)), consensus_(variant.consensus) {
    const ResolvedParams& params = *ctx.params;
    normalize_ = params.global_value("normalize") != 0.0;
    lambda_ = static_cast<float>(params.global_value("lambda"));
    const bool rescale = params.global_value("rescale") != 0.0;
    float weight_sum = 0.0f;
    for (size_t i = 0; i < ctx.num_inputs; ++i) {
      if (i == base_) continue;
      TaskVector task{i, static_cast<float>(*params.model_value(i, "weight")), nullptr};
      const double density = model_value_or(ctx, i, "density", 1.0);
      if (variant.sparsification != nullptr && density < 1.0) {
        task.sparsifier = variant.sparsification->begin(ctx, i, density);
        if (rescale) task.sparsifier = std::make_unique<L1Rescaled>(std::move(task.sparsifier));
      }
      weight_sum += task.weight;
      weights_.push_back(task.weight);
      tasks_.push_back(std::move(task));
    }
    weight_sum_ = std::fabs(weight_sum) < kWeightSumEpsilon ? 1.0f : weight_sum;
  }

  int stat_passes() const override {
    for (const TaskVector& task : tasks_) {
      if (task.sparsifier && task.sparsifier->wants_pass()) return passes_done_ + 1;
    }
    return passes_done_;
  }

  // A sample pass when every sparsifier that wants the pass can take a sample.
  bool sample_pass(int /*pass*/) const override {
    return every_pass_wants(&Sparsifier::wants_sample);
  }

  // A pass of bf16 inputs when every sparsifier that wants the pass can take them.
  bool bf16_pass(int /*pass*/) const override { return every_pass_wants(&Sparsifier::takes_bf16); }

  void gather(int /*pass*/, const Chunk& chunk) override {
    for (TaskVector& task : tasks_) {
      if (!task.sparsifier || !task.sparsifier->wants_pass()) continue;
      if (chunk.bf16 != nullptr) {
        task.sparsifier->gather_difference_bf16(chunk, chunk.bf16[task.input], chunk.bf16[base_]);
      } else {
        task.sparsifier->gather_difference(chunk, chunk.inputs[task.input], chunk.inputs[base_]);
      }
    }
  }

  void end_pass(int /*pass*/) override {
    for (TaskVector& task : tasks_) {
      if (task.sparsifier && task.sparsifier->wants_pass()) task.sparsifier->end_pass();
    }
    ++passes_done_;
  }

  void merge(const Chunk& chunk, float* out) override {
    const size_t n = chunk.n;
    const float* base = chunk.inputs[base_];
    if (tasks_.empty()) {
      std::memcpy(out, base, n * sizeof(float));
      return;
    }
    thread_local std::vector<float> scratch;
    if (tasks_.size() == 2) {
      // The common merge of two fine-tunes: weighting, combining, λ and the base in one loop.
      scratch.resize(2 * n);
      float* d0 = scratch.data();
      float* d1 = d0 + n;
      sparsified_delta(tasks_[0], chunk, d0);
      sparsified_delta(tasks_[1], chunk, d1);
      kernels::merge_task_pair(d0, d1, tasks_[0].weight, tasks_[1].weight,
                               consensus_ != Consensus::kNone, normalize_, weight_sum_, lambda_,
                               base, out, n);
      return;
    }
    if (consensus_ == Consensus::kNone) {
      // mixed = Σ w_i δ_i, accumulated in out in input order.
      scratch.resize(n);
      float* delta = scratch.data();
      for (size_t t = 0; t < tasks_.size(); ++t) {
        weighted_delta(tasks_[t], chunk, delta);
        if (t == 0) {
          std::memcpy(out, delta, n * sizeof(float));
        } else {
          kernels::scale_add(1.0f, delta, out, n);
        }
      }
      if (normalize_) kernels::divide(out, weight_sum_, n);
    } else {
      // Every D_i of the chunk is needed twice (the majority sign, then the masked sums).
      scratch.resize((tasks_.size() + 2) * n);
      std::vector<const float*> deltas(tasks_.size());
      for (size_t t = 0; t < tasks_.size(); ++t) {
        float* d = scratch.data() + t * n;
        weighted_delta(tasks_[t], chunk, d);
        deltas[t] = d;
      }
      float* majority = scratch.data() + tasks_.size() * n;
      float* divisor = majority + n;
      kernels::elect_sign(deltas.data(), weights_.data(), tasks_.size(), n, majority, out, divisor);
      if (normalize_) kernels::divide(out, divisor, n);
    }
    if (lambda_ != 1.0f) kernels::scale(lambda_, out, out, n);
    kernels::scale_add(1.0f, base, out, n);  // out = mixed + b (1 · b is exact)
  }

 private:
  // Whether some sparsifier wants the next pass and every one that does answers `can` true.
  bool every_pass_wants(bool (Sparsifier::*can)() const) const {
    bool any = false;
    for (const TaskVector& task : tasks_) {
      if (!task.sparsifier || !task.sparsifier->wants_pass()) continue;
      if (!(task.sparsifier.get()->*can)()) return false;
      any = true;
    }
    return any;
  }

  // d = sparsify(x − b) for one chunk.
  void sparsified_delta(const TaskVector& task, const Chunk& chunk, float* d) const {
    if (task.sparsifier) {
      task.sparsifier->apply_difference(chunk, chunk.inputs[task.input], chunk.inputs[base_], d);
    } else {
      kernels::subtract(chunk.inputs[task.input], chunk.inputs[base_], d, chunk.n);
    }
  }

  // D = w · sparsify(x − b) for one chunk.
  void weighted_delta(const TaskVector& task, const Chunk& chunk, float* d) const {
    sparsified_delta(task, chunk, d);
    kernels::scale(task.weight, d, d, chunk.n);
  }

  size_t base_;
  Consensus consensus_;
  bool normalize_ = false;
  float lambda_ = 1.0f;
  float weight_sum_ = 1.0f;  // the no-consensus divisor, guarded
  std::vector<TaskVector> tasks_;
  std::vector<float> weights_;  // tasks_[t].weight, contiguous for elect_sign
  int passes_done_ = 0;
};

}  // namespace

void Sparsifier::gather_difference(const Chunk& chunk, const float* x, const float* base) {
  float* delta = delta_scratch(chunk.n);
  kernels::subtract(x, base, delta, chunk.n);
  gather(chunk, delta);
}

void Sparsifier::gather_difference_bf16(const Chunk& /*chunk*/, const uint16_t* /*x*/,
                                        const uint16_t* /*base*/) {
  throw std::logic_error("Sparsifier::gather_difference_bf16: this sparsifier takes no bf16");
}

void Sparsifier::apply_difference(const Chunk& chunk, const float* x, const float* base,
                                  float* delta) const {
  kernels::subtract(x, base, delta, chunk.n);
  apply(chunk, delta);
}

std::array<double, 2> Sparsifier::l1_norms(const Chunk& chunk, const float* x,
                                           const float* base) const {
  return materialized_l1_norms(chunk, x, base);
}

std::array<double, 2> Sparsifier::materialized_l1_norms(const Chunk& chunk, const float* x,
                                                        const float* base,
                                                        const float** sparse_out) const {
  float* delta = delta_scratch(chunk.n);
  float* sparse = delta_scratch(chunk.n, 1);
  kernels::subtract(x, base, delta, chunk.n);
  std::memcpy(sparse, delta, chunk.n * sizeof(float));
  apply(chunk, sparse);
  if (sparse_out) *sparse_out = sparse;
  return {kernels::abs_sum(delta, chunk.n), kernels::abs_sum(sparse, chunk.n)};
}

const Sparsification& magnitude_sparsification() {
  static const Magnitude magnitude;
  return magnitude;
}

const Sparsification& random_sparsification() {
  static const Random random;
  return random;
}

std::vector<ParamSpec> GtaMethod::global_params() const {
  return {
      {"int8_mask", 0.0, "store masks as int8 (memory only in mergekit; no effect here)"},
      {"normalize", variant_.default_normalize ? 1.0 : 0.0, "divide by the sum of the weights"},
      {"rescale", variant_.default_rescale ? 1.0 : 0.0,
       "restore each sparsified task vector's L1 norm"},
      {"lambda", 1.0, "scale of the merged task vector"},
  };
}

std::vector<ParamSpec> GtaMethod::model_params() const {
  std::vector<ParamSpec> params = {
      {"weight", std::nullopt, "the model's weight (not needed for the base model)"},
      {"density", 1.0, "fraction of the task vector kept by sparsification"},
  };
  if (variant_.sparsification != nullptr) {
    for (ParamSpec& p : variant_.sparsification->model_params()) params.push_back(std::move(p));
  }
  return params;
}

uint64_t GtaMethod::state_bytes(const TensorContext& ctx) const {
  if (!variant_.sparsification || ctx.numel > kMaxMaskElements) return 0;
  // Every task vector may keep a mask (an upper bound: not every sparsifier keeps one).
  return mask_bytes(ctx.numel) * (ctx.num_inputs > 0 ? ctx.num_inputs - 1 : 0);
}

uint64_t GtaMethod::chunk_alignment(const TensorContext& ctx) const {
  return variant_.sparsification != nullptr ? variant_.sparsification->chunk_alignment(ctx) : 1;
}

void GtaMethod::validate(const TensorContext& ctx) const {
  if (ctx.base < 0 || static_cast<size_t>(ctx.base) >= ctx.num_inputs) {
    fail("{} needs a base model for tensor {}; set base_model to a model that has this tensor",
         name(), ctx.name);
  }
  for (size_t i = 0; i < ctx.num_inputs; ++i) {
    if (i == static_cast<size_t>(ctx.base)) continue;
    if (!ctx.params->model_value(i, "weight")) {
      fail("{}: model {} has no weight for tensor {}; give every model except the base a weight",
           name(), i, ctx.name);
    }
    // density only matters to sparsifying methods; task_arithmetic ignores it, as mergekit does.
    if (variant_.sparsification == nullptr) continue;
    const double density = model_value_or(ctx, i, "density", 1.0);
    if (!(density >= 0.0 && density <= 1.0)) {
      fail("{}: density {} of model {} for tensor {} is outside [0, 1]", name(), density, i,
           ctx.name);
    }
    variant_.sparsification->validate(ctx, i, density);
  }
}

std::vector<std::string> GtaMethod::warnings(const TensorContext& ctx) const {
  std::vector<std::string> messages;
  if (variant_.sparsification == nullptr) return messages;
  for (size_t i = 0; i < ctx.num_inputs; ++i) {
    if (static_cast<int>(i) == ctx.base) continue;
    const double density = model_value_or(ctx, i, "density", 1.0);
    if (auto w = variant_.sparsification->warning(ctx, i, density)) {
      messages.push_back(fmt::format("{}: {}", name(), *w));
    }
  }
  return messages;
}

std::unique_ptr<TensorMerger> GtaMethod::begin(const TensorContext& ctx) const {
  validate(ctx);
  return std::make_unique<GtaMerger>(variant_, ctx);
}

}  // namespace smelt::methods
