// linear (Model Soups): the weighted average, or weighted sum, of every input (docs/methods.md).
#include <fmt/ranges.h>

#include <memory>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

// The inputs' weights in f32 (smelt computes in f32) and their f32 sum in input order: the exact
// divisor merge uses, so validate rejects precisely the tensors that would divide by zero.
struct Weights {
  std::vector<float> values;
  float sum = 0.0f;
};

Weights read_weights(const TensorContext& ctx) {
  Weights weights;
  for (size_t i = 0; i < ctx.num_inputs; ++i) {
    const std::optional<double> w = ctx.params->model_value(i, "weight");
    if (!w) {
      fail("linear: model {} has no weight for tensor {}; give every model a weight", i, ctx.name);
    }
    weights.values.push_back(static_cast<float>(*w));
    weights.sum += weights.values.back();
  }
  return weights;
}

class LinearMerger : public TensorMerger {
 public:
  LinearMerger(Weights weights, bool normalize)
      : weights_(std::move(weights)), normalize_(normalize) {}

  void merge(const Chunk& chunk, float* out) override {
    const std::vector<float>& w = weights_.values;
    kernels::weighted_sum(chunk.inputs, w.data(), w.size(), normalize_, weights_.sum, out, chunk.n);
  }

 private:
  Weights weights_;
  bool normalize_;
};

class Linear : public Method {
 public:
  std::string_view name() const override { return "linear"; }
  std::string_view pretty_name() const override { return "Linear"; }
  std::string_view reference_url() const override { return "https://arxiv.org/abs/2203.05482"; }
  std::vector<ParamSpec> global_params() const override {
    return {{"normalize", 1.0, "divide by the sum of the weights"}};
  }
  std::vector<ParamSpec> model_params() const override {
    return {{"weight", std::nullopt, "the model's weight in the sum"}};
  }
  BaseUse base_use() const override { return BaseUse::kNone; }

  void validate(const TensorContext& ctx) const override {
    if (ctx.num_inputs == 0) fail("linear: no model has tensor {}", ctx.name);
    const Weights weights = read_weights(ctx);
    // mergekit divides by zero here and writes inf/NaN; smelt refuses instead.
    if (ctx.params->global_value("normalize") != 0.0 && weights.sum == 0.0f) {
      fail(
          "linear: the weights of tensor {} sum to zero ({}), so normalize would divide by zero; "
          "change the weights or set normalize: false",
          ctx.name, fmt::join(weights.values, ", "));
    }
  }

  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override {
    validate(ctx);
    return std::make_unique<LinearMerger>(read_weights(ctx),
                                          ctx.params->global_value("normalize") != 0.0);
  }
};

}  // namespace

std::unique_ptr<Method> make_linear() { return std::make_unique<Linear>(); }

}  // namespace smelt::methods
