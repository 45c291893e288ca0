// ram (docs/methods.md): unique task-vector entries added whole, shared ones averaged; and the
// RamMethod that ramplus_tl shares.
#include "smelt/methods/ram.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "smelt/error.h"
#include "smelt/methods/factories.h"

namespace smelt::methods {
namespace {

class RamMerger : public TensorMerger {
 public:
  RamMerger(const RamVariant& variant, const TensorContext& ctx)
      : base_(static_cast<size_t>(ctx.base)), boost_(variant.tensor_local_boost) {
    const ResolvedParams& params = *ctx.params;
    epsilon_ = params.global_value("epsilon");
    if (boost_) {
      r_ = static_cast<float>(params.global_value("r"));
      alpha_ = static_cast<float>(params.global_value("alpha"));
    }
    for (size_t i = 0; i < ctx.num_inputs; ++i) {
      if (i != base_) tasks_.push_back(i);
    }
    lambda_.assign(tasks_.size(), 1.0f);
  }

  // ramplus_tl counts each model's active unique and shared entries in one pass.
  int stat_passes() const override { return boost_ && !tasks_.empty() ? 1 : 0; }

  void gather(int /*pass*/, const Chunk& chunk) override {
    const size_t count = tasks_.size();
    std::vector<uint64_t> counts(2 * count, 0);  // unique, shared per task
    const float* base = chunk.inputs[base_];
    const float eps = static_cast<float>(epsilon_);
    for (size_t j = 0; j < chunk.n; ++j) {
      const size_t active = active_count(chunk, j, eps);
      if (active == 0) continue;
      for (size_t t = 0; t < count; ++t) {
        if (std::abs(chunk.inputs[tasks_[t]][j] - base[j]) > eps) ++counts[2 * t + (active > 1)];
      }
    }
    partials_.put(chunk.index, counts);
  }

  void end_pass(int /*pass*/) override {
    std::vector<uint64_t> total(2 * tasks_.size(), 0);
    for (const auto& [index, counts] : partials_.in_order()) {
      for (size_t c = 0; c < total.size(); ++c) total[c] += counts[c];
    }
    partials_.clear();
    for (size_t t = 0; t < tasks_.size(); ++t) {
      const uint64_t unique = total[2 * t];
      const uint64_t shared = total[2 * t + 1];
      // A model without unique entries never uses λ. (mergekit computes it anyway and, with
      // epsilon ≤ 0 and no shared entries either, gets 0/0 = NaN, which poisons the whole tensor.)
      if (unique == 0) continue;
      // ρ = shared / clamp(unique, min=ε) and λ = 1 + r·clamp(ρ, 0, α), in f32 as torch does.
      const float rho = static_cast<float>(shared) /
                        std::max(static_cast<float>(unique), static_cast<float>(epsilon_));
      lambda_[t] = 1.0f + r_ * std::min(std::max(rho, 0.0f), alpha_);
    }
  }

  void merge(const Chunk& chunk, float* out) override {
    const float* base = chunk.inputs[base_];
    if (tasks_.empty()) {
      std::memcpy(out, base, chunk.n * sizeof(float));
      return;
    }
    const float eps = static_cast<float>(epsilon_);
    for (size_t j = 0; j < chunk.n; ++j) {
      const size_t active = active_count(chunk, j, eps);
      float mixed = 0.0f;
      for (size_t t = 0; t < tasks_.size() && active > 0; ++t) {
        const float tau = chunk.inputs[tasks_[t]][j] - base[j];
        if (!(std::abs(tau) > eps)) continue;
        mixed += active == 1 ? tau * lambda_[t] : tau / static_cast<float>(active);
      }
      out[j] = base[j] + mixed;
    }
  }

 private:
  // How many task vectors have |τ| > ε at element j of the chunk.
  size_t active_count(const Chunk& chunk, size_t j, float eps) const {
    const float b = chunk.inputs[base_][j];
    size_t active = 0;
    for (size_t i : tasks_) active += std::abs(chunk.inputs[i][j] - b) > eps;
    return active;
  }

  size_t base_;
  bool boost_;
  double epsilon_ = 1e-5;
  float r_ = 0.0f;
  float alpha_ = 0.0f;
  std::vector<size_t> tasks_;  // non-base inputs, in input order
  std::vector<float> lambda_;  // λ_i per task (1 for ram)
  ChunkPartials<std::vector<uint64_t>> partials_;
};

}  // namespace

std::vector<ParamSpec> RamMethod::global_params() const {
  std::vector<ParamSpec> params;
  if (variant_.tensor_local_boost) {
    params.push_back({"r", 0.1, "strength of the boost of each model's unique entries"});
    params.push_back({"alpha", 0.2, "upper clamp of the shared/unique ratio in the boost"});
  }
  params.push_back({"epsilon", 1e-5, "task-vector entries with |τ| <= epsilon are ignored"});
  return params;
}

void RamMethod::validate(const TensorContext& ctx) const {
  if (ctx.base < 0 || static_cast<size_t>(ctx.base) >= ctx.num_inputs) {
    fail("{} needs a base model for tensor {}; set base_model to a model that has this tensor",
         name(), ctx.name);
  }
}

std::unique_ptr<TensorMerger> RamMethod::begin(const TensorContext& ctx) const {
  validate(ctx);
  return std::make_unique<RamMerger>(variant_, ctx);
}

std::unique_ptr<Method> make_ram() {
  return std::make_unique<RamMethod>(RamVariant{
      .name = "ram",
      .pretty_name = "Reinforced Agent Merging",
      .tensor_local_boost = false,
  });
}

}  // namespace smelt::methods
