// nearswap: takes the other model's value where it is close to the base and keeps the base where
// they differ much, elementwise (docs/methods.md).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "smelt/error.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// mergekit clamps |b − x| to at least this before dividing.
constexpr float kDistanceFloor = 1e-6f;

class CopyMerger : public TensorMerger {
 public:
  void merge(const Chunk& chunk, float* out) override {
    std::memcpy(out, chunk.inputs[0], chunk.n * sizeof(float));
  }
};

class NearswapMerger : public TensorMerger {
 public:
  NearswapMerger(size_t base, size_t other, float t) : base_(base), other_(other), t_(t) {}

  void merge(const Chunk& chunk, float* out) override {
    const float* b = chunk.inputs[base_];
    const float* x = chunk.inputs[other_];
    for (size_t j = 0; j < chunk.n; ++j) {
      // mergekit's f32 order of operations: t / d is computed as (1/d)·t.
      const float distance = std::max(std::fabs(b[j] - x[j]), kDistanceFloor);
      const float w = std::clamp((1.0f / distance) * t_, 0.0f, 1.0f);
      out[j] = w * x[j] + (1.0f - w) * b[j];
    }
  }

 private:
  size_t base_;
  size_t other_;
  float t_;
};

class Nearswap : public Method {
 public:
  std::string_view name() const override { return "nearswap"; }
  std::string_view pretty_name() const override { return "NearSwap"; }
  std::string_view reference_url() const override {
    return "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001";
  }
  std::vector<ParamSpec> global_params() const override {
    return {{"t", std::nullopt,
             "distance scale: elements closer than t to the base take the other model's value"}};
  }
  BaseUse base_use() const override { return BaseUse::kRequired; }

  void validate(const TensorContext& ctx) const override {
    if (ctx.base < 0 || static_cast<size_t>(ctx.base) >= ctx.num_inputs) {
      fail(
          "nearswap needs a base model for tensor {}; set base_model to a model that has this "
          "tensor",
          ctx.name);
    }
    if (ctx.num_inputs > 2) {
      fail("nearswap needs exactly 2 models (the base and one other) for tensor {}, got {}",
           ctx.name, ctx.num_inputs);
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    if (ctx.num_inputs == 1) return std::make_unique<CopyMerger>();  // only the base
    const auto base = static_cast<size_t>(ctx.base);
    return std::make_unique<NearswapMerger>(base, 1 - base,
                                            static_cast<float>(ctx.params->global_value("t")));
  }
};

}  // namespace

std::unique_ptr<Method> make_nearswap() { return std::make_unique<Nearswap>(); }

}  // namespace smelt::methods
