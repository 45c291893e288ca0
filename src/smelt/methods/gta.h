// The generalized task arithmetic family (docs/methods.md): task_arithmetic, ties, dare_ties,
// dare_linear (and later breadcrumbs*, della*) as one merge over task vectors, configured by a
// pluggable sparsification, a sign-consensus rule and default normalize/rescale.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/methods/method.h"

namespace smelt::methods {

// Sparsifies one task vector δ = x − b of one tensor (docs/methods.md). The GTA merger drives it
// like a TensorMerger: statistics passes while wants_pass(), then apply() on every chunk.
class Sparsifier {
 public:
  virtual ~Sparsifier() = default;
  // Whether another statistics pass is needed. Changes only in end_pass.
  virtual bool wants_pass() const { return false; }
  // Whether that pass may be a sample (TensorMerger::sample_pass). Changes only in end_pass.
  virtual bool wants_sample() const { return false; }
  // Sees one chunk of the task vector (chunk.n values at delta) during a pass. Runs concurrently
  // for different chunks, so it may only write chunk-indexed or atomic state.
  virtual void gather(const Chunk& /*chunk*/, const float* /*delta*/) {}
  // Ends the current pass. Runs alone; combines per-chunk results in chunk order.
  virtual void end_pass() {}
  // Sparsifies one chunk of the task vector in place: zeroes dropped elements and rescales kept
  // ones. Runs concurrently for different chunks, after the last pass.
  virtual void apply(const Chunk& chunk, float* delta) const = 0;

  // The same steps on δ = x − base, given the model's and the base's values instead of δ;
  // sparsifiers override them to avoid storing δ. gather_difference feeds a pass; the default
  // computes δ into scratch and calls gather.
  virtual void gather_difference(const Chunk& chunk, const float* x, const float* base);
  // Whether the current pass can read bf16 inputs through gather_difference_bf16, so that the
  // executor need not convert them (docs/performance.md, "Round 6"). Changes only in end_pass.
  virtual bool takes_bf16() const { return false; }
  // gather_difference for x and base given as bf16 values (their exact f32 values); called only
  // while takes_bf16(). The default throws std::logic_error.
  virtual void gather_difference_bf16(const Chunk& chunk, const uint16_t* x, const uint16_t* base);
  // delta = sparsified (x − base); the default subtracts, then calls apply.
  virtual void apply_difference(const Chunk& chunk, const float* x, const float* base,
                                float* delta) const;
  // {Σ|δ_j|, Σ|sparsified δ_j|} over the chunk, each summed like kernels::abs_sum (after the
  // passes; used for the L1 rescale). The default materializes both.
  virtual std::array<double, 2> l1_norms(const Chunk& chunk, const float* x,
                                         const float* base) const;

 protected:
  // The default l1_norms; *sparse (if given) receives the sparsified chunk (thread-local
  // scratch, valid until this thread's next call).
  std::array<double, 2> materialized_l1_norms(const Chunk& chunk, const float* x, const float* base,
                                              const float** sparse = nullptr) const;
};

// A sparsification primitive (docs/methods.md). Each is a stateless singleton; a new one (e.g.
// breadcrumbs' magnitude_outliers) subclasses this and is named in its methods' GtaVariant.
class Sparsification {
 public:
  virtual ~Sparsification() = default;
  // Per-model parameters it adds to weight and density (e.g. breadcrumbs' gamma).
  virtual std::vector<ParamSpec> model_params() const { return {}; }
  // Chunk alignment it needs (e.g. a row, for row-wise ranks).
  virtual uint64_t chunk_alignment(const TensorContext& /*ctx*/) const { return 1; }
  // Checks `input`'s parameters beyond density ∈ [0, 1], which the family checks. Throws
  // smelt::Error naming the tensor and the parameter.
  virtual void validate(const TensorContext& /*ctx*/, size_t /*input*/, double /*density*/) const {}
  // A warning about `input` that does not stop the merge, or nullopt.
  virtual std::optional<std::string> warning(const TensorContext& /*ctx*/, size_t /*input*/,
                                             double /*density*/) const {
    return std::nullopt;
  }
  // Starts sparsifying `input`'s task vector for ctx's tensor. Only called with density < 1
  // (density ≥ 1 keeps a task vector unchanged, with no rescale, for every primitive).
  virtual std::unique_ptr<Sparsifier> begin(const TensorContext& ctx, size_t input,
                                            double density) const = 0;
};

// magnitude (ties): keeps exactly k = floor(density · numel) elements of largest |δ|; elements
// tied with the k-th largest are kept in element-index order. k == 0 drops the whole task vector
// (mergekit stops with an assertion; smelt warns, see GtaMethod::warnings).
const Sparsification& magnitude_sparsification();
// random (DARE): keeps element j when draw_uniform(stream_key(seed, tensor, input), j) <
// density, so the mask depends only on the seed, the tensor name and the input index.
const Sparsification& random_sparsification();

// How the family combines weighted task vectors D_i = w_i · δ_i (docs/methods.md, task arithmetic
// family).
enum class Consensus {
  kNone,  // mixed = Σ D_i, divisor = Σ w_i
  kSum,   // per element, keep the D_i whose sign matches sign(Σ D_i); divisor = Σ kept w_i
};

// One row of the task arithmetic table in docs/methods.md, plus the names the model card uses.
struct GtaVariant {
  std::string_view name;
  std::string_view pretty_name;
  std::string_view reference_url;
  const Sparsification* sparsification = nullptr;  // nullptr: task vectors are kept whole
  Consensus consensus = Consensus::kNone;
  bool default_normalize = false;
  bool default_rescale = false;  // L1-norm matching after sparsifying (docs/methods.md)
};

// A method of the family: out = b + λ · normalize(consensus(w_i · sparsify(x_i − b))), in f32.
// Parameters: G int8_mask (no effect on the result), normalize, rescale, lambda; M weight
// (required except for the base), density, and the sparsification's own.
class GtaMethod : public Method {
 public:
  explicit GtaMethod(const GtaVariant& variant) : variant_(variant) {}

  std::string_view name() const override { return variant_.name; }
  std::string_view pretty_name() const override { return variant_.pretty_name; }
  std::string_view reference_url() const override { return variant_.reference_url; }
  std::vector<ParamSpec> global_params() const override;
  std::vector<ParamSpec> model_params() const override;
  BaseUse base_use() const override { return BaseUse::kRequired; }
  uint64_t chunk_alignment(const TensorContext& ctx) const override;
  void validate(const TensorContext& ctx) const override;
  // One bit mask per sparsified task vector (mask_pool.h), for tensors small enough to keep one.
  uint64_t state_bytes(const TensorContext& ctx) const override;
  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override;

  // Problems with ctx's tensor that do not stop the merge (e.g. a density so low that a task
  // vector keeps no element), one message each, naming the method, tensor and input. Call after
  // validate.
  std::vector<std::string> warnings(const TensorContext& ctx) const override;

 private:
  GtaVariant variant_;
};

}  // namespace smelt::methods
