// passthrough: copies its single input, optionally scaled; used for layer stacking
// (docs/methods.md).
#include <memory>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

class PassthroughMerger : public TensorMerger {
 public:
  explicit PassthroughMerger(float scale) : scale_(scale) {}

  void merge(const Chunk& chunk, float* out) override {
    kernels::scale(scale_, chunk.inputs[0], out, chunk.n);
  }

 private:
  float scale_;
};

class Passthrough : public Method {
 public:
  std::string_view name() const override { return "passthrough"; }
  std::string_view pretty_name() const override { return "Passthrough"; }
  std::string_view reference_url() const override { return ""; }  // mergekit gives none
  std::vector<ParamSpec> model_params() const override {
    // mergekit's default is "none", meaning no scaling; scale 1 gives the same bits (x * 1 == x).
    return {{"scale", 1.0, "multiply the tensor by this factor"}};
  }
  BaseUse base_use() const override { return BaseUse::kNone; }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs != 1) {
      fail(
          "passthrough needs exactly 1 model for tensor {}, got {}; passthrough copies tensors, "
          "so give each slice a single source (and no base_model)",
          ctx.name, ctx.num_inputs);
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    return std::make_unique<PassthroughMerger>(
        static_cast<float>(model_value_or(ctx, 0, "scale", 1.0)));
  }
};

}  // namespace

std::unique_ptr<Method> make_passthrough() { return std::make_unique<Passthrough>(); }

}  // namespace smelt::methods
