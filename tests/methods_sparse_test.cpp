// Tests of breadcrumbs, breadcrumbs_ties, della, della_linear, sce, ram and ramplus_tl. Each method
// runs as the executor runs it (method_driver.h: shuffled chunks, threads) and is compared with an
// independent whole-tensor reference in double precision that ranks by sorting (larger |x| first,
// then lower element index); only the random masks reproduce smelt's generator (random.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "method_driver.h"
#include "smelt/kernels/random.h"
#include "smelt/methods/method.h"

namespace smelt::methods {
namespace {

using namespace smelt::testing::method_driver;

// ---------------------------------------------------------------------------------------------
// Test data and comparison.

// Reference values and the scale of the terms behind each (the tolerance is relative to it);
// elements whose result hinges on the sign of a sum within rounding of zero are skipped.
struct Reference {
  std::vector<double> value;
  std::vector<double> scale;
  std::vector<bool> ambiguous;
};

constexpr double kRelTol = 1e-6;

void expect_matches(const Tensor& got, const Reference& ref) {
  ASSERT_EQ(got.size(), ref.value.size());
  size_t bad = 0;
  for (size_t j = 0; j < got.size(); ++j) {
    if (!ref.ambiguous.empty() && ref.ambiguous[j]) continue;
    const double tol = kRelTol * std::max(std::abs(ref.value[j]), ref.scale[j]);
    if (!(std::abs(got[j] - ref.value[j]) <= tol)) {
      if (++bad <= 5) {
        ADD_FAILURE() << "element " << j << ": got " << got[j] << ", reference " << ref.value[j]
                      << ", tolerance " << tol;
      }
    }
  }
  EXPECT_EQ(bad, 0u);
}

std::vector<bool> nonzero(const Tensor& t) {
  std::vector<bool> mask(t.size());
  for (size_t j = 0; j < t.size(); ++j) mask[j] = t[j] != 0.0f;
  return mask;
}

// got[j] within 4 ulps of want[j] (hand-computed values).
void expect_floats(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t j = 0; j < got.size(); ++j) EXPECT_FLOAT_EQ(got[j], want[j]) << "element " << j;
}

size_t count(const std::vector<bool>& mask) {
  return static_cast<size_t>(std::count(mask.begin(), mask.end(), true));
}

double fraction_differing(const std::vector<bool>& a, const std::vector<bool>& b) {
  size_t diff = 0;
  for (size_t j = 0; j < a.size(); ++j) diff += a[j] != b[j];
  return static_cast<double>(diff) / static_cast<double>(a.size());
}

// Inputs for a GTA method: `models` random models near a random base, then the base.
Inputs gta_inputs(size_t n, const std::vector<double>& weights,
                  const std::vector<double>& densities, uint32_t seed) {
  Inputs in;
  Tensor base = normal_tensor(n, seed + 999, 0.02f);
  for (size_t i = 0; i < weights.size(); ++i) {
    Tensor x = normal_tensor(n, seed + 17 * i, 0.02f, 0.01f * i);
    for (size_t j = 0; j < n; ++j) x[j] += base[j];
    in.tensors.push_back(std::move(x));
    in.per_model.push_back({{"weight", weights[i]}, {"density", densities[i]}});
  }
  in.tensors.push_back(base);
  in.per_model.push_back({});
  in.base = static_cast<int>(weights.size());
  return in;
}

// One model over a zero base: the merged output is the (sparsified, weighted) task vector.
Inputs single_model(Tensor x, ParamMap params, std::vector<uint64_t> shape = {}) {
  Inputs in;
  const size_t n = x.size();
  in.tensors = {std::move(x), Tensor(n, 0.0f)};
  in.base = 1;
  params.emplace("weight", 1.0);
  in.per_model = {params, {}};
  in.shape = std::move(shape);
  return in;
}

std::vector<float> task_vector(const Inputs& in, size_t i) {
  const Tensor& b = in.tensors[in.base];
  std::vector<float> delta(b.size());
  for (size_t j = 0; j < b.size(); ++j) delta[j] = in.tensors[i][j] - b[j];
  return delta;
}

// ---------------------------------------------------------------------------------------------
// Independent references.

// Element indices from highest- to lowest-ranked: larger |v| first, then lower index.
std::vector<size_t> rank_order(const std::vector<float>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const float ma = std::abs(v[a]), mb = std::abs(v[b]);
    return ma != mb ? ma > mb : a < b;
  });
  return order;
}

// The k highest-ranked elements.
std::vector<bool> top_k_mask(const std::vector<float>& v, uint64_t k) {
  const std::vector<size_t> order = rank_order(v);
  std::vector<bool> keep(v.size(), false);
  for (uint64_t r = 0; r < k && r < v.size(); ++r) keep[order[r]] = true;
  return keep;
}

// breadcrumbs (docs/methods.md, without the n_top = 0 quirk): sort ascending, keep [n_bot, N −
// n_top).
std::vector<bool> breadcrumbs_mask(const std::vector<float>& delta, double density, double gamma) {
  const auto n = static_cast<long long>(delta.size());
  const auto keep = static_cast<long long>(std::floor(density * n));
  auto n_top = static_cast<long long>(std::floor(gamma * n));
  auto n_bot = n - keep - n_top;
  if (n_bot < 0) {
    n_top += n_bot;
    n_bot = 0;
  }
  std::vector<size_t> ascending = rank_order(delta);
  std::reverse(ascending.begin(), ascending.end());
  std::vector<bool> mask(delta.size(), false);
  for (long long r = n_bot; r < n - n_top; ++r) mask[ascending[r]] = true;
  return mask;
}

// della (docs/methods.md): rank within each group along dim 1, p from the rank, Bernoulli(p) with
// smelt's generator (its key and f32 formula for p, so that masks can be compared exactly).
std::vector<bool> della_mask(const std::vector<float>& delta, std::vector<uint64_t> shape,
                             double density, double epsilon, uint64_t key) {
  if (shape.size() < 2) shape = {1, delta.size()};
  const uint64_t outer = shape[0], size = shape[1];
  const uint64_t stride = delta.size() / (outer * size);
  const float low = static_cast<float>(density - epsilon);
  const float eps = static_cast<float>(epsilon);
  std::vector<bool> mask(delta.size(), false);
  for (uint64_t a = 0; a < outer; ++a) {
    for (uint64_t c = 0; c < stride; ++c) {
      std::vector<size_t> index(size);
      std::vector<float> group(size);
      for (uint64_t b = 0; b < size; ++b) {
        index[b] = (a * size + b) * stride + c;
        group[b] = delta[index[b]];
      }
      const std::vector<size_t> order = rank_order(group);  // position q ↔ rank size − q
      for (uint64_t q = 0; q < size; ++q) {
        const float p =
            size == 1
                ? static_cast<float>(density)
                : low + (static_cast<float>(size - 1 - q) / static_cast<float>(size - 1) * 2.0f) *
                            eps;
        const size_t j = index[order[q]];
        mask[j] = kernels::draw_uniform(key, j) < p;
      }
    }
  }
  return mask;
}

struct TaskRef {
  double weight;
  std::optional<std::vector<bool>> keep;  // nullopt: not sparsified
};

struct GtaSetup {
  bool consensus = false;
  bool normalize = false;
  bool rescale = false;
  double lambda = 1.0;
};

// The GTA merge (docs/methods.md) of masked task vectors, in double.
Reference gta_reference(const Inputs& in, const std::vector<TaskRef>& tasks, const GtaSetup& s) {
  const Tensor& b = in.tensors[in.base];
  const size_t n = b.size();
  std::vector<std::vector<double>> d_list;
  std::vector<double> w_list;
  size_t t = 0;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) == in.base) continue;
    const TaskRef& task = tasks[t++];
    const std::vector<float> delta = task_vector(in, i);
    double l1 = 0, kept_l1 = 0;
    for (size_t j = 0; j < n; ++j) {
      l1 += std::abs(delta[j]);
      if (!task.keep || (*task.keep)[j]) kept_l1 += std::abs(delta[j]);
    }
    const double factor =
        task.keep && s.rescale && l1 >= 1e-7 && kept_l1 >= 1e-7 ? l1 / kept_l1 : 1.0;
    std::vector<double> d(n);
    for (size_t j = 0; j < n; ++j) {
      d[j] = !task.keep || (*task.keep)[j] ? task.weight * delta[j] * factor : 0.0;
    }
    d_list.push_back(std::move(d));
    w_list.push_back(task.weight);
  }
  Reference ref{std::vector<double>(n), std::vector<double>(n), std::vector<bool>(n, false)};
  const double wsum = std::accumulate(w_list.begin(), w_list.end(), 0.0);
  for (size_t j = 0; j < n; ++j) {
    double sum = 0, abs_sum = 0;
    for (const auto& d : d_list) {
      sum += d[j];
      abs_sum += std::abs(d[j]);
    }
    double mixed = 0, divisor = 0, terms = 0;
    if (s.consensus) {
      const double sign = sum >= 0 ? 1.0 : -1.0;
      ref.ambiguous[j] = std::abs(sum) <= 1e-5 * abs_sum && abs_sum > 0;
      for (size_t k = 0; k < d_list.size(); ++k) {
        if (d_list[k][j] * sign > 0) {
          mixed += d_list[k][j];
          divisor += w_list[k];
          terms += std::abs(d_list[k][j]);
        }
      }
      if (divisor == 0) divisor = 1;
    } else {
      mixed = sum;
      terms = abs_sum;
      divisor = std::abs(wsum) < 1e-8 ? 1.0 : wsum;
    }
    if (s.normalize) {
      mixed /= divisor;
      terms /= std::abs(divisor);
    }
    ref.value[j] = b[j] + s.lambda * mixed;
    ref.scale[j] = std::abs(b[j]) + std::abs(s.lambda) * terms;
  }
  return ref;
}

// sce (docs/methods.md) in double, the selection by a sort of the variances.
Reference sce_reference(const Inputs& in, double select_topk) {
  const Tensor& b = in.tensors[in.base];
  const size_t n = b.size();
  std::vector<std::vector<double>> tau;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) == in.base) continue;
    const std::vector<float> delta = task_vector(in, i);
    tau.emplace_back(delta.begin(), delta.end());
  }
  const double models = static_cast<double>(tau.size());
  if (select_topk < 1) {
    std::vector<float> var(n);
    size_t nonzero_var = 0;
    for (size_t j = 0; j < n; ++j) {
      double mean = 0, sq = 0;
      for (const auto& t : tau) mean += t[j];
      mean /= models;
      for (const auto& t : tau) sq += (t[j] - mean) * (t[j] - mean);
      var[j] = static_cast<float>(sq / models);
      nonzero_var += var[j] != 0.0f;
    }
    const auto k = select_topk <= 0 ? 0
                                    : static_cast<uint64_t>(static_cast<float>(nonzero_var) *
                                                            static_cast<float>(select_topk));
    const std::vector<bool> keep = top_k_mask(var, k);
    for (auto& t : tau) {
      for (size_t j = 0; j < n; ++j) t[j] = keep[j] ? t[j] : 0.0;
    }
  }
  std::vector<double> c(tau.size());
  double csum = 0;
  for (size_t i = 0; i < tau.size(); ++i) {
    for (double v : tau[i]) c[i] += v * v / static_cast<double>(n);
    csum += c[i];
  }
  for (double& ci : c) ci = std::abs(csum) < 1e-6 ? 1.0 / models : ci / csum;
  Reference ref{std::vector<double>(n), std::vector<double>(n), std::vector<bool>(n, false)};
  for (size_t j = 0; j < n; ++j) {
    double sum = 0, abs_sum = 0;
    for (const auto& t : tau) {
      sum += t[j];
      abs_sum += std::abs(t[j]);
    }
    const double sign = sum >= 0 ? 1.0 : -1.0;
    ref.ambiguous[j] = std::abs(sum) <= 1e-5 * abs_sum && abs_sum > 0;
    double mixed = 0, divisor = 0, terms = 0;
    for (size_t i = 0; i < tau.size(); ++i) {
      if (tau[i][j] * sign > 0) {
        mixed += tau[i][j] * c[i];
        divisor += c[i];
        terms += std::abs(tau[i][j] * c[i]);
      }
    }
    divisor = std::max(divisor, 1e-6);
    ref.value[j] = b[j] + mixed / divisor;
    ref.scale[j] = std::abs(b[j]) + terms / divisor;
  }
  return ref;
}

// ram / ramplus_tl (docs/methods.md) in double; r = 0 gives ram.
Reference ram_reference(const Inputs& in, double epsilon, double r, double alpha) {
  const Tensor& b = in.tensors[in.base];
  const size_t n = b.size();
  std::vector<std::vector<float>> tau;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) != in.base) tau.push_back(task_vector(in, i));
  }
  const auto eps = static_cast<float>(epsilon);
  std::vector<size_t> active(n, 0);
  for (size_t j = 0; j < n; ++j) {
    for (const auto& t : tau) active[j] += std::abs(t[j]) > eps;
  }
  std::vector<double> lambda(tau.size(), 1.0);
  for (size_t i = 0; i < tau.size(); ++i) {
    double unique = 0, shared = 0;
    for (size_t j = 0; j < n; ++j) {
      if (std::abs(tau[i][j]) > eps) (active[j] == 1 ? unique : shared) += 1;
    }
    if (unique > 0) lambda[i] = 1 + r * std::clamp(shared / std::max(unique, epsilon), 0.0, alpha);
  }
  Reference ref{std::vector<double>(n), std::vector<double>(n), {}};
  for (size_t j = 0; j < n; ++j) {
    double mixed = 0, terms = 0;
    for (size_t i = 0; i < tau.size(); ++i) {
      if (!(std::abs(tau[i][j]) > eps)) continue;
      const double v = active[j] == 1 ? lambda[i] * tau[i][j] : tau[i][j] / active[j];
      mixed += v;
      terms += std::abs(v);
    }
    ref.value[j] = b[j] + mixed;
    ref.scale[j] = std::abs(b[j]) + terms;
  }
  return ref;
}

// ---------------------------------------------------------------------------------------------
// Registry.

TEST(SparseMethods, RegisteredWithMergekitNamesParametersAndDefaults) {
  struct Expected {
    std::string pretty, url;
    std::map<std::string, std::optional<double>> global, model;
  };
  const std::map<std::string, std::optional<double>> gta_model_base = {{"weight", std::nullopt},
                                                                       {"density", 1.0}};
  auto gta_global = [](double normalize, double rescale) {
    return std::map<std::string, std::optional<double>>{
        {"int8_mask", 0.0}, {"normalize", normalize}, {"rescale", rescale}, {"lambda", 1.0}};
  };
  auto with = [](std::map<std::string, std::optional<double>> m, const std::string& name,
                 double value) {
    m[name] = value;
    return m;
  };
  const std::map<std::string, Expected> expected = {
      {"breadcrumbs",
       {"Model Breadcrumbs", "https://arxiv.org/abs/2312.06795", gta_global(0, 0),
        with(gta_model_base, "gamma", 0.01)}},
      {"breadcrumbs_ties",
       {"Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795", gta_global(0, 0),
        with(gta_model_base, "gamma", 0.01)}},
      {"della",
       {"DELLA", "https://arxiv.org/abs/2406.11617", gta_global(1, 1),
        with(gta_model_base, "epsilon", 0.15)}},
      {"della_linear",
       {"Linear DELLA", "https://arxiv.org/abs/2406.11617", gta_global(0, 1),
        with(gta_model_base, "epsilon", 0.15)}},
      {"sce",
       {"SCE", "https://arxiv.org/abs/2408.07990", {{"int8_mask", 0.0}, {"select_topk", 1.0}}, {}}},
      {"ram",
       {"Reinforced Agent Merging", "https://arxiv.org/abs/2601.13572", {{"epsilon", 1e-5}}, {}}},
      {"ramplus_tl",
       {"Reinforced Agent Merging Plus (Tensor-Local)",
        "https://arxiv.org/abs/2601.13572",
        {{"r", 0.1}, {"alpha", 0.2}, {"epsilon", 1e-5}},
        {}}},
  };
  for (const auto& [name, e] : expected) {
    const Method* m = find_method(name);
    ASSERT_NE(m, nullptr) << name;
    EXPECT_EQ(m->name(), name);
    EXPECT_EQ(m->pretty_name(), e.pretty) << name;
    EXPECT_EQ(m->reference_url(), e.url) << name;
    EXPECT_EQ(m->base_use(), BaseUse::kRequired) << name;
    std::map<std::string, std::optional<double>> global, model;
    for (const ParamSpec& p : m->global_params()) global[p.name] = p.default_value;
    for (const ParamSpec& p : m->model_params()) model[p.name] = p.default_value;
    EXPECT_EQ(global, e.global) << name;
    EXPECT_EQ(model, e.model) << name;
  }
  // mergekit's registry order: the GTA rows after dare_linear, sce and ram at the end.
  const std::vector<std::string> names = method_names();
  auto position = [&](const std::string& n) {
    return std::find(names.begin(), names.end(), n) - names.begin();
  };
  EXPECT_EQ(position("breadcrumbs"), position("dare_linear") + 1);
  EXPECT_EQ(position("della_linear"), position("breadcrumbs") + 3);
  EXPECT_EQ(position("ram"), position("sce") + 1);
  EXPECT_EQ(position("ramplus_tl"), position("sce") + 2);
}

TEST(SparseMethods, NeedABaseModelNamingTheTensor) {
  for (const char* name :
       {"breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "ram", "ramplus_tl"}) {
    Inputs in = gta_inputs(10, {1.0, 1.0}, {0.5, 0.5}, 1);
    EXPECT_EQ(validate_error(method(name), in), "") << name;
    in.base = -1;
    const std::string error = validate_error(method(name), in);
    EXPECT_NE(error.find(kTensorName), std::string::npos) << name << ": " << error;
    EXPECT_NE(error.find("base"), std::string::npos) << name << ": " << error;
  }
}

// ---------------------------------------------------------------------------------------------
// breadcrumbs / breadcrumbs_ties

TEST(Breadcrumbs, HandExampleDropsTheLargestAndTheSmallestEntries) {
  // N = 10, density 0.5, gamma 0.2: keep 5, n_top 2, n_bot 3, so |δ| ∈ {4, …, 8} survive.
  const Tensor x = {-3, 9, 1, -8, 5, 10, -2, 6, -7, 4};
  const Tensor out =
      run(method("breadcrumbs"), single_model(x, {{"density", 0.5}, {"gamma", 0.2}}));
  EXPECT_EQ(out, (Tensor{0, 0, 0, -8, 5, 0, 0, 6, -7, 4}));
  // Equal magnitudes rank by element index (lower index ranks higher): with |δ| all 1, the two
  // lowest indices are the outliers and the three highest the smallest.
  const Tensor ones = {1, -1, 1, -1, 1, -1, 1, -1, 1, -1};
  EXPECT_EQ(run(method("breadcrumbs"), single_model(ones, {{"density", 0.5}, {"gamma", 0.2}})),
            (Tensor{0, 0, 1, -1, 1, -1, 1, 0, 0, 0}));
}

TEST(Breadcrumbs, KeepsExactlyFloorDensityTimesNForAnyGamma) {
  const size_t n = 100003;
  const double density = 0.3;
  const Tensor x = tiny_set_tensor(n, 7);  // thousands of ties at both thresholds
  const auto keep = static_cast<size_t>(std::floor(density * n));
  for (double f : {0.1, 0.2, 0.5, 1.0, 2.0}) {
    const double gamma = f * (1 - density);
    const Tensor out =
        run(method("breadcrumbs"), single_model(x, {{"density", density}, {"gamma", gamma}}),
            {.chunk = 4099, .shuffle = static_cast<uint32_t>(10 * f), .threads = 2});
    const std::vector<bool> kept = nonzero(out);
    EXPECT_EQ(count(kept), keep) << "gamma " << gamma;
    EXPECT_TRUE(kept == breadcrumbs_mask(x, density, gamma)) << "gamma " << gamma;
  }
}

TEST(Breadcrumbs, GammaZeroKeepsTheLargestEntriesLikeTopK) {
  // mergekit's slice [n_bot:-0] is empty and zeroes the whole delta; smelt drops nothing at the
  // top, so breadcrumbs with gamma 0 keeps what ties' magnitude top-k keeps.
  const Tensor x = tiny_set_tensor(50000, 8);
  const Tensor out =
      run(method("breadcrumbs"), single_model(x, {{"density", 0.2}, {"gamma", 0.0}}));
  EXPECT_TRUE(nonzero(out) == top_k_mask(x, 10000));
  // A small tensor where floor(gamma·N) = 0 with the default gamma 0.01 (a 32-element bias).
  const Tensor bias = normal_tensor(32, 9);
  const Tensor small = run(method("breadcrumbs"), single_model(bias, {{"density", 0.5}}));
  EXPECT_TRUE(nonzero(small) == top_k_mask(bias, 16));
  for (size_t j = 0; j < bias.size(); ++j) {
    if (small[j] != 0.0f) EXPECT_EQ(small[j], bias[j]);
  }
}

TEST(Breadcrumbs, MatchesReferenceWithSeveralModels) {
  const std::vector<double> w = {1.0, 0.6, -0.3};
  const std::vector<double> d = {0.5, 0.3, 0.9};
  const std::vector<double> g = {0.05, 0.0, 0.2};
  Inputs in = gta_inputs(40000, w, d, 11);
  for (size_t i = 0; i < 3; ++i) in.per_model[i]["gamma"] = g[i];
  std::vector<TaskRef> tasks;
  for (size_t i = 0; i < 3; ++i)
    tasks.push_back({w[i], breadcrumbs_mask(task_vector(in, i), d[i], g[i])});
  expect_matches(run(method("breadcrumbs"), in, {.chunk = 3000, .shuffle = 4}),
                 gta_reference(in, tasks, {}));
  in.global = {{"normalize", 1}, {"rescale", 1}, {"lambda", 1.5}};
  expect_matches(run(method("breadcrumbs"), in, {.chunk = 3000, .shuffle = 5, .threads = 2}),
                 gta_reference(in, tasks, {.normalize = true, .rescale = true, .lambda = 1.5}));
}

TEST(BreadcrumbsTies, MatchesReferenceWithSignElection) {
  const std::vector<double> w = {1.0, 0.6, 0.3};
  const std::vector<double> d = {0.5, 0.3, 0.9};
  Inputs in = gta_inputs(40000, w, d, 12);
  std::vector<TaskRef> tasks;
  for (size_t i = 0; i < 3; ++i)
    tasks.push_back({w[i], breadcrumbs_mask(task_vector(in, i), d[i], 0.01)});
  expect_matches(run(method("breadcrumbs_ties"), in, {.chunk = 2048, .threads = 2}),
                 gta_reference(in, tasks, {.consensus = true}));
  in.global["normalize"] = 1;
  expect_matches(run(method("breadcrumbs_ties"), in, {.chunk = 5000, .shuffle = 3}),
                 gta_reference(in, tasks, {.consensus = true, .normalize = true}));
}

// Above kSampleMinElements both selections of each task vector start with a shared sample pass.
TEST(Breadcrumbs, SampledLargeTensorMatchesReference) {
  const std::vector<double> w = {1.0, 0.6};
  const std::vector<double> d = {0.5, 0.3};
  Inputs in = gta_inputs(kSampleMinElements + 777, w, d, 13);
  std::vector<TaskRef> tasks;
  for (size_t i = 0; i < 2; ++i)
    tasks.push_back({w[i], breadcrumbs_mask(task_vector(in, i), d[i], 0.01)});
  expect_matches(run(method("breadcrumbs"), in, {.chunk = 8192, .shuffle = 7, .threads = 2}),
                 gta_reference(in, tasks, {}));
}

TEST(Breadcrumbs, DensityOneKeepsTheTaskVectorWhole) {
  // density ≥ 1 returns δ unchanged in mergekit, whatever gamma.
  const Tensor x = normal_tensor(1000, 13);
  EXPECT_TRUE(same_bits(
      run(method("breadcrumbs"), single_model(x, {{"density", 1.0}, {"gamma", 0.3}})), x));
}

TEST(Breadcrumbs, KeepZeroDropsTheTaskVectorWithOneWarning) {
  Inputs in = gta_inputs(1000, {1.0, 0.5}, {0.0005, 0.4}, 14);
  const Tensor out = run(method("breadcrumbs_ties"), in);
  std::vector<TaskRef> tasks = {{1.0, std::vector<bool>(1000, false)},
                                {0.5, breadcrumbs_mask(task_vector(in, 1), 0.4, 0.01)}};
  expect_matches(out, gta_reference(in, tasks, {.consensus = true}));
  const Method& m = method("breadcrumbs_ties");
  const ResolvedParams params = resolve(m, in);
  const std::vector<std::string> warnings = m.warnings(context(in, params));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find(kTensorName), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("density 0.0005"), std::string::npos) << warnings[0];
  in.per_model[0]["density"] = 0.001;  // floor(0.001 · 1000) = 1
  EXPECT_TRUE(m.warnings(context(in, resolve(m, in))).empty());
}

TEST(Breadcrumbs, NegativeGammaIsAnErrorNamingTheParameterAndTensor) {
  Inputs in = gta_inputs(10, {1.0, 1.0}, {0.5, 0.5}, 15);
  in.per_model[1]["gamma"] = -0.1;
  const std::string error = validate_error(method("breadcrumbs"), in);
  EXPECT_NE(error.find("gamma"), std::string::npos) << error;
  EXPECT_NE(error.find("-0.1"), std::string::npos) << error;
  EXPECT_NE(error.find(kTensorName), std::string::npos) << error;
  in.per_model[1]["density"] = 1.0;  // gamma unused, as in mergekit
  EXPECT_EQ(validate_error(method("breadcrumbs"), in), "");
}

// ---------------------------------------------------------------------------------------------
// della / della_linear

TEST(Della, KeepProbabilityGrowsLinearlyWithRankInsideEachRow) {
  // Rows (3, −1, 2): ranks 3, 1, 2, so rank_norm 1, 0, 0.5 and, with density 0.5 and ε 0.4,
  // keep probabilities 0.9, 0.1, 0.5.
  const size_t rows = 100000;
  Tensor x;
  for (size_t r = 0; r < rows; ++r) x.insert(x.end(), {3.0f, -1.0f, 2.0f});
  Inputs in = single_model(x, {{"density", 0.5}, {"epsilon", 0.4}}, {rows, 3});
  in.global["rescale"] = 0;
  const Tensor out = run(method("della_linear"), in, {.chunk = 3000, .threads = 2});
  double kept[3] = {0, 0, 0};
  for (size_t j = 0; j < out.size(); ++j) {
    if (out[j] != 0.0f) {
      EXPECT_EQ(out[j], x[j]);
      kept[j % 3] += 1.0 / rows;
    }
  }
  EXPECT_NEAR(kept[0], 0.9, 0.005);
  EXPECT_NEAR(kept[1], 0.1, 0.005);
  EXPECT_NEAR(kept[2], 0.5, 0.005);
}

TEST(Della, MatchesReferenceOnMatricesWithSeveralModels) {
  const std::vector<double> w = {0.8, 0.5, 0.4};
  const std::vector<double> d = {0.3, 0.6, 0.5};
  const std::vector<double> e = {0.15, 0.1, 0.0};
  Inputs in = gta_inputs(300 * 128, w, d, 21);
  in.shape = {300, 128};
  in.seed = 1234;
  for (size_t i = 0; i < 3; ++i) in.per_model[i]["epsilon"] = e[i];
  std::vector<TaskRef> tasks;
  for (size_t i = 0; i < 3; ++i) {
    tasks.push_back({w[i], della_mask(task_vector(in, i), in.shape, d[i], e[i],
                                      kernels::stream_key(in.seed, in.name, i))});
  }
  expect_matches(run(method("della"), in, {.chunk = 5000, .threads = 2}),
                 gta_reference(in, tasks, {.consensus = true, .normalize = true, .rescale = true}));
  expect_matches(run(method("della_linear"), in, {.chunk = 1000, .shuffle = 2}),
                 gta_reference(in, tasks, {.rescale = true}));
  in.global = {{"rescale", 0}, {"normalize", 1}, {"lambda", 0.5}};
  expect_matches(run(method("della_linear"), in),
                 gta_reference(in, tasks, {.normalize = true, .lambda = 0.5}));
}

TEST(Della, RanksAlongDimensionOneOfThreeDimensionalTensors) {
  // Shape (4, 50, 6): the groups are [a, :, c], 50 elements 6 apart.
  const std::vector<uint64_t> shape = {4, 50, 6};
  const Tensor x = tiny_set_tensor(4 * 50 * 6, 22);
  Inputs in = single_model(x, {{"density", 0.4}, {"epsilon", 0.3}}, shape);
  in.global["rescale"] = 0;
  in.seed = 5;
  const Tensor out = run(method("della_linear"), in, {.chunk = 700, .threads = 2});
  EXPECT_TRUE(nonzero(out) ==
              della_mask(x, shape, 0.4, 0.3, kernels::stream_key(5, kTensorName, 0)));
  // One-dimensional tensors are one group.
  Inputs flat = single_model(x, {{"density", 0.4}, {"epsilon", 0.3}});
  flat.global["rescale"] = 0;
  EXPECT_TRUE(nonzero(run(method("della_linear"), flat, {.chunk = 100})) ==
              della_mask(x, {}, 0.4, 0.3, kernels::stream_key(0, kTensorName, 0)));
}

TEST(Della, SizeOneGroupsKeepWithProbabilityDensityAndStayFinite) {
  // mergekit divides 0 by 0 for rows of one element (NaN probabilities); smelt uses p = density,
  // which is DARE's mask for the same seed, tensor and input.
  const size_t n = 200000;
  const Tensor x = normal_tensor(n, 23);
  for (const std::vector<uint64_t>& shape :
       {std::vector<uint64_t>{n, 1}, std::vector<uint64_t>{n, 1, 1}}) {
    Inputs in = single_model(x, {{"density", 0.3}, {"epsilon", 0.2}}, shape);
    const Tensor out = run(method("della"), in, {.chunk = 5000, .threads = 2});
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
    Inputs dare = single_model(x, {{"density", 0.3}});
    EXPECT_TRUE(same_bits(out, run(method("dare_ties"), dare)));
  }
  const Tensor one = run(method("della"), single_model({2.5f}, {{"density", 0.5}}, {1}));
  ASSERT_EQ(one.size(), 1u);
  EXPECT_TRUE(one[0] == 0.0f || one[0] == 2.5f) << one[0];
}

TEST(Della, EpsilonZeroGivesDaresMask) {
  Inputs in = gta_inputs(64 * 100, {0.7, 0.4}, {0.3, 0.6}, 24);
  in.shape = {64, 100};
  in.seed = 77;
  Inputs della = in;
  for (size_t i = 0; i < 2; ++i) della.per_model[i]["epsilon"] = 0.0;
  EXPECT_TRUE(same_bits(run(method("della_linear"), della), run(method("dare_linear"), in)));
}

TEST(Della, EpsilonMustKeepDensityPlusOrMinusEpsilonInsideZeroOne) {
  for (const char* name : {"della", "della_linear"}) {
    for (auto [density, epsilon] : std::vector<std::pair<double, double>>{
             {0.5, 0.5}, {0.9, 0.15}, {0.1, 0.15}, {0.15, 0.15}}) {
      Inputs in = gta_inputs(10, {1.0, 1.0}, {0.5, density}, 25);
      in.per_model[1]["epsilon"] = epsilon;
      const std::string error = validate_error(method(name), in);
      EXPECT_NE(error.find("epsilon"), std::string::npos) << error;
      EXPECT_NE(error.find(fmt::format("{}", epsilon)), std::string::npos) << error;
      EXPECT_NE(error.find(kTensorName), std::string::npos) << error;
    }
    // In range, and densities for which mergekit never checks epsilon (0 and 1).
    for (auto [density, epsilon] : std::vector<std::pair<double, double>>{
             {0.5, 0.49}, {0.2, 0.15}, {0.8, -0.1}, {0.0, 0.5}, {1.0, 0.5}}) {
      Inputs in = gta_inputs(10, {1.0, 1.0}, {0.5, density}, 25);
      in.per_model[1]["epsilon"] = epsilon;
      EXPECT_EQ(validate_error(method(name), in), "") << density << " " << epsilon;
    }
  }
}

TEST(Della, DensityZeroDropsTheTaskVector) {
  // The dropped model is the second, so the first keeps its input index (which keys its mask).
  Inputs in = gta_inputs(2000, {0.5, 1.0}, {0.4, 0.0}, 26);
  in.shape = {20, 100};
  Inputs without = in;
  without.tensors.erase(without.tensors.begin() + 1);
  without.per_model.erase(without.per_model.begin() + 1);
  without.base -= 1;
  // With sign election a zero task vector never votes, so it is as if the model were absent.
  EXPECT_TRUE(same_bits(run(method("della"), in), run(method("della"), without)));
}

TEST(DellaLinear, KeptFractionIsWithinOnePercentOnAMillionElements) {
  // The rank-dependent probabilities average to density.
  const size_t rows = 1024, cols = 1024;
  for (double density : {0.2, 0.5, 0.7}) {
    Inputs in = gta_inputs(rows * cols, {1.0}, {density}, 31);
    in.shape = {rows, cols};
    in.per_model[0]["epsilon"] = 0.15;
    in.global["rescale"] = 0;
    const Tensor out = run(method("della_linear"), in, {.chunk = 65536, .threads = 2});
    const Tensor& b = in.tensors[1];
    size_t kept = 0;
    for (size_t j = 0; j < out.size(); ++j) kept += out[j] != b[j];
    EXPECT_NEAR(static_cast<double>(kept) / out.size(), density, 0.01 * density);
  }
}

TEST(DellaLinear, RescalePreservesTheL1NormOfTheTaskVector) {
  const size_t rows = 512, cols = 2048;
  Inputs in = single_model(normal_tensor(rows * cols, 32), {{"density", 0.3}}, {rows, cols});
  in.seed = 9;
  const Tensor out = run(method("della_linear"), in, {.chunk = 65536, .threads = 2});
  double l1_in = 0, l1_out = 0;
  for (size_t j = 0; j < out.size(); ++j) {
    l1_in += std::abs(in.tensors[0][j]);
    l1_out += std::abs(out[j]);
  }
  EXPECT_NEAR(l1_out / l1_in, 1.0, 1e-6);
  const std::vector<bool> mask =
      della_mask(in.tensors[0], in.shape, 0.3, 0.15, kernels::stream_key(9, kTensorName, 0));
  expect_matches(out, gta_reference(in, {{1.0, mask}}, {.rescale = true}));
}

TEST(Della, OutputIsBitIdenticalForAnyChunkingOrderAndThreadCount) {
  const size_t rows = 256, cols = 2048;
  const std::vector<double> w = {0.8, 0.5, 0.4};
  Inputs in = gta_inputs(rows * cols, w, {0.3, 0.6, 0.2}, 33);
  in.shape = {rows, cols};
  in.seed = 99;
  for (const char* name : {"della", "della_linear"}) {
    const Tensor whole = run(method(name), in, {.chunk = rows * cols});
    EXPECT_TRUE(same_bits(whole, run(method(name), in, {.chunk = cols, .shuffle = 2}))) << name;
    EXPECT_TRUE(same_bits(
        whole, run(method(name), in, {.chunk = 7 * cols + 5, .shuffle = 3, .threads = 2})))
        << name;
    EXPECT_TRUE(
        same_bits(whole, run(method(name), in, {.chunk = 65536, .shuffle = 4, .threads = 2})))
        << name;
  }
}

TEST(Della, MaskDependsOnTheSeed) {
  const size_t rows = 100, cols = 1000;
  Inputs in = single_model(normal_tensor(rows * cols, 34), {{"density", 0.5}}, {rows, cols});
  in.global["rescale"] = 0;
  in.seed = 1;
  const std::vector<bool> a = nonzero(run(method("della_linear"), in));
  EXPECT_TRUE(a == nonzero(run(method("della_linear"), in, {.chunk = 3000, .threads = 2})));
  in.seed = 2;
  const std::vector<bool> b = nonzero(run(method("della_linear"), in));
  // Two independent masks with p ∈ [0.35, 0.65] disagree on about half the elements.
  EXPECT_NEAR(fraction_differing(a, b), 0.5, 0.03);
}

// ---------------------------------------------------------------------------------------------
// sce

// Base 0; τ1 = (1, −2, 3, 0), τ2 = (3, 2, −1, 2).
Inputs sce_hand_inputs() {
  Inputs in;
  in.tensors = {{1, -2, 3, 0}, {3, 2, -1, 2}, {0, 0, 0, 0}};
  in.base = 2;
  return in;
}

TEST(Sce, HandExampleWeightsByMeanSquareAfterSignElection) {
  // c = (3.5, 4.5) / 8. Element 0: both positive, (7·1 + 9·3)/16 = 2.125. Element 1: Σ = 0
  // counts as +, only τ2 = 2 remains. Element 2: Σ = 2, only τ1 = 3. Element 3: only τ2 = 2.
  expect_floats(run(method("sce"), sce_hand_inputs()), {2.125f, 2, 3, 2});
}

TEST(Sce, SelectTopkKeepsTheElementsOfLargestVariance) {
  // Variances (1, 4, 4, 1), all nonzero. select_topk 0.5: k = 2 keeps elements 1 and 2, and the
  // weights come from the selected entries only.
  Inputs in = sce_hand_inputs();
  in.global["select_topk"] = 0.5;
  expect_floats(run(method("sce"), in), {0, 2, 3, 0});
  // select_topk 0.25: k = 1; elements 1 and 2 tie, the lower index wins.
  in.global["select_topk"] = 0.25;
  expect_floats(run(method("sce"), in), {0, 2, 0, 0});
  // τ2 = 7 at element 0 makes its variance the largest, (1 − 7)²/4 = 9. Only element 0 is
  // selected, so c ∝ (1², 7²) = (1, 49)/50 and out = (1·1 + 7·49)/50 = 6.88.
  in.tensors[1][0] = 7;
  expect_floats(run(method("sce"), in), {6.88f, 0, 0, 0});
}

TEST(Sce, MatchesReferenceWithAndWithoutSelection) {
  Inputs in = gta_inputs(200 * 150, {1, 1, 1}, {1, 1, 1}, 41);
  in.shape = {200, 150};
  in.per_model.clear();
  // Some elements where every model agrees (variance 0), so count_nonzero(var) < N.
  for (size_t j = 0; j < 30000; j += 7) {
    for (size_t i = 0; i < 3; ++i) in.tensors[i][j] = in.tensors[3][j] + 0.01f;
  }
  for (double select : {1.0, 0.5, 0.1, 0.999}) {
    in.global["select_topk"] = select;
    expect_matches(run(method("sce"), in, {.chunk = 1000, .threads = 2}),
                   sce_reference(in, select));
  }
}

// Above kSampleMinElements the variance selection starts with a sample pass, which estimates k
// from the sample's nonzero variances.
TEST(Sce, SampledLargeTensorMatchesReference) {
  Inputs in = gta_inputs(kSampleMinElements + 1000, {1, 1}, {1, 1}, 44);
  in.per_model.clear();
  for (size_t j = 0; j < in.tensors[0].size(); j += 5) {
    for (size_t i = 0; i < 2; ++i) in.tensors[i][j] = in.tensors[2][j];  // variance 0
  }
  for (double select : {0.5, 0.05}) {
    in.global["select_topk"] = select;
    expect_matches(run(method("sce"), in, {.chunk = 8192, .threads = 2}),
                   sce_reference(in, select));
  }
}

TEST(Sce, SelectTopkZeroReturnsTheBaseWithAWarning) {
  Inputs in = gta_inputs(5000, {1, 1}, {1, 1}, 42);
  in.per_model.clear();
  const Method& m = method("sce");
  for (double select : {0.0, -0.5}) {
    in.global["select_topk"] = select;
    EXPECT_TRUE(same_bits(run(m, in), in.tensors[2])) << select;
    const std::vector<std::string> warnings = m.warnings(context(in, resolve(m, in)));
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find(kTensorName), std::string::npos) << warnings[0];
    EXPECT_NE(warnings[0].find("select_topk"), std::string::npos) << warnings[0];
  }
  in.global["select_topk"] = 0.5;
  EXPECT_TRUE(m.warnings(context(in, resolve(m, in))).empty());
}

TEST(Sce, SelectionOfNoElementReturnsTheBase) {
  // k = floor(count_nonzero(var) · select_topk) = 0: one element with nonzero variance and
  // select_topk 0.5; and a single model, whose variance is 0 everywhere.
  Inputs in;
  in.tensors = {{1, 2, 3}, {1, 2, 5}, {0, 0, 0}};
  in.base = 2;
  in.global["select_topk"] = 0.5;
  EXPECT_EQ(run(method("sce"), in), (Tensor{0, 0, 0}));
  Inputs one;
  one.tensors = {normal_tensor(100, 43), normal_tensor(100, 44)};
  one.base = 1;
  one.global["select_topk"] = 0.9;
  EXPECT_TRUE(same_bits(run(method("sce"), one), one.tensors[1]));
  // Without selection a single model is returned (its own weight, its own sign).
  one.global.clear();
  const Tensor out = run(method("sce"), one);
  for (size_t j = 0; j < out.size(); ++j) EXPECT_NEAR(out[j], one.tensors[0][j], 1e-6);
}

TEST(Sce, TinyTaskVectorsGetUniformWeights) {
  // mean(τ²) sums to 4e-8 + 1e-8 < 1e-6, so c = (1/2, 1/2) rather than (0.8, 0.2).
  Inputs in;
  in.tensors = {{2e-4f, 2e-4f}, {1e-4f, -1e-4f}, {0, 0}};
  in.base = 2;
  const Tensor out = run(method("sce"), in);
  EXPECT_FLOAT_EQ(out[0], 1.5e-4f);  // (2e-4 + 1e-4)/2
  EXPECT_FLOAT_EQ(out[1], 2e-4f);
}

TEST(Sce, OutputIsBitIdenticalForAnyChunkingOrderAndThreadCount) {
  Inputs in = gta_inputs(1 << 18, {1, 1, 1}, {1, 1, 1}, 45);
  in.per_model.clear();
  in.global["select_topk"] = 0.3;
  const Tensor whole = run(method("sce"), in, {.chunk = 1 << 18});
  EXPECT_TRUE(same_bits(whole, run(method("sce"), in, {.chunk = 1000, .shuffle = 2})));
  EXPECT_TRUE(
      same_bits(whole, run(method("sce"), in, {.chunk = 65536, .shuffle = 3, .threads = 2})));
}

// ---------------------------------------------------------------------------------------------
// ram / ramplus_tl

// Base (0, 0, 0, 0, 0, 1); three models:
//   element 0: only τ1 = 0.5 active                → unique
//   element 1: τ1 = 1e-6 ≤ ε dropped, τ2 = 0.3     → unique (τ2)
//   element 2: τ1 = 0.2, τ2 = 0.6                  → shared by 2
//   element 3: every |τ| ≤ ε                       → base
//   element 4: τ = (−0.3, 0.6, 0.9)                → shared by 3
//   element 5: τ3 = −0.25                          → unique (τ3), base 1
Inputs ram_hand_inputs() {
  Inputs in;
  in.tensors = {{0.5f, 1e-6f, 0.2f, 1e-6f, -0.3f, 1},
                {0, 0.3f, 0.6f, -1e-6f, 0.6f, 1},
                {0, 0, 0, 5e-6f, 0.9f, 0.75f},
                {0, 0, 0, 0, 0, 1}};
  in.base = 3;
  return in;
}

TEST(Ram, HandExampleAddsUniqueEntriesAndAveragesSharedOnes) {
  const Tensor out = run(method("ram"), ram_hand_inputs());
  ASSERT_EQ(out.size(), 6u);
  EXPECT_FLOAT_EQ(out[0], 0.5f);
  EXPECT_FLOAT_EQ(out[1], 0.3f);
  EXPECT_FLOAT_EQ(out[2], 0.4f);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_FLOAT_EQ(out[4], 0.4f);  // (−0.3 + 0.6 + 0.9)/3
  EXPECT_FLOAT_EQ(out[5], 0.75f);
  // With epsilon 0.25, τ1 = 0.2 at element 2 is dropped (τ2 = 0.6 becomes unique) and so is
  // |τ3| = 0.25 at element 5 (not > ε); |−0.3| > 0.25 stays shared at element 4.
  Inputs in = ram_hand_inputs();
  in.global["epsilon"] = 0.25;
  const Tensor coarse = run(method("ram"), in);
  EXPECT_FLOAT_EQ(coarse[2], 0.6f);
  EXPECT_FLOAT_EQ(coarse[4], 0.4f);
  EXPECT_EQ(coarse[5], 1.0f);
}

TEST(RamPlusTl, HandExampleBoostsEachModelsUniqueEntries) {
  // Active unique / shared entries: model 1: 1 / 2 (ρ = 2), model 2: 1 / 2 (ρ = 2),
  // model 3: 1 / 1 (ρ = 1). Defaults r = 0.1, α = 0.2: every λ = 1 + 0.1·0.2 = 1.02.
  const Tensor out = run(method("ramplus_tl"), ram_hand_inputs());
  EXPECT_FLOAT_EQ(out[0], 0.5f * 1.02f);
  EXPECT_FLOAT_EQ(out[1], 0.3f * 1.02f);
  EXPECT_FLOAT_EQ(out[2], 0.4f);  // shared entries are averaged as in ram
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_FLOAT_EQ(out[4], 0.4f);
  EXPECT_FLOAT_EQ(out[5], 1.0f - 0.25f * 1.02f);
  // r = 0.5, α = 1.5: λ = 1 + 0.5·min(ρ, 1.5) = (1.75, 1.75, 1.5).
  Inputs in = ram_hand_inputs();
  in.global = {{"r", 0.5}, {"alpha", 1.5}};
  const Tensor boosted = run(method("ramplus_tl"), in);
  EXPECT_FLOAT_EQ(boosted[0], 0.5f * 1.75f);
  EXPECT_FLOAT_EQ(boosted[1], 0.3f * 1.75f);
  EXPECT_FLOAT_EQ(boosted[5], 1.0f - 0.25f * 1.5f);
}

TEST(RamPlusTl, ModelWithoutUniqueEntriesStaysFiniteForAnyEpsilon) {
  // mergekit's ρ = shared / clamp(unique, min=ε) is 0/0 for a model with no active entry when
  // ε ≤ 0, and the NaN λ reaches every element; smelt never needs λ for such a model.
  Inputs in;
  in.tensors = {{0.5f, 0.0f, 0.25f}, {0, 0, 0}, {0, 0, 0}};
  in.base = 2;
  in.global["epsilon"] = 0.0;
  const Tensor out = run(method("ramplus_tl"), in);
  EXPECT_FLOAT_EQ(out[0], 0.5f);  // ρ = 0 for model 1: λ = 1
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_FLOAT_EQ(out[2], 0.25f);
}

// Models that change a random subset of the elements (the rest within ±ε/2 of the base).
Inputs ram_random_inputs(size_t n, size_t models, uint32_t seed) {
  Inputs in;
  const Tensor base = normal_tensor(n, seed, 0.02f);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> coin(0, 1);
  for (size_t i = 0; i < models; ++i) {
    Tensor x = normal_tensor(n, seed + 10 + i, 0.01f);
    const float p = 0.2f + 0.2f * i;
    for (size_t j = 0; j < n; ++j) {
      if (coin(rng) > p) x[j] = (coin(rng) - 0.5f) * 1e-5f;
      x[j] += base[j];
    }
    in.tensors.push_back(std::move(x));
  }
  in.tensors.push_back(base);
  in.base = static_cast<int>(models);
  return in;
}

TEST(Ram, MatchesReferenceOnRandomTensors) {
  Inputs in = ram_random_inputs(50000, 3, 51);
  expect_matches(run(method("ram"), in, {.chunk = 999, .threads = 2}),
                 ram_reference(in, 1e-5, 0, 0));
  in.global["epsilon"] = 0.005;
  expect_matches(run(method("ram"), in), ram_reference(in, 0.005, 0, 0));
}

TEST(RamPlusTl, MatchesReferenceOnRandomTensors) {
  Inputs in = ram_random_inputs(50000, 3, 52);
  expect_matches(run(method("ramplus_tl"), in, {.chunk = 999, .threads = 2}),
                 ram_reference(in, 1e-5, 0.1, 0.2));
  in.global = {{"r", 0.7}, {"alpha", 5.0}, {"epsilon", 0.002}};
  expect_matches(run(method("ramplus_tl"), in, {.chunk = 4096, .shuffle = 3}),
                 ram_reference(in, 0.002, 0.7, 5.0));
}

TEST(Ram, ReturnsTheBaseWithoutOtherModelsAndIsBitIdenticalForAnyChunking) {
  Inputs only;
  only.tensors = {normal_tensor(100, 53)};
  only.base = 0;
  for (const char* name : {"ram", "ramplus_tl", "sce"}) {
    EXPECT_TRUE(same_bits(run(method(name), only), only.tensors[0])) << name;
  }
  Inputs in = ram_random_inputs(1 << 18, 4, 54);
  for (const char* name : {"ram", "ramplus_tl"}) {
    const Tensor whole = run(method(name), in, {.chunk = 1 << 18});
    EXPECT_TRUE(same_bits(whole, run(method(name), in, {.chunk = 1000, .shuffle = 2})));
    EXPECT_TRUE(same_bits(whole, run(method(name), in, {.chunk = 65536, .threads = 2})));
  }
}

}  // namespace
}  // namespace smelt::methods
