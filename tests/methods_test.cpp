// Tests of the merge methods and their kernels. Each method runs exactly as the executor runs it
// (validate, begin, statistics passes over shuffled chunks, merge over shuffled chunks, possibly
// on several threads) and is compared with a plain whole-tensor double-precision reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "method_driver.h"
#include "smelt/error.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/topk.h"
#include "smelt/methods/gta.h"
#include "smelt/methods/method.h"

namespace smelt::methods {
namespace {

using namespace smelt::testing::method_driver;

// ---------------------------------------------------------------------------------------------
// Test data and comparison.

// A reference result: values, the scale of the terms that produced each value (the relative
// tolerance applies to it, since a sum's rounding error scales with its terms, not its result),
// and elements whose result hinges on the sign of a sum within rounding of zero (skipped).
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

// ---------------------------------------------------------------------------------------------
// Independent references (whole tensor, double precision).

Reference linear_reference(const std::vector<Tensor>& x, const std::vector<double>& w,
                           bool normalize) {
  const size_t n = x[0].size();
  Reference ref{std::vector<double>(n), std::vector<double>(n), {}};
  const double wsum = std::accumulate(w.begin(), w.end(), 0.0);
  for (size_t j = 0; j < n; ++j) {
    double s = 0, a = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      s += w[i] * x[i][j];
      a += std::abs(w[i] * x[i][j]);
    }
    ref.value[j] = normalize ? s / wsum : s;
    ref.scale[j] = normalize ? a / std::abs(wsum) : a;
  }
  return ref;
}

Reference slerp_reference(const Tensor& v0, const Tensor& v1, double t) {
  double n0 = 0, n1 = 0, d = 0;
  for (size_t j = 0; j < v0.size(); ++j) {
    n0 += double{v0[j]} * v0[j];
    n1 += double{v1[j]} * v1[j];
  }
  n0 = std::sqrt(n0);
  n1 = std::sqrt(n1);
  const double s0n = n0 > 1e-8 ? n0 : 1.0, s1n = n1 > 1e-8 ? n1 : 1.0;
  for (size_t j = 0; j < v0.size(); ++j) d += (v0[j] / s0n) * (v1[j] / s1n);
  double c0, c1;
  if (std::abs(d) > 0.9995) {
    c0 = 1 - t;
    c1 = t;
  } else {
    const double theta = std::acos(d);
    c0 = std::sin((1 - t) * theta) / std::sin(theta);
    c1 = std::sin(t * theta) / std::sin(theta);
  }
  Reference ref{std::vector<double>(v0.size()), std::vector<double>(v0.size()), {}};
  for (size_t j = 0; j < v0.size(); ++j) {
    ref.value[j] = c0 * v0[j] + c1 * v1[j];
    ref.scale[j] = std::abs(c0 * v0[j]) + std::abs(c1 * v1[j]);
  }
  return ref;
}

enum class Sparsify { kNone, kMagnitude, kRandom };

struct GtaSetup {
  Sparsify sparsify = Sparsify::kNone;
  bool consensus = false;
  bool normalize = false;
  bool rescale = false;
  double lambda = 1.0;
};

// Indices of the k largest |v|, ties broken by lower index (sort-based).
std::vector<bool> top_k_mask(const std::vector<float>& v, uint64_t k) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const float ma = std::abs(v[a]), mb = std::abs(v[b]);
    return ma != mb ? ma > mb : a < b;
  });
  std::vector<bool> keep(v.size(), false);
  for (uint64_t r = 0; r < k && r < v.size(); ++r) keep[order[r]] = true;
  return keep;
}

Reference gta_reference(const Inputs& in, const std::vector<double>& weights,
                        const std::vector<double>& densities, const GtaSetup& s) {
  const Tensor& b = in.tensors[in.base];
  const size_t n = b.size();
  std::vector<std::vector<double>> d_list;  // D_i = w_i · sparsified δ_i
  std::vector<double> w_list;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) == in.base) continue;
    // δ is defined in f32 (smelt's working precision); everything after it in double.
    std::vector<float> delta(n);
    for (size_t j = 0; j < n; ++j) delta[j] = in.tensors[i][j] - b[j];
    const double density = densities[i];
    std::vector<bool> keep(n, true);
    if (s.sparsify != Sparsify::kNone && density < 1.0) {
      if (s.sparsify == Sparsify::kMagnitude) {
        keep = top_k_mask(delta, static_cast<uint64_t>(std::floor(density * n)));
      } else {
        const uint64_t key = kernels::stream_key(in.seed, in.name, i);
        for (size_t j = 0; j < n; ++j) {
          keep[j] = kernels::draw_uniform(key, j) < static_cast<float>(density);
        }
      }
    }
    double l1 = 0, kept_l1 = 0;
    for (size_t j = 0; j < n; ++j) {
      l1 += std::abs(delta[j]);
      if (keep[j]) kept_l1 += std::abs(delta[j]);
    }
    const double factor =
        s.sparsify != Sparsify::kNone && density < 1.0 && s.rescale && l1 >= 1e-7 && kept_l1 >= 1e-7
            ? l1 / kept_l1
            : 1.0;
    std::vector<double> d(n);
    for (size_t j = 0; j < n; ++j) d[j] = keep[j] ? weights[i] * delta[j] * factor : 0.0;
    d_list.push_back(std::move(d));
    w_list.push_back(weights[i]);
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
      for (size_t t = 0; t < d_list.size(); ++t) {
        if (d_list[t][j] * sign > 0) {
          mixed += d_list[t][j];
          divisor += w_list[t];
          terms += std::abs(d_list[t][j]);
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

// Inputs for a GTA method: `models` random models then the base (mergekit's `models:` form
// appends the base), with weights and densities per model (the base gets none).
Inputs gta_inputs(size_t n, const std::vector<double>& weights,
                  const std::vector<double>& densities, uint32_t seed) {
  Inputs in;
  const size_t models = weights.size();
  for (size_t i = 0; i < models; ++i) {
    in.tensors.push_back(normal_tensor(n, seed + 17 * i, 0.02f, 0.01f * i));
    in.per_model.push_back({{"weight", weights[i]}, {"density", densities[i]}});
  }
  Tensor base = normal_tensor(n, seed + 999, 0.02f);
  for (size_t i = 0; i < models; ++i) {
    for (size_t j = 0; j < n; ++j) in.tensors[i][j] += base[j];  // models near the base
  }
  in.tensors.push_back(base);
  in.per_model.push_back({});
  in.base = static_cast<int>(models);
  return in;
}

std::vector<double> with_base(std::vector<double> v) {
  v.push_back(0.0);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Parameters and registry.

TEST(ResolvedParams, GlobalValueThrowsWhenAbsent) {
  ResolvedParams p;
  p.global["t"] = 0.25;
  EXPECT_EQ(p.global_value("t"), 0.25);
  EXPECT_THROW(p.global_value("normalize"), Error);
}

TEST(ResolvedParams, ModelValueIsNulloptForMissingNameOrInput) {
  ResolvedParams p;
  p.per_model = {{{"weight", 0.5}}, {}};
  EXPECT_EQ(p.model_value(0, "weight"), 0.5);
  EXPECT_EQ(p.model_value(1, "weight"), std::nullopt);
  EXPECT_EQ(p.model_value(0, "density"), std::nullopt);
  EXPECT_EQ(p.model_value(7, "weight"), std::nullopt);
}

TEST(Registry, FindsEachMethodUnderItsOwnNameWithMergekitCardNames) {
  const std::map<std::string, std::pair<std::string, std::string>> expected = {
      {"linear", {"Linear", "https://arxiv.org/abs/2203.05482"}},
      {"slerp", {"SLERP", "https://en.wikipedia.org/wiki/Slerp"}},
      {"passthrough", {"Passthrough", ""}},
      {"task_arithmetic", {"Task Arithmetic", "https://arxiv.org/abs/2212.04089"}},
      {"ties", {"TIES", "https://arxiv.org/abs/2306.01708"}},
      {"dare_ties", {"DARE TIES", "https://arxiv.org/abs/2311.03099"}},
      {"dare_linear", {"Linear DARE", "https://arxiv.org/abs/2311.03099"}},
      {"nuslerp", {"NuSLERP", ""}},
      {"model_stock", {"Model Stock", "https://arxiv.org/abs/2403.19522"}},
      {"arcee_fusion", {"Arcee Fusion", "https://arcee.ai"}},
      {"karcher", {"Karcher Mean", "https://en.wikipedia.org/wiki/Karcher_mean"}},
      {"breadcrumbs", {"Model Breadcrumbs", "https://arxiv.org/abs/2312.06795"}},
      {"breadcrumbs_ties", {"Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795"}},
      {"della", {"DELLA", "https://arxiv.org/abs/2406.11617"}},
      {"della_linear", {"Linear DELLA", "https://arxiv.org/abs/2406.11617"}},
      {"multislerp", {"Multi-SLERP", "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"}},
      {"nearswap", {"NearSwap", "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"}},
      {"sce", {"SCE", "https://arxiv.org/abs/2408.07990"}},
      {"ram", {"Reinforced Agent Merging", "https://arxiv.org/abs/2601.13572"}},
      {"ramplus_tl",
       {"Reinforced Agent Merging Plus (Tensor-Local)", "https://arxiv.org/abs/2601.13572"}},
  };
  for (const std::string& name : method_names()) {
    const Method* m = find_method(name);
    ASSERT_NE(m, nullptr) << name;
    EXPECT_EQ(m->name(), name);
    ASSERT_TRUE(expected.count(name)) << name;
    EXPECT_EQ(m->pretty_name(), expected.at(name).first);
    EXPECT_EQ(m->reference_url(), expected.at(name).second);
  }
  EXPECT_EQ(method_names().size(), expected.size());
}

TEST(Registry, ListsNamesInMergekitOrderAndRejectsUnknown) {
  EXPECT_EQ(method_names(), (std::vector<std::string>{"linear",
                                                      "slerp",
                                                      "nuslerp",
                                                      "passthrough",
                                                      "model_stock",
                                                      "arcee_fusion",
                                                      "karcher",
                                                      "task_arithmetic",
                                                      "ties",
                                                      "dare_ties",
                                                      "dare_linear",
                                                      "breadcrumbs",
                                                      "breadcrumbs_ties",
                                                      "della",
                                                      "della_linear",
                                                      "multislerp",
                                                      "nearswap",
                                                      "sce",
                                                      "ram",
                                                      "ramplus_tl"}));
  EXPECT_EQ(find_method("lineear"), nullptr);
  EXPECT_EQ(find_method(""), nullptr);
  EXPECT_EQ(find_method("linear"), find_method("linear"));  // one instance per method
}

TEST(Registry, GtaFamilyDefaultsFollowTheMethodsTable) {
  // name → {normalize, rescale}
  const std::map<std::string, std::pair<double, double>> table = {{"task_arithmetic", {0, 0}},
                                                                  {"ties", {1, 0}},
                                                                  {"dare_ties", {0, 1}},
                                                                  {"dare_linear", {0, 1}}};
  for (const auto& [name, defaults] : table) {
    std::map<std::string, std::optional<double>> g;
    for (const ParamSpec& p : method(name).global_params()) g[p.name] = p.default_value;
    EXPECT_EQ(g.at("normalize"), defaults.first) << name;
    EXPECT_EQ(g.at("rescale"), defaults.second) << name;
    EXPECT_EQ(g.at("lambda"), 1.0) << name;
    EXPECT_EQ(g.at("int8_mask"), 0.0) << name;
    std::map<std::string, std::optional<double>> m;
    for (const ParamSpec& p : method(name).model_params()) m[p.name] = p.default_value;
    EXPECT_EQ(m.at("weight"), std::nullopt) << name;
    EXPECT_EQ(m.at("density"), 1.0) << name;
    EXPECT_EQ(method(name).base_use(), BaseUse::kRequired) << name;
  }
  EXPECT_EQ(method("linear").base_use(), BaseUse::kNone);
  EXPECT_EQ(method("slerp").base_use(), BaseUse::kRequired);
}

// ---------------------------------------------------------------------------------------------
// Top-k selection kernel.

// Runs TopKMagnitude over v in shuffled chunks and returns the kept mask.
std::vector<bool> select_top_k(
    const Tensor& v, uint64_t k, size_t chunk, uint32_t shuffle, int* passes = nullptr,
    uint64_t max_tie_entries = kernels::TopKMagnitude::kDefaultMaxTieEntries) {
  kernels::TopKMagnitude top(v.size(), k, max_tie_entries);
  std::vector<uint64_t> offsets;
  for (uint64_t o = 0; o < v.size(); o += chunk) offsets.push_back(o);
  std::mt19937 rng(shuffle);
  int count = 0;
  while (top.pass() != kernels::TopKMagnitude::Pass::kDone) {
    std::shuffle(offsets.begin(), offsets.end(), rng);
    for (uint64_t o : offsets) top.add(o, v.data() + o, std::min<uint64_t>(chunk, v.size() - o));
    top.end_pass();
    ++count;
  }
  if (passes) *passes = count;
  Tensor x = v;
  for (uint64_t o : offsets) top.keep_top(o, x.data() + o, std::min<uint64_t>(chunk, v.size() - o));
  std::vector<bool> keep(v.size());
  for (size_t j = 0; j < v.size(); ++j) keep[j] = x[j] != 0.0f;
  return keep;
}

TEST(TopKMagnitude, KeepsExactlyKLargestWithIndexOrderTieBreak) {
  const Tensor v = tiny_set_tensor(100003, 5);
  for (uint64_t k : {1ull, 7ull, 16667ull, 50001ull, 99999ull}) {
    for (size_t chunk : {size_t{997}, size_t{65536}, size_t{100003}}) {
      const std::vector<bool> got = select_top_k(v, k, chunk, static_cast<uint32_t>(k + chunk));
      EXPECT_EQ(std::count(got.begin(), got.end(), true), static_cast<long>(k));
      EXPECT_TRUE(got == top_k_mask(v, k)) << "k=" << k << " chunk=" << chunk;
    }
  }
}

// k given after pass kHigh (sce's count) and a kHigh histogram taken from another selection over
// the same vector (breadcrumbs): the same selections as the plain API.
TEST(TopKMagnitude, KLaterAndSharedHighHistogramSelectTheSame) {
  const Tensor v = tiny_set_tensor(100003, 9);
  const size_t chunk = 4099;
  std::vector<uint64_t> offsets;
  for (uint64_t o = 0; o < v.size(); o += chunk) offsets.push_back(o);
  auto add_all = [&](kernels::TopKMagnitude& t) {
    for (uint64_t o : offsets) t.add(o, v.data() + o, std::min<uint64_t>(chunk, v.size() - o));
  };
  auto finish = [&](kernels::TopKMagnitude& t) {
    while (t.pass() != kernels::TopKMagnitude::Pass::kDone) {
      add_all(t);
      t.end_pass();
    }
    Tensor x = v;
    for (uint64_t o : offsets) {
      t.keep_top(o, x.data() + o, std::min<uint64_t>(chunk, v.size() - o));
    }
    std::vector<bool> keep(v.size());
    for (size_t j = 0; j < v.size(); ++j) keep[j] = x[j] != 0.0f;
    return keep;
  };
  for (uint64_t k : {0ull, 1ull, 777ull, 50001ull, 100003ull, 200000ull}) {
    auto later = kernels::TopKMagnitude::with_k_later(v.size());
    add_all(*later);
    later->set_k(k);
    if (later->pass() != kernels::TopKMagnitude::Pass::kDone) later->end_pass();
    const std::vector<bool> want = top_k_mask(v, std::min<uint64_t>(k, v.size()));
    EXPECT_TRUE(finish(*later) == want) << "k later = " << k;
    if (k == 0 || k >= v.size()) continue;
    kernels::TopKMagnitude counted(v.size(), 31), shared(v.size(), k);
    add_all(counted);
    shared.end_pass_from(counted);
    counted.end_pass();
    EXPECT_TRUE(finish(shared) == want) << "shared histogram, k = " << k;
    EXPECT_TRUE(finish(counted) == top_k_mask(v, 31));
  }
}

TEST(TopKMagnitude, FallsBackToATiesPassWhenTieListsOverflow) {
  const Tensor v = tiny_set_tensor(200003, 11);
  for (uint64_t k : {3ull, 100001ull, 199990ull}) {
    for (uint64_t cap : {uint64_t{0}, uint64_t{40}, uint64_t{1} << 30}) {
      int passes = -1;
      const std::vector<bool> got =
          select_top_k(v, k, 4099, static_cast<uint32_t>(k), &passes, cap);
      EXPECT_TRUE(got == top_k_mask(v, k)) << "k=" << k << " cap=" << cap;
      // A cap of 0 or 40 entries cannot hold one record per chunk (49 chunks): a third pass.
      EXPECT_EQ(passes, cap < 49 ? 3 : 2) << "k=" << k << " cap=" << cap;
    }
  }
}

// A sparse vector (60 % zeros, some of them −0) with k at least its nonzero count: the k-th
// largest is 0, pass kHigh's zero counts decide it, and one pass suffices. The output bits equal
// the sort's (a kept −0 stays −0, a dropped element becomes +0), for the shared-histogram and
// k-later forms too. With one tiny nonzero element in the lowest bin the zero counts are not the
// whole bin, and pass kLow runs.
TEST(TopKMagnitude, ThresholdZeroIsDecidedInOnePass) {
  for (bool tiny : {false, true}) {
    Tensor v(100003);
    std::mt19937 rng(21);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    for (size_t j = 0; j < v.size(); ++j) {
      const uint32_t r = rng() % 10;
      v[j] = r < 5 ? 0.0f : r == 5 ? -0.0f : normal(rng);
    }
    if (tiny) v[77] = std::bit_cast<float>(uint32_t{3});  // a subnormal: high bits 0
    const auto nonzero =
        static_cast<size_t>(std::count_if(v.begin(), v.end(), [](float x) { return x != 0.0f; }));
    const size_t chunk = 4099;
    std::vector<uint64_t> offsets;
    for (uint64_t o = 0; o < v.size(); o += chunk) offsets.push_back(o);
    auto run = [&](kernels::TopKMagnitude& t, int* passes) {
      *passes = 0;
      while (t.pass() != kernels::TopKMagnitude::Pass::kDone) {
        for (uint64_t o : offsets) t.add(o, v.data() + o, std::min<uint64_t>(chunk, v.size() - o));
        t.end_pass();
        ++*passes;
      }
      Tensor x = v;
      for (uint64_t o : offsets)
        t.keep_top(o, x.data() + o, std::min<uint64_t>(chunk, v.size() - o));
      return x;
    };
    for (uint64_t k : {uint64_t{nonzero}, uint64_t{nonzero + 1}, uint64_t{nonzero + 5000},
                       uint64_t{v.size() - 1}}) {
      const std::vector<bool> keep = top_k_mask(v, k);
      std::vector<uint32_t> want(v.size());
      for (size_t j = 0; j < v.size(); ++j) {
        want[j] = keep[j] ? std::bit_cast<uint32_t>(v[j]) : 0u;
      }
      auto bits = [](const Tensor& x) {
        std::vector<uint32_t> out(x.size());
        for (size_t j = 0; j < x.size(); ++j) out[j] = std::bit_cast<uint32_t>(x[j]);
        return out;
      };
      const std::string label = "k=" + std::to_string(k) + (tiny ? " tiny" : "");
      int passes = 0;
      kernels::TopKMagnitude plain(v.size(), k);
      EXPECT_EQ(bits(run(plain, &passes)), want) << label;
      // k = nonzero keeps no zero: its threshold is not 0.
      const bool zero_threshold = k > nonzero;
      EXPECT_EQ(passes, zero_threshold && !tiny ? 1 : 2) << label;
      EXPECT_EQ(plain.threshold_bits() == 0, zero_threshold) << label;
      // Breadcrumbs' form: the kHigh histogram (and zero counts) of another selection.
      kernels::TopKMagnitude counted(v.size(), 31), shared(v.size(), k);
      for (uint64_t o : offsets) {
        counted.add(o, v.data() + o, std::min<uint64_t>(chunk, v.size() - o));
      }
      shared.end_pass_from(counted);
      counted.end_pass();
      EXPECT_EQ(bits(run(shared, &passes)), want) << label << " shared";
      EXPECT_EQ(passes, zero_threshold && !tiny ? 0 : 1) << label << " shared";
    }
  }
}

TEST(TopKMagnitude, ZerosAndSubnormalsInTheLowestBin) {
  // Half exact zeros (both signs), a quarter subnormals (high 16 bits 0, like zeros), a quarter
  // normal values: thresholds in bin 0 split ties among zeros or among subnormals.
  Tensor v(100000);
  std::mt19937 rng(5);
  for (size_t j = 0; j < v.size(); ++j) {
    const uint32_t r = rng();
    if (r % 4 < 2) {
      v[j] = r % 8 == 0 ? -0.0f : 0.0f;
    } else if (r % 4 == 2) {
      v[j] = std::bit_cast<float>((r >> 8) % 7 + 1);  // 7 distinct subnormal magnitudes
    } else {
      v[j] = static_cast<float>(static_cast<int>(r >> 20) - 2048);
    }
  }
  for (uint64_t k : {10000ull, 30000ull, 60000ull, 99999ull}) {
    for (size_t chunk : {size_t{1000}, size_t{65536}, size_t{100000}}) {
      int passes = -1;
      std::vector<bool> got = select_top_k(v, k, chunk, 7, &passes);
      std::vector<bool> want = top_k_mask(v, k);
      // A kept zero is still zero: only nonzero elements show what was kept.
      for (size_t j = 0; j < v.size(); ++j) {
        if (v[j] == 0.0f) got[j] = want[j] = false;
      }
      EXPECT_TRUE(got == want) << "k=" << k << " chunk=" << chunk;
      EXPECT_EQ(passes, 2);
    }
  }
}

TEST(TopKMagnitude, DifferenceInputMatchesMaterializedDifference) {
  // Large enough (>= 65536 elements) for the private-histogram path, with many exact ties.
  const Tensor a = tiny_set_tensor(150001, 21);
  Tensor b = tiny_set_tensor(150001, 22);
  for (size_t j = 0; j < b.size(); j += 3) b[j] = a[j];  // zero differences
  Tensor d(a.size());
  for (size_t j = 0; j < a.size(); ++j) d[j] = a[j] - b[j];
  for (uint64_t k : {1ull, 50000ull, 120000ull}) {
    kernels::TopKMagnitude top(a.size(), k);
    const size_t chunk = 8191;
    while (top.pass() != kernels::TopKMagnitude::Pass::kDone) {
      for (size_t o = 0; o < a.size(); o += chunk) {
        top.add_difference(o, a.data() + o, b.data() + o, std::min(chunk, a.size() - o));
      }
      top.end_pass();
    }
    Tensor x = d;
    for (size_t o = 0; o < a.size(); o += chunk) {
      top.keep_top(o, x.data() + o, std::min(chunk, a.size() - o));
    }
    const std::vector<bool> want = top_k_mask(d, k);
    size_t kept = 0;
    for (size_t j = 0; j < x.size(); ++j) {
      kept += want[j];
      ASSERT_EQ(x[j], want[j] ? d[j] : 0.0f) << "k=" << k << " j=" << j;
    }
    EXPECT_EQ(kept, k);
  }
}

// Passes kSample and kHigh fed with bf16 values (add_difference_bf16, what a bf16 statistics
// pass of the executor does) select exactly what f32 values select, in as many passes: tensors
// below and above the private-histogram size (65536) and one with a sample, lengths and chunks
// that leave tails of fewer than 8 elements.
TEST(TopKMagnitude, Bf16DifferenceMatchesF32Difference) {
  using Pass = kernels::TopKMagnitude::Pass;
  for (const size_t n : {size_t{30001}, size_t{150001}, (size_t{1} << 20) + 3}) {
    const size_t chunk = 4093;
    Tensor x = normal_tensor(n, 41, 0.02f), base = normal_tensor(n, 42, 0.02f), diff(n);
    std::vector<uint16_t> x16(n), base16(n);
    for (size_t j = 0; j < n; ++j) {
      base16[j] = static_cast<uint16_t>(std::bit_cast<uint32_t>(base[j]) >> 16);
      base[j] = kernels::bf16_to_f32(base16[j]);
      // Most elements unchanged (difference 0), the others moved, some by a lot.
      const float moved = j % 3 == 0 ? base[j] + x[j] * (j % 7 == 0 ? 10.0f : 0.1f) : base[j];
      x16[j] = static_cast<uint16_t>(std::bit_cast<uint32_t>(moved) >> 16);
      x[j] = kernels::bf16_to_f32(x16[j]);
      diff[j] = x[j] - base[j];
    }
    for (const uint64_t k : {n / 100, n / 10, n / 4}) {
      std::vector<bool> keep[2];
      int passes[2] = {0, 0};
      for (int half = 0; half < 2; ++half) {
        kernels::TopKMagnitude top(n, k);
        if (n >= methods::kSampleMinElements) top.sample_first();
        while (top.pass() != Pass::kDone) {
          const size_t stride = top.pass() == Pass::kSample ? 16 : 1;
          const bool bf16 = half == 1 && kernels::TopKMagnitude::takes_bf16(top.pass());
          for (size_t o = 0; o < n; o += chunk * stride) {
            const size_t m = std::min(chunk, n - o);
            if (bf16) {
              top.add_difference_bf16(o, x16.data() + o, base16.data() + o, m);
            } else {
              top.add_difference(o, x.data() + o, base.data() + o, m);
            }
          }
          top.end_pass();
          ++passes[half];
        }
        Tensor d(n);
        for (size_t o = 0; o < n; o += chunk) {
          top.keep_top_difference(o, x.data() + o, base.data() + o, d.data() + o,
                                  std::min(chunk, n - o));
        }
        keep[half].resize(n);
        for (size_t j = 0; j < n; ++j) keep[half][j] = d[j] != 0.0f;
      }
      std::vector<bool> want = top_k_mask(diff, k);
      for (size_t j = 0; j < n; ++j) want[j] = want[j] && diff[j] != 0.0f;
      EXPECT_TRUE(keep[0] == want) << "n=" << n << " k=" << k;
      EXPECT_TRUE(keep[1] == want) << "n=" << n << " k=" << k;
      EXPECT_EQ(passes[0], passes[1]) << "n=" << n << " k=" << k;
    }
  }
}

TEST(TopKMagnitude, MatchesSortOnDistinctValuesAndSignedZeros) {
  Tensor v = normal_tensor(50000, 9);
  v[10] = -0.0f;
  v[20] = 0.0f;
  v[30] = -v[40];  // equal magnitudes, opposite signs
  for (uint64_t k : {1ull, 2ull, 25000ull, 49998ull}) {
    EXPECT_TRUE(select_top_k(v, k, 4096, 3) == top_k_mask(v, k)) << "k=" << k;
  }
}

// A selection that starts with a sample (every `stride`-th chunk, or the chunks `sample` lists),
// run over shuffled chunks of d = a − b (of a when b is empty). Returns the kept mask; *full
// receives the number of full passes after the sample.
struct SampledRun {
  std::vector<bool> keep;
  int full = 0;
};
SampledRun run_sampled(kernels::TopKMagnitude& top, const Tensor& a, const Tensor& b, size_t chunk,
                       const std::vector<uint64_t>& sample) {
  std::vector<uint64_t> offsets;
  for (uint64_t o = 0; o < a.size(); o += chunk) offsets.push_back(o);
  auto add = [&](uint64_t o) {
    const size_t n = std::min<uint64_t>(chunk, a.size() - o);
    top.add_difference(o, a.data() + o, b.empty() ? nullptr : b.data() + o, n);
  };
  std::mt19937 rng(static_cast<uint32_t>(a.size() + chunk));
  SampledRun r;
  if (top.pass() == kernels::TopKMagnitude::Pass::kSample) {
    for (uint64_t o : sample) add(o);
    top.end_pass();
  }
  while (top.pass() != kernels::TopKMagnitude::Pass::kDone) {
    std::shuffle(offsets.begin(), offsets.end(), rng);
    for (uint64_t o : offsets) add(o);
    top.end_pass();
    ++r.full;
  }
  Tensor x = a;
  for (uint64_t o : offsets) {
    const size_t n = std::min<uint64_t>(chunk, a.size() - o);
    if (b.empty()) {
      top.keep_top(o, x.data() + o, n);
    } else {
      top.keep_top_difference(o, a.data() + o, b.data() + o, x.data() + o, n);
    }
  }
  r.keep.resize(a.size());
  for (size_t j = 0; j < a.size(); ++j) r.keep[j] = x[j] != 0.0f;
  return r;
}

std::vector<uint64_t> strided_sample(size_t n, size_t chunk, uint64_t stride) {
  std::vector<uint64_t> s;
  for (uint64_t o = 0; o < n; o += chunk * stride) s.push_back(o);
  return s;
}

// After a sample (every 16th chunk), the k-th largest lands in the window and one full pass
// selects exactly what the sort does: normal values (all distinct), values from a tiny set
// (ties split across chunks), and differences of bf16-rounded values (discrete, with zeros).
TEST(TopKMagnitude, SampleWindowEndsAfterOneFullPass) {
  const size_t n = (size_t{1} << 20) + 3, chunk = 4096;
  const Tensor normal = normal_tensor(n, 31, 0.02f);
  const Tensor tiny = tiny_set_tensor(n, 32);
  Tensor x = normal_tensor(n, 33, 0.02f), base = normal_tensor(n, 34, 0.02f), diff(n);
  auto bf16 = [](float v) {
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) & 0xFFFF0000u);
  };
  for (size_t j = 0; j < n; ++j) {
    base[j] = bf16(base[j]);
    // A fine-tune: most elements move by less than a bf16 step, so their difference is 0.
    x[j] = bf16(j % 3 == 0 ? base[j] + x[j] * 0.1f : base[j]);
    diff[j] = x[j] - base[j];
  }
  const std::vector<uint64_t> sample = strided_sample(n, chunk, 16);
  struct Case {
    const char* name;
    const Tensor* a;
    const Tensor* b;
    const Tensor* d;
  };
  const Tensor none;
  for (const Case& c : {Case{"normal", &normal, &none, &normal}, Case{"tiny", &tiny, &none, &tiny},
                        Case{"bf16 difference", &x, &base, &diff}}) {
    for (uint64_t k : {n / 100, n / 10, n / 4, n / 2}) {
      if (c.d == &diff && k >= n / 3) continue;  // the threshold is 0: one pass without a sample
      kernels::TopKMagnitude top(n, k);
      top.sample_first();
      const SampledRun r = run_sampled(top, *c.a, *c.b, chunk, sample);
      EXPECT_TRUE(r.keep == top_k_mask(*c.d, k)) << c.name << " k=" << k;
      EXPECT_EQ(r.full, 1) << c.name << " k=" << k;
    }
  }
}

// A sample that misleads (its chunks scaled up), a window whose records overflow, and extreme
// k: more passes, the same selection.
TEST(TopKMagnitude, SampleOutsideTheWindowOrOverflowingFallsBackToPassLow) {
  const size_t n = (size_t{1} << 20) + 3, chunk = 4096;
  Tensor v = normal_tensor(n, 41);
  const std::vector<uint64_t> sample = strided_sample(n, chunk, 16);
  Tensor skewed = v;
  for (uint64_t o : sample) {
    for (size_t j = o; j < std::min(n, o + chunk); ++j) skewed[j] *= 100.0f;
  }
  const Tensor none;
  for (uint64_t k : {uint64_t{1}, uint64_t{3}, n / 2, n - 2}) {
    kernels::TopKMagnitude top(n, k);
    top.sample_first();
    const SampledRun r = run_sampled(top, v, none, chunk, sample);
    EXPECT_TRUE(r.keep == top_k_mask(v, k)) << "k=" << k;
    EXPECT_GE(r.full, 1);
    EXPECT_LE(r.full, 2);
  }
  // The sample sees values 100 times larger than the rest: its window misses, pass kLow runs.
  {
    kernels::TopKMagnitude top(n, n / 2);
    top.sample_first();
    // Feeds the skewed sample, then the true vector (the selection is of v).
    for (uint64_t o : sample) {
      top.add(o, skewed.data() + o, std::min<uint64_t>(chunk, n - o));
    }
    top.end_pass();
    ASSERT_EQ(top.pass(), kernels::TopKMagnitude::Pass::kHigh);
    const SampledRun r = run_sampled(top, v, none, chunk, {});
    EXPECT_TRUE(r.keep == top_k_mask(v, n / 2));
    EXPECT_EQ(r.full, 2);
  }
  // Window records capped at 100 entries (257 chunks): they overflow, pass kLow runs and its
  // records overflow too, so pass kTies counts the ties of the tiny-set vector.
  {
    const Tensor tiny = tiny_set_tensor(n, 42);
    kernels::TopKMagnitude top(n, n / 2, 100);
    top.sample_first();
    const SampledRun r = run_sampled(top, tiny, none, chunk, sample);
    EXPECT_TRUE(r.keep == top_k_mask(tiny, n / 2));
    EXPECT_EQ(r.full, 3);
  }
}

// Breadcrumbs' form: two selections over one vector, the second taking the first's sample and
// kHigh histograms (end_pass_from) and its window records through add_difference's `also`; and
// sce's form: k known only after pass kHigh, estimated after the sample.
TEST(TopKMagnitude, SharedAndKLaterSelectionsSampleToo) {
  const size_t n = (size_t{1} << 20) + 3, chunk = 4096;
  const Tensor a = normal_tensor(n, 51), b = normal_tensor(n, 52);
  Tensor d(n);
  for (size_t j = 0; j < n; ++j) d[j] = a[j] - b[j];
  const std::vector<uint64_t> sample = strided_sample(n, chunk, 16);
  std::vector<uint64_t> offsets;
  for (uint64_t o = 0; o < n; o += chunk) offsets.push_back(o);
  auto mask = [&](const kernels::TopKMagnitude& t) {
    Tensor x(n);
    for (uint64_t o : offsets) {
      t.keep_top_difference(o, a.data() + o, b.data() + o, x.data() + o,
                            std::min<uint64_t>(chunk, n - o));
    }
    std::vector<bool> keep(n);
    for (size_t j = 0; j < n; ++j) keep[j] = x[j] != 0.0f;
    return keep;
  };
  const uint64_t k_upper = n / 2 + n / 100, k_top = n / 100;
  kernels::TopKMagnitude upper(n, k_upper), top(n, k_top);
  upper.sample_first();
  top.sample_first();
  int full = 0;
  for (const std::vector<uint64_t>* chunks = &sample;; chunks = &offsets) {
    for (uint64_t o : *chunks) {
      upper.add_difference(o, a.data() + o, b.data() + o, std::min<uint64_t>(chunk, n - o), &top);
    }
    top.end_pass_from(upper);
    upper.end_pass();
    if (upper.pass() == kernels::TopKMagnitude::Pass::kDone) break;
    ++full;
    ASSERT_LE(full, 1) << "the windows missed";
  }
  EXPECT_EQ(top.pass(), kernels::TopKMagnitude::Pass::kDone);
  EXPECT_TRUE(mask(upper) == top_k_mask(d, k_upper));
  EXPECT_TRUE(mask(top) == top_k_mask(d, k_top));

  auto later = kernels::TopKMagnitude::with_k_later(n);
  later->sample_first();
  for (uint64_t o : sample) {
    later->add_difference(o, a.data() + o, b.data() + o, std::min<uint64_t>(chunk, n - o));
  }
  later->estimate_k(n / 3);
  later->end_pass();
  for (uint64_t o : offsets) {
    later->add_difference(o, a.data() + o, b.data() + o, std::min<uint64_t>(chunk, n - o));
  }
  later->set_k(n / 3 + 17);  // the estimate need not be exact
  later->end_pass();
  EXPECT_EQ(later->pass(), kernels::TopKMagnitude::Pass::kDone);
  EXPECT_TRUE(mask(*later) == top_k_mask(d, n / 3 + 17));
}

TEST(TopKMagnitude, NeedsNoPassForNoneOrAllAndNoTiesPassWhenTiesFit) {
  const Tensor v = {3, -1, 2, 2, -5, 0.5};
  int passes = -1;
  EXPECT_EQ(select_top_k(v, 0, 2, 1, &passes), std::vector<bool>(6, false));
  EXPECT_EQ(passes, 0);
  EXPECT_EQ(select_top_k(v, 6, 2, 1, &passes), std::vector<bool>(6, true));
  EXPECT_EQ(passes, 0);
  // k = 4 keeps -5, 3 and both 2s: every tied element fits, so two passes suffice.
  EXPECT_EQ(select_top_k(v, 4, 2, 1, &passes),
            (std::vector<bool>{true, false, true, true, true, false}));
  EXPECT_EQ(passes, 2);
  // k = 3 keeps only the first 2: the low pass records where the tied elements are.
  EXPECT_EQ(select_top_k(v, 3, 2, 1, &passes),
            (std::vector<bool>{true, false, true, false, true, false}));
  EXPECT_EQ(passes, 2);
}

// ---------------------------------------------------------------------------------------------
// linear

Inputs linear_inputs(const std::vector<double>& weights, size_t n) {
  Inputs in;
  for (size_t i = 0; i < weights.size(); ++i) {
    in.tensors.push_back(normal_tensor(n, 100 + i));
    in.per_model.push_back({{"weight", weights[i]}});
  }
  return in;
}

TEST(Linear, NormalizedIsWeightedMean) {
  Inputs in = linear_inputs({0.3, 1.7, 0.5}, 12345);
  expect_matches(run(method("linear"), in), linear_reference(in.tensors, {0.3, 1.7, 0.5}, true));
  // Hand example: (1·2 + 3·6) / 4 = 5.
  Inputs hand;
  hand.tensors = {{2.0f}, {6.0f}};
  hand.per_model = {{{"weight", 1.0}}, {{"weight", 3.0}}};
  EXPECT_EQ(run(method("linear"), hand), Tensor{5.0f});
}

TEST(Linear, WithoutNormalizeIsWeightedSum) {
  Inputs in = linear_inputs({0.3, -1.2}, 5000);
  in.global["normalize"] = 0;
  expect_matches(run(method("linear"), in, {.chunk = 333}),
                 linear_reference(in.tensors, {0.3, -1.2}, false));
}

TEST(Linear, BaseIsAnOrdinaryInput) {
  Inputs in = linear_inputs({1.0, 2.0}, 1000);
  const Tensor without = run(method("linear"), in);
  in.base = 1;
  EXPECT_TRUE(same_bits(run(method("linear"), in), without));
}

TEST(Linear, ZeroWeightSumWithNormalizeIsAnErrorNamingTensorAndWeights) {
  Inputs in = linear_inputs({0.5, -0.5}, 10);
  const std::string error = validate_error(method("linear"), in);
  EXPECT_NE(error.find(kTensorName), std::string::npos) << error;
  EXPECT_NE(error.find("0.5, -0.5"), std::string::npos) << error;
  EXPECT_NE(error.find("normalize"), std::string::npos) << error;
  in.global["normalize"] = 0;
  EXPECT_EQ(validate_error(method("linear"), in), "");
  const Tensor out = run(method("linear"), in);
  for (size_t j = 0; j < out.size(); ++j) {
    EXPECT_FLOAT_EQ(out[j], 0.5f * in.tensors[0][j] - 0.5f * in.tensors[1][j]);
  }
}

TEST(Linear, MissingWeightIsAnErrorNamingTensor) {
  Inputs in = linear_inputs({0.5, 1.0}, 10);
  in.per_model[1].clear();
  EXPECT_NE(validate_error(method("linear"), in).find(kTensorName), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// slerp

Inputs slerp_inputs(Tensor v0, Tensor v1, double t, int base = 0) {
  Inputs in;
  in.tensors = base == 0 ? std::vector<Tensor>{v0, v1} : std::vector<Tensor>{v1, v0};
  in.base = base;
  in.global["t"] = t;
  return in;
}

TEST(Slerp, TZeroReturnsBaseAndTOneReturnsOther) {
  const Tensor v0 = normal_tensor(4321, 1), v1 = normal_tensor(4321, 2);
  EXPECT_TRUE(same_bits(run(method("slerp"), slerp_inputs(v0, v1, 0.0)), v0));
  EXPECT_TRUE(same_bits(run(method("slerp"), slerp_inputs(v0, v1, 1.0)), v1));
  // The base may be either input.
  EXPECT_TRUE(same_bits(run(method("slerp"), slerp_inputs(v0, v1, 0.0, 1)), v0));
}

TEST(Slerp, MatchesReferenceOnRandomTensors) {
  const Tensor v0 = normal_tensor(30000, 3, 0.5f), v1 = normal_tensor(30000, 4, 2.0f, 0.1f);
  for (double t : {0.25, 0.5, 0.8, 1.3}) {
    expect_matches(run(method("slerp"), slerp_inputs(v0, v1, t, 1), {.chunk = 777, .threads = 2}),
                   slerp_reference(v0, v1, t));
  }
}

TEST(Slerp, OutputIsBitIdenticalForAnyChunkOrderAndThreadCount) {
  const Tensor v0 = normal_tensor(200000, 6), v1 = normal_tensor(200000, 7);
  const Tensor first = run(method("slerp"), slerp_inputs(v0, v1, 0.4), {.chunk = 1024});
  for (uint32_t shuffle : {2u, 3u}) {
    EXPECT_TRUE(same_bits(first, run(method("slerp"), slerp_inputs(v0, v1, 0.4),
                                     {.chunk = 1024, .shuffle = shuffle, .threads = 2})));
  }
}

TEST(Slerp, HandComputedTwoDimensionalExample) {
  // n0 = (1, 0), n1 = (0, 1): θ = π/2, so out = sin(π/4)·v0 + sin(π/4)·v1 with v1 unnormalised.
  const Tensor out = run(method("slerp"), slerp_inputs({1, 0}, {0, 2}, 0.5));
  EXPECT_NEAR(out[0], std::sqrt(0.5), 1e-7);
  EXPECT_NEAR(out[1], 2 * std::sqrt(0.5), 2e-7);
  // θ = π/3 between (1, 0) and (1/2, √3/2); t = 1/2 gives the bisector (√3/2, 1/2).
  const Tensor mid = run(method("slerp"), slerp_inputs({1, 0}, {0.5f, std::sqrt(3.0f) / 2}, 0.5));
  EXPECT_NEAR(mid[0], std::sqrt(3.0) / 2, 1e-6);
  EXPECT_NEAR(mid[1], 0.5, 1e-6);
}

TEST(Slerp, NearParallelFallsBackToLerp) {
  // cos(angle) = 0.9996 > 0.9995: lerp, whose midpoint is shorter than slerp's unit one.
  const double a = std::acos(0.9996);
  const Tensor v0 = {1, 0}, v1 = {static_cast<float>(std::cos(a)), static_cast<float>(std::sin(a))};
  const Tensor out = run(method("slerp"), slerp_inputs(v0, v1, 0.5));
  EXPECT_NEAR(out[0], 0.5 * (1 + v1[0]), 1e-7);
  EXPECT_NEAR(out[1], 0.5 * v1[1], 1e-7);
  EXPECT_GT(std::abs(std::hypot(out[0], out[1]) - 1.0), 5e-5);  // not the slerp point
  // Exactly parallel vectors (θ = 0) would divide by sin θ = 0 without the fallback.
  const Tensor p0 = normal_tensor(1000, 5);
  Tensor p1 = p0;
  for (float& x : p1) x *= 2;
  const Tensor lerp = run(method("slerp"), slerp_inputs(p0, p1, 0.3));
  for (size_t j = 0; j < p0.size(); ++j) EXPECT_NEAR(lerp[j], 0.7 * p0[j] + 0.3 * p1[j], 1e-6);
}

TEST(Slerp, ZeroNormVectorStaysUnnormalised) {
  // ‖v0‖ = 0 ≤ 1e-8: n0 = v0 = 0, so dot = 0, θ = π/2 and out = sin(tπ/2)·v1.
  const Tensor out = run(method("slerp"), slerp_inputs({0, 0}, {3, 4}, 0.5));
  EXPECT_NEAR(out[0], 3 * std::sqrt(0.5), 1e-6);
  EXPECT_NEAR(out[1], 4 * std::sqrt(0.5), 1e-6);
}

TEST(Slerp, SingleInputIsCopied) {
  Inputs in;
  in.tensors = {normal_tensor(100, 8)};
  in.global["t"] = 0.5;
  EXPECT_TRUE(same_bits(run(method("slerp"), in), in.tensors[0]));
}

TEST(Slerp, ValidateRejectsOtherInputCountsAndMissingBaseNamingTensor) {
  Inputs three = slerp_inputs({1}, {2}, 0.5);
  three.tensors.push_back({3});
  EXPECT_EQ(validate_error(method("slerp"), three),
            std::string("slerp needs exactly 2 models (the base and one other) for tensor ") +
                kTensorName + ", got 3");
  Inputs no_base = slerp_inputs({1}, {2}, 0.5);
  no_base.base = -1;
  EXPECT_NE(validate_error(method("slerp"), no_base).find(kTensorName), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// passthrough

TEST(Passthrough, ScalesItsInput) {
  Inputs in;
  in.tensors = {normal_tensor(3000, 12)};
  in.per_model = {{{"scale", -0.25}}};
  const Tensor out = run(method("passthrough"), in);
  for (size_t j = 0; j < out.size(); ++j) EXPECT_EQ(out[j], -0.25f * in.tensors[0][j]);
}

TEST(Passthrough, WithoutScaleCopiesBits) {
  Inputs in;
  in.tensors = {normal_tensor(3000, 13)};
  EXPECT_TRUE(same_bits(run(method("passthrough"), in), in.tensors[0]));
}

TEST(Passthrough, ValidateRejectsMoreThanOneInputNamingTensor) {
  Inputs in;
  in.tensors = {{1}, {2}};
  EXPECT_NE(validate_error(method("passthrough"), in).find(kTensorName), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// task_arithmetic

TEST(TaskArithmetic, AddsLambdaScaledWeightedDeltas) {
  // Hand example: b = (1, 2); δ1 = (1, 0) w 1, δ2 = (0, 3) w 0.5; λ = 2 → b + 2·(1, 1.5).
  Inputs hand;
  hand.tensors = {{2, 2}, {1, 5}, {1, 2}};
  hand.base = 2;
  hand.per_model = {{{"weight", 1.0}}, {{"weight", 0.5}}, {}};
  hand.global["lambda"] = 2.0;
  EXPECT_EQ(run(method("task_arithmetic"), hand), (Tensor{3, 5}));

  Inputs in = gta_inputs(20000, {0.7, 0.4, -0.2}, {1, 1, 1}, 21);
  in.global["lambda"] = 0.7;
  expect_matches(
      run(method("task_arithmetic"), in),
      gta_reference(in, with_base({0.7, 0.4, -0.2}), with_base({1, 1, 1}), {.lambda = 0.7}));
}

TEST(TaskArithmetic, NormalizeDividesByTheWeightSum) {
  Inputs in = gta_inputs(5000, {1.0, 3.0}, {1, 1}, 22);
  in.global["normalize"] = 1;
  expect_matches(run(method("task_arithmetic"), in),
                 gta_reference(in, with_base({1.0, 3.0}), with_base({1, 1}), {.normalize = true}));
}

TEST(TaskArithmetic, IgnoresDensityAndReturnsBaseWithoutTaskVectors) {
  Inputs in = gta_inputs(1000, {1.0}, {0.3}, 23);
  expect_matches(run(method("task_arithmetic"), in),
                 gta_reference(in, with_base({1.0}), with_base({1.0}), {}));
  Inputs only_base;
  only_base.tensors = {normal_tensor(100, 24)};
  only_base.base = 0;
  EXPECT_TRUE(same_bits(run(method("task_arithmetic"), only_base), only_base.tensors[0]));
}

// ---------------------------------------------------------------------------------------------
// ties

TEST(Ties, KeepsExactlyKLargestDeltas) {
  // One model over a zero base: δ = x, drawn from {±0.5, ±1, ±2}, so thousands of elements tie
  // at the threshold; ties keep the lowest indices.
  const size_t n = 100003;
  Inputs in;
  in.tensors = {tiny_set_tensor(n, 31), Tensor(n, 0.0f)};
  in.base = 1;
  for (double density : {1.0, 0.5, 0.1}) {
    in.per_model = {{{"weight", 1.0}, {"density", density}}, {}};
    const Tensor out = run(method("ties"), in, {.chunk = 4099, .threads = 2});
    const auto k = static_cast<long>(std::floor(density * n));
    std::vector<bool> kept(n);
    for (size_t j = 0; j < n; ++j) kept[j] = out[j] != 0.0f;
    EXPECT_EQ(std::count(kept.begin(), kept.end(), true), k) << density;
    EXPECT_TRUE(kept == top_k_mask(in.tensors[0], k)) << density;
    for (size_t j = 0; j < n; ++j) {
      // A single model's kept deltas pass unchanged (normalised by their own weight).
      if (kept[j]) {
        ASSERT_EQ(out[j], in.tensors[0][j]);
      }
    }
  }
}

TEST(Ties, MatchesReferenceWithSeveralModels) {
  const std::vector<double> w = {1.0, 0.6, 0.3};
  const std::vector<double> d = {0.5, 0.3, 0.9};
  Inputs in = gta_inputs(40000, w, d, 41);
  expect_matches(
      run(method("ties"), in, {.chunk = 3000, .shuffle = 4}),
      gta_reference(in, with_base(w), with_base(d),
                    {.sparsify = Sparsify::kMagnitude, .consensus = true, .normalize = true}));
  in.global = {{"normalize", 0}, {"rescale", 1}, {"lambda", 1.5}};
  expect_matches(
      run(method("ties"), in, {.chunk = 3000, .shuffle = 5, .threads = 2}),
      gta_reference(
          in, with_base(w), with_base(d),
          {.sparsify = Sparsify::kMagnitude, .consensus = true, .rescale = true, .lambda = 1.5}));
}

// A tensor above kSampleMinElements: each selection starts with a sample pass over every
// sample_stride-th chunk, and the result is still the sort's.
TEST(Ties, SampledLargeTensorMatchesReference) {
  const std::vector<double> w = {1.0, 0.6};
  const std::vector<double> d = {0.5, 0.1};
  Inputs in = gta_inputs(kSampleMinElements + 4099, w, d, 43);
  expect_matches(
      run(method("ties"), in, {.chunk = 8192, .shuffle = 6, .threads = 2}),
      gta_reference(in, with_base(w), with_base(d),
                    {.sparsify = Sparsify::kMagnitude, .consensus = true, .normalize = true}));
}

TEST(Ties, SignElectionKeepsMajoritySignPerElement) {
  // Base 0, weights 1, density 1. Per element Σδ decides the sign (0 counts as +); deltas of the
  // other sign and zeros are dropped; the kept ones are averaged by their weights.
  Inputs in;
  in.tensors = {{1, -2, 3, 0.5f}, {2, 1, -1, -0.5f}, {-4, 1, -1, 0}, {0, 0, 0, 0}};
  in.base = 3;
  in.per_model = {{{"weight", 1.0}}, {{"weight", 1.0}}, {{"weight", 1.0}}, {}};
  // Σ = (-1, 0, 1, 0): element 0 keeps only -4; element 1 keeps 1 and 1 (mean 1); element 2
  // keeps 3; element 3 keeps 0.5 (the 0 of model 3 is not a vote for +).
  EXPECT_EQ(run(method("ties"), in), (Tensor{-4, 1, 3, 0.5f}));
  in.global["normalize"] = 0;
  EXPECT_EQ(run(method("ties"), in), (Tensor{-4, 2, 3, 0.5f}));
  // Weights enter the vote: with w = (1, 1, 0.2), element 0 turns + (1 + 2 − 0.8 ≥ 0) and
  // element 1 turns − (−2 + 1 + 0.2 < 0).
  in.global.clear();
  in.per_model[2]["weight"] = 0.2;
  const Tensor out = run(method("ties"), in);
  EXPECT_FLOAT_EQ(out[0], 1.5f);   // (1·1 + 1·2) / (1 + 1)
  EXPECT_FLOAT_EQ(out[1], -2.0f);  // (1·−2) / 1
}

TEST(Ties, DensityZeroDropsTheTaskVectorAndWarns) {
  Inputs in = gta_inputs(1000, {1.0, 0.5}, {0.0, 0.4}, 51);
  const Tensor out = run(method("ties"), in);
  expect_matches(
      out, gta_reference(in, with_base({1.0, 0.5}), with_base({0.0, 0.4}),
                         {.sparsify = Sparsify::kMagnitude, .consensus = true, .normalize = true}));
  // Same as merging without that model.
  Inputs without = in;
  without.tensors.erase(without.tensors.begin());
  without.per_model.erase(without.per_model.begin());
  without.base -= 1;
  EXPECT_TRUE(same_bits(out, run(method("ties"), without)));

  const auto& ties = dynamic_cast<const GtaMethod&>(method("ties"));
  const ResolvedParams params = resolve(ties, in);
  const std::vector<std::string> warnings = ties.warnings(context(in, params));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find(kTensorName), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("density 0"), std::string::npos) << warnings[0];
  // A density too small for the tensor (floor(0.0005 · 1000) = 0) is the same case.
  in.per_model[0]["density"] = 0.0005;
  EXPECT_EQ(ties.warnings(context(in, resolve(ties, in))).size(), 1u);
  in.per_model[0]["density"] = 0.001;
  EXPECT_TRUE(ties.warnings(context(in, resolve(ties, in))).empty());
}

// ---------------------------------------------------------------------------------------------
// dare_ties / dare_linear

TEST(DareLinear, KeepsDensityFractionWithinOnePercent) {
  const size_t n = 1 << 20;
  for (double density : {0.1, 0.3, 0.7}) {
    Inputs in = gta_inputs(n, {1.0}, {density}, 61);
    in.global["rescale"] = 0;
    const Tensor out = run(method("dare_linear"), in, {.chunk = 65536, .threads = 2});
    const Tensor& b = in.tensors[1];
    size_t kept = 0;
    for (size_t j = 0; j < n; ++j) kept += out[j] != b[j];
    EXPECT_NEAR(static_cast<double>(kept) / n, density, 0.01 * density);
  }
}

TEST(DareLinear, RescalePreservesTheL1NormOfTheTaskVector) {
  const size_t n = 1 << 20;
  Inputs in;
  in.tensors = {normal_tensor(n, 62), Tensor(n, 0.0f)};  // zero base: out is the task vector
  in.base = 1;
  in.per_model = {{{"weight", 1.0}, {"density", 0.2}}, {}};
  in.seed = 7;
  const Tensor out = run(method("dare_linear"), in, {.chunk = 65536});
  double l1_in = 0, l1_out = 0;
  for (size_t j = 0; j < n; ++j) {
    l1_in += std::abs(in.tensors[0][j]);
    l1_out += std::abs(out[j]);
  }
  EXPECT_NEAR(l1_out / l1_in, 1.0, 1e-6);
  expect_matches(out, gta_reference(in, {1.0, 0.0}, {0.2, 1.0},
                                    {.sparsify = Sparsify::kRandom, .rescale = true}));
}

TEST(DareTies, MatchesReferenceWithSeveralModels) {
  const std::vector<double> w = {0.8, 0.5, 0.4};
  const std::vector<double> d = {0.3, 0.6, 0.2};
  Inputs in = gta_inputs(100000, w, d, 71);
  in.seed = 1234;
  expect_matches(
      run(method("dare_ties"), in, {.chunk = 5000, .threads = 2}),
      gta_reference(in, with_base(w), with_base(d),
                    {.sparsify = Sparsify::kRandom, .consensus = true, .rescale = true}));
  in.global["normalize"] = 1;
  expect_matches(
      run(method("dare_linear"), in),
      gta_reference(in, with_base(w), with_base(d),
                    {.sparsify = Sparsify::kRandom, .normalize = true, .rescale = true}));
}

TEST(Dare, OutputIsBitIdenticalForAnyChunkingOrderAndThreadCount) {
  const size_t n = 1 << 20;
  const std::vector<double> w = {0.8, 0.5, 0.4};
  Inputs in = gta_inputs(n, w, {0.3, 0.6, 0.2}, 81);
  in.seed = 99;
  for (const char* name : {"dare_ties", "dare_linear", "ties"}) {
    const Tensor whole = run(method(name), in, {.chunk = n});
    EXPECT_TRUE(same_bits(whole, run(method(name), in, {.chunk = 1000, .shuffle = 2}))) << name;
    EXPECT_TRUE(
        same_bits(whole, run(method(name), in, {.chunk = 65536, .shuffle = 3, .threads = 2})))
        << name;
    EXPECT_TRUE(
        same_bits(whole, run(method(name), in, {.chunk = 4099, .shuffle = 4, .threads = 2})))
        << name;
  }
}

// The mask of a single-model dare_linear merge over a zero base.
std::vector<bool> dare_mask(const Tensor& x, uint64_t seed, const std::string& name) {
  Inputs in;
  in.tensors = {x, Tensor(x.size(), 0.0f)};
  in.base = 1;
  in.per_model = {{{"weight", 1.0}, {"density", 0.5}}, {}};
  in.seed = seed;
  in.name = name;
  const Tensor out = run(method("dare_linear"), in);
  std::vector<bool> mask(x.size());
  for (size_t j = 0; j < x.size(); ++j) mask[j] = out[j] != 0.0f;
  return mask;
}

TEST(Dare, MaskDependsOnSeedTensorNameAndInputOnly) {
  const Tensor x = normal_tensor(100000, 91);
  const std::vector<bool> a = dare_mask(x, 1, kTensorName);
  EXPECT_EQ(a, dare_mask(x, 1, kTensorName));
  auto differing = [&](const std::vector<bool>& b) {
    size_t diff = 0;
    for (size_t j = 0; j < a.size(); ++j) diff += a[j] != b[j];
    return static_cast<double>(diff) / a.size();
  };
  // Independent masks of density 0.5 differ in about half the elements.
  EXPECT_NEAR(differing(dare_mask(x, 2, kTensorName)), 0.5, 0.02);
  EXPECT_NEAR(differing(dare_mask(x, 1, "model.layers.4.mlp.down_proj.weight")), 0.5, 0.02);
  // Two identical models get independent masks (the input index keys the stream).
  Inputs twins;
  twins.tensors = {x, x, Tensor(x.size(), 0.0f)};
  twins.base = 2;
  twins.per_model = {{{"weight", 1.0}, {"density", 0.5}}, {{"weight", 1.0}, {"density", 0.5}}, {}};
  twins.global["rescale"] = 0;
  const Tensor out = run(method("dare_linear"), twins);
  size_t both = 0, one = 0;
  for (size_t j = 0; j < x.size(); ++j) {
    both += out[j] == 2 * x[j];
    one += out[j] == x[j];
  }
  EXPECT_NEAR(static_cast<double>(both) / x.size(), 0.25, 0.02);
  EXPECT_NEAR(static_cast<double>(one) / x.size(), 0.5, 0.02);
}

// ---------------------------------------------------------------------------------------------
// Validation of the GTA family.

TEST(Gta, ValidateErrorsNameTheTensorAndTheProblem) {
  for (const char* name : {"task_arithmetic", "ties", "dare_ties", "dare_linear"}) {
    Inputs in = gta_inputs(10, {1.0, 1.0}, {0.5, 0.5}, 1);
    EXPECT_EQ(validate_error(method(name), in), "") << name;

    Inputs no_base = in;
    no_base.base = -1;
    const std::string base_error = validate_error(method(name), no_base);
    EXPECT_NE(base_error.find(kTensorName), std::string::npos) << base_error;
    EXPECT_NE(base_error.find("base"), std::string::npos) << base_error;

    Inputs no_weight = in;
    no_weight.per_model[1].erase("weight");
    const std::string weight_error = validate_error(method(name), no_weight);
    EXPECT_NE(weight_error.find(kTensorName), std::string::npos) << weight_error;
    EXPECT_NE(weight_error.find("weight"), std::string::npos) << weight_error;
  }
  for (const char* name : {"ties", "dare_ties", "dare_linear"}) {
    for (double bad : {1.5, -0.1}) {
      Inputs in = gta_inputs(10, {1.0, 1.0}, {0.5, bad}, 1);
      const std::string error = validate_error(method(name), in);
      EXPECT_NE(error.find(kTensorName), std::string::npos) << error;
      EXPECT_NE(error.find("density"), std::string::npos) << error;
      EXPECT_NE(error.find(fmt::format("{}", bad)), std::string::npos) << error;
    }
  }
}

}  // namespace
}  // namespace smelt::methods
