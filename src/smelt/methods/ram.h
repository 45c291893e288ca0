// ram and ramplus_tl (docs/methods.md, Reinforced Agent Merging): task-vector entries above epsilon
// that only one model changes are added whole, entries several models change are averaged.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "smelt/methods/method.h"

namespace smelt::methods {

// One of the two RAM methods.
struct RamVariant {
  std::string_view name;
  std::string_view pretty_name;
  // ramplus_tl: each model's unique entries are scaled by λ_i = 1 + r·clamp(ρ_i, 0, alpha), with
  // ρ_i = (its active shared entries) / max(its active unique entries, epsilon), counted over the
  // whole tensor in a statistics pass.
  bool tensor_local_boost = false;
};

// out = b + Σ_i [|τ_i| > ε] (c = 1 ? λ_i·τ_i : τ_i / c), with τ_i = x_i − b and c the number of
// models whose |τ| > ε at the element (λ_i = 1 for ram). f32 throughout (ε, r, alpha and ρ_i
// rounded to f32, as torch does). Parameters: G epsilon (1e-5); ramplus_tl also G r (0.1) and
// alpha (0.2). Needs a base model.
class RamMethod : public Method {
 public:
  explicit RamMethod(const RamVariant& variant) : variant_(variant) {}

  std::string_view name() const override { return variant_.name; }
  std::string_view pretty_name() const override { return variant_.pretty_name; }
  std::string_view reference_url() const override { return "https://arxiv.org/abs/2601.13572"; }
  std::vector<ParamSpec> global_params() const override;
  BaseUse base_use() const override { return BaseUse::kRequired; }
  void validate(const TensorContext& ctx) const override;
  std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const override;

 private:
  RamVariant variant_;
};

}  // namespace smelt::methods
