// PEFT merge_utils semantics, with smelt's exact top-k and counter-based random kernels.
#include "smelt/lora/task_merge.h"

#include <cmath>

#include "smelt/error.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/topk.h"

namespace smelt::lora {
namespace {

struct TypeName {
  CombinationType type;
  const char* name;
};
constexpr TypeName kTypes[] = {
    {CombinationType::kLinear, "linear"},
    {CombinationType::kCat, "cat"},
    {CombinationType::kSvd, "svd"},
    {CombinationType::kTies, "ties"},
    {CombinationType::kTiesSvd, "ties_svd"},
    {CombinationType::kDareLinear, "dare_linear"},
    {CombinationType::kDareTies, "dare_ties"},
    {CombinationType::kDareLinearSvd, "dare_linear_svd"},
    {CombinationType::kDareTiesSvd, "dare_ties_svd"},
    {CombinationType::kMagnitudePrune, "magnitude_prune"},
    {CombinationType::kMagnitudePruneSvd, "magnitude_prune_svd"},
};

void check_sizes(const std::vector<std::vector<float>>& t, const std::vector<double>& w) {
  if (t.empty() || t.size() != w.size())
    fail("internal: {} tensors, {} weights", t.size(), w.size());
  for (const auto& x : t) {
    if (x.size() != t[0].size()) fail("internal: tensors of different sizes");
  }
}

}  // namespace

CombinationType parse_combination_type(std::string_view name) {
  for (const TypeName& t : kTypes) {
    if (name == t.name) return t.type;
  }
  std::string all;
  for (const TypeName& t : kTypes) all += (all.empty() ? "" : ", ") + std::string(t.name);
  fail("unknown combination type '{}'; types: {}", name, all);
}

std::string combination_name(CombinationType type) {
  for (const TypeName& t : kTypes) {
    if (t.type == type) return t.name;
  }
  return "?";
}

bool is_svd_type(CombinationType t) {
  return t == CombinationType::kSvd || t == CombinationType::kTiesSvd ||
         t == CombinationType::kDareLinearSvd || t == CombinationType::kDareTiesSvd ||
         t == CombinationType::kMagnitudePruneSvd;
}

bool needs_density(CombinationType t) {
  return t != CombinationType::kLinear && t != CombinationType::kCat && t != CombinationType::kSvd;
}

void magnitude_prune(std::vector<float>& t, double density) {
  if (density < 0) fail("--density must not be negative (got {})", density);
  if (density >= 1) return;
  const uint64_t k = static_cast<uint64_t>(density * static_cast<double>(t.size()));
  kernels::TopKMagnitude top(t.size(), k);
  while (top.pass() != kernels::TopKMagnitude::Pass::kDone) {
    top.add(0, t.data(), t.size());
    top.end_pass();
  }
  top.keep_top(0, t.data(), t.size());
}

void dare_prune(std::vector<float>& t, double density, uint64_t key) {
  if (density < 0) fail("--density must not be negative (got {})", density);
  if (density >= 1) return;
  const float d = static_cast<float>(density);
  kernels::Draws draws(key);
  for (size_t i = 0; i < t.size(); ++i) t[i] = draws.uniform(i) < d ? t[i] / d : 0.0f;
}

std::vector<float> task_arithmetic(const std::vector<std::vector<float>>& t,
                                   const std::vector<double>& w) {
  check_sizes(t, w);
  std::vector<float> out(t[0].size());
  for (size_t e = 0; e < out.size(); ++e) {
    double s = 0;
    for (size_t i = 0; i < t.size(); ++i) s += w[i] * t[i][e];
    out[e] = static_cast<float>(s);
  }
  return out;
}

std::vector<float> disjoint_merge(const std::vector<std::vector<float>>& t,
                                  const std::vector<double>& w, MajoritySign sign) {
  check_sizes(t, w);
  std::vector<float> out(t[0].size());
  for (size_t e = 0; e < out.size(); ++e) {
    double m = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      const float x = t[i][e];
      m += sign == MajoritySign::kTotal ? double(x) : double((x > 0) - (x < 0));
    }
    const int elected = m >= 0 ? 1 : -1;
    double s = 0;
    int count = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      const float x = t[i][e];
      if ((x > 0 ? 1 : x < 0 ? -1 : 0) == elected) s += w[i] * x, ++count;
    }
    out[e] = static_cast<float>(s / std::max(1, count));
  }
  return out;
}

std::vector<float> combine_tensors(CombinationType type, std::vector<std::vector<float>> t,
                                   const std::vector<double>& w, double density, MajoritySign sign,
                                   uint64_t seed, const std::string& label) {
  auto dare_all = [&] {
    for (size_t i = 0; i < t.size(); ++i) {
      dare_prune(t[i], density, kernels::stream_key(seed, label, i));
    }
  };
  auto magnitude_all = [&] {
    for (auto& x : t) magnitude_prune(x, density);
  };
  switch (type) {
    case CombinationType::kLinear:
    case CombinationType::kSvd:
      return task_arithmetic(t, w);
    case CombinationType::kTies:
    case CombinationType::kTiesSvd:
      magnitude_all();
      return disjoint_merge(t, w, sign);
    case CombinationType::kDareLinear:
    case CombinationType::kDareLinearSvd:
      dare_all();
      return task_arithmetic(t, w);
    case CombinationType::kDareTies:
    case CombinationType::kDareTiesSvd:
      dare_all();
      return disjoint_merge(t, w, sign);
    case CombinationType::kMagnitudePrune:
    case CombinationType::kMagnitudePruneSvd:
      magnitude_all();
      return task_arithmetic(t, w);
    case CombinationType::kCat:
      break;
  }
  fail("internal: combine_tensors called for cat");
}

}  // namespace smelt::lora
