// slerp: spherical interpolation between the base and one other model, over each whole tensor
// flattened into one vector (docs/methods.md).
#include <array>
#include <cmath>
#include <cstring>
#include <memory>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// mergekit's constants: vectors this short stay unnormalised; directions this close are lerped.
constexpr double kNormEpsilon = 1e-8;
constexpr double kDotThreshold = 0.9995;

class SlerpMerger : public TensorMerger {
 public:
  // Interpolates from input v0 (the base) to input v1; v0 < 0 copies the single input.
  SlerpMerger(int v0, int v1, double t) : v0_(v0), v1_(v1), t_(t) {}

  int stat_passes() const override { return v0_ < 0 ? 0 : 1; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    const float* a = chunk.inputs[v0_];
    const float* b = chunk.inputs[v1_];
    const float* v[2] = {a, b};
    double g[3];  // ⟨a, a⟩, ⟨a, b⟩, ⟨b, b⟩
    kernels::gram_upper(v, 2, chunk.n, g);
    partials_.put(chunk.index, {g[0], g[2], g[1]});
  }

  void end_pass(int /*pass*/) override {
    std::array<double, 3> total = {0, 0, 0};  // ‖v0‖², ‖v1‖², ⟨v0, v1⟩
    for (const auto& [index, p] : partials_.in_order()) {
      for (size_t s = 0; s < 3; ++s) total[s] += p[s];
    }
    partials_.clear();
    const double norm0 = std::sqrt(total[0]);
    const double norm1 = std::sqrt(total[1]);
    const double dot =
        total[2] / ((norm0 > kNormEpsilon ? norm0 : 1.0) * (norm1 > kNormEpsilon ? norm1 : 1.0));
    if (std::fabs(dot) > kDotThreshold) {  // nearly parallel: sin θ ≈ 0, so lerp
      c0_ = static_cast<float>(1.0 - t_);
      c1_ = static_cast<float>(t_);
      return;
    }
    // mergekit's form: sin(θ − tθ) rather than sin((1 − t)θ).
    const double theta = std::acos(dot);
    const double sin_theta = std::sin(theta);
    c0_ = static_cast<float>(std::sin(theta - theta * t_) / sin_theta);
    c1_ = static_cast<float>(std::sin(theta * t_) / sin_theta);
  }

  void merge(const Chunk& chunk, float* out) override {
    if (v0_ < 0) {
      std::memcpy(out, chunk.inputs[0], chunk.n * sizeof(float));
      return;
    }
    kernels::weighted_pair(c0_, chunk.inputs[v0_], c1_, chunk.inputs[v1_], out, chunk.n);
  }

 private:
  int v0_;
  int v1_;
  double t_;
  ChunkPartials<std::array<double, 3>> partials_;
  float c0_ = 0.0f;  // out = c0 * v0 + c1 * v1
  float c1_ = 0.0f;
};

class Slerp : public Method {
 public:
  std::string_view name() const override { return "slerp"; }
  std::string_view pretty_name() const override { return "SLERP"; }
  std::string_view reference_url() const override { return "https://en.wikipedia.org/wiki/Slerp"; }
  std::vector<ParamSpec> global_params() const override {
    return {{"t", std::nullopt, "interpolation position: 0 gives the base, 1 the other model"}};
  }
  BaseUse base_use() const override { return BaseUse::kRequired; }
  bool card_names_base() const override { return false; }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs == 1) return;  // a tensor only one model has is copied, as mergekit does
    if (ctx.num_inputs != 2) {
      fail("slerp needs exactly 2 models (the base and one other) for tensor {}, got {}", ctx.name,
           ctx.num_inputs);
    }
    if (ctx.base < 0 || ctx.base > 1) {
      fail("slerp needs a base model for tensor {}; set base_model to one of the two models",
           ctx.name);
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    if (ctx.num_inputs == 1) return std::make_unique<SlerpMerger>(-1, -1, 0.0);
    return std::make_unique<SlerpMerger>(ctx.base, 1 - ctx.base, ctx.params->global_value("t"));
  }
};

}  // namespace

std::unique_ptr<Method> make_slerp() { return std::make_unique<Slerp>(); }

}  // namespace smelt::methods
