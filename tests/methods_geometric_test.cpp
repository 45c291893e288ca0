// Tests of the geometric merge methods (nuslerp, multislerp, karcher, model_stock, nearswap,
// arcee_fusion). Each runs exactly as the executor runs it (method_driver.h: validate, begin,
// statistics passes and merge over shuffled chunks, possibly on several threads) and is compared
// with an independent whole-tensor double-precision reference written from the formulas of
// docs/methods.md (nuslerp, multislerp, karcher, model_stock, nearswap, arcee_fusion), never from
// smelt's coefficient tricks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "method_driver.h"
#include "smelt/error.h"
#include "smelt/kernels/random.h"
#include "smelt/methods/method.h"

namespace smelt::methods {
namespace {

using namespace smelt::testing::method_driver;

using Vec = std::vector<double>;

// ---------------------------------------------------------------------------------------------
// Test data and comparison.

// `base` plus a normal perturbation of size `stddev`: a fine-tuned model near the base.
Tensor near(const Tensor& base, uint32_t seed, float stddev) {
  Tensor t = normal_tensor(base.size(), seed, stddev);
  for (size_t j = 0; j < t.size(); ++j) t[j] += base[j];
  return t;
}

double flag(bool b) { return b ? 1.0 : 0.0; }

Vec to_double(const Tensor& t) { return Vec(t.begin(), t.end()); }

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += a[j] * b[j];
  return s;
}

double norm(const Vec& a) { return std::sqrt(dot(a, a)); }

// A reference result: values, the scale of the terms that produced each value (the tolerance is
// relative to it: a sum's rounding error scales with its terms, not its result), and elements
// whose result hinges on a comparison within rounding (skipped).
struct Reference {
  Vec value;
  Vec scale;
  std::vector<bool> ambiguous;
};

void expect_finite(const Tensor& got) {
  size_t bad = 0;
  for (float v : got) bad += !std::isfinite(v);
  EXPECT_EQ(bad, 0u) << "non-finite outputs";
}

void expect_matches(const Tensor& got, const Reference& ref, double rel_tol = 1e-6) {
  ASSERT_EQ(got.size(), ref.value.size());
  expect_finite(got);
  size_t bad = 0;
  for (size_t j = 0; j < got.size(); ++j) {
    if (!ref.ambiguous.empty() && ref.ambiguous[j]) continue;
    const double tol = rel_tol * std::max(std::abs(ref.value[j]), ref.scale[j]);
    if (!(std::abs(got[j] - ref.value[j]) <= tol)) {
      if (++bad <= 5) {
        ADD_FAILURE() << "element " << j << ": got " << got[j] << ", reference " << ref.value[j]
                      << ", tolerance " << tol;
      }
    }
  }
  EXPECT_EQ(bad, 0u);
}

// Every run option the executor could use must give the same bits.
void expect_same_for_any_chunk_order(const Method& m, const Inputs& in, size_t chunk) {
  const Tensor first = run(m, in, {.chunk = chunk, .shuffle = 1, .threads = 1});
  EXPECT_TRUE(same_bits(first, run(m, in, {.chunk = chunk, .shuffle = 2, .threads = 2})));
  EXPECT_TRUE(same_bits(first, run(m, in, {.chunk = chunk, .shuffle = 3, .threads = 3})));
}

std::string error_of(const Method& m, const Inputs& in) {
  try {
    run(m, in);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// Registry.

TEST(GeometricRegistry, MethodsHaveMergekitCardNamesBaseUseAndParameterDefaults) {
  struct Expected {
    std::string pretty, url;
    BaseUse base;
    std::map<std::string, std::optional<double>> global, model;
  };
  const std::map<std::string, Expected> table = {
      {"nuslerp",
       {"NuSLERP",
        "",
        BaseUse::kOptional,
        {{"nuslerp_row_wise", 0.0}, {"nuslerp_flatten", 1.0}},
        {{"weight", std::nullopt}}}},
      {"multislerp",
       {"Multi-SLERP",
        "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
        BaseUse::kOptional,
        {{"normalize_weights", 1.0}, {"eps", 1e-8}},
        {{"weight", std::nullopt}}}},
      {"karcher",
       {"Karcher Mean",
        "https://en.wikipedia.org/wiki/Karcher_mean",
        BaseUse::kNone,
        {{"max_iter", 10.0}, {"tol", 1e-5}},
        {}}},
      {"model_stock",
       {"Model Stock",
        "https://arxiv.org/abs/2403.19522",
        BaseUse::kRequired,
        {{"filter_wise", 0.0}},
        {}}},
      {"nearswap",
       {"NearSwap",
        "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
        BaseUse::kRequired,
        {{"t", std::nullopt}},
        {}}},
      {"arcee_fusion", {"Arcee Fusion", "https://arcee.ai", BaseUse::kRequired, {}, {}}},
  };
  for (const auto& [name, e] : table) {
    const Method* m = find_method(name);
    ASSERT_NE(m, nullptr) << name;
    EXPECT_EQ(m->name(), name);
    EXPECT_EQ(m->pretty_name(), e.pretty) << name;
    EXPECT_EQ(m->reference_url(), e.url) << name;
    EXPECT_EQ(m->base_use(), e.base) << name;
    std::map<std::string, std::optional<double>> global, model;
    for (const ParamSpec& p : m->global_params()) global[p.name] = p.default_value;
    for (const ParamSpec& p : m->model_params()) model[p.name] = p.default_value;
    EXPECT_EQ(global, e.global) << name;
    EXPECT_EQ(model, e.model) << name;
  }
}

TEST(GeometricRegistry, ListsTheMethodsInMergekitRegistryOrder) {
  // mergekit's order (docs/methods.md), restricted to the methods smelt has registered.
  const std::vector<std::string> mergekit = {"linear",
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
                                             "ramplus_tl"};
  const std::vector<std::string> names = method_names();
  std::vector<std::string> expected;
  for (const std::string& n : mergekit) {
    if (std::find(names.begin(), names.end(), n) != names.end()) expected.push_back(n);
  }
  EXPECT_EQ(names, expected);
  for (const char* mine :
       {"nuslerp", "multislerp", "karcher", "model_stock", "nearswap", "arcee_fusion"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), mine), names.end()) << mine;
  }
}

// ---------------------------------------------------------------------------------------------
// nuslerp

// The groups of element indices that nuslerp interpolates as vectors, from docs/methods.md's
// wording: flatten → one vector; else the tensor is transposed (dims 0 and −1) when row_wise and
// each slice along the last dimension is a vector.
std::vector<std::vector<size_t>> nuslerp_vectors(const std::vector<uint64_t>& shape, bool row_wise,
                                                 bool flatten) {
  size_t numel = 1;
  for (uint64_t d : shape) numel *= d;
  std::vector<std::vector<size_t>> groups;
  if (flatten || shape.size() <= 1) {
    groups.emplace_back(numel);
    std::iota(groups[0].begin(), groups[0].end(), 0);
    return groups;
  }
  const size_t nd = shape.size();
  std::vector<size_t> stride(nd, 1);
  for (size_t d = nd - 1; d-- > 0;) stride[d] = stride[d + 1] * shape[d + 1];
  std::vector<uint64_t> tshape = shape;  // shape after the (optional) transpose
  if (row_wise) std::swap(tshape.front(), tshape.back());
  // Walk the transposed tensor in row-major order; each run along its last dim is a vector.
  std::vector<uint64_t> idx(nd, 0);
  const size_t last = tshape.back();
  for (size_t e = 0; e < numel; ++e) {
    if (e % last == 0) groups.emplace_back();
    std::vector<uint64_t> orig = idx;
    if (row_wise) std::swap(orig.front(), orig.back());
    size_t offset = 0;
    for (size_t d = 0; d < nd; ++d) offset += orig[d] * stride[d];
    groups.back().push_back(offset);
    for (size_t d = nd; d-- > 0;) {
      if (++idx[d] < tshape[d]) break;
      idx[d] = 0;
    }
  }
  return groups;
}

Reference nuslerp_reference(const Inputs& in, double w1, double w2, bool row_wise, bool flatten) {
  std::vector<size_t> models;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) != in.base) models.push_back(i);
  }
  const size_t n = in.tensors[0].size();
  Vec b(n, 0.0);
  if (in.base >= 0) b = to_double(in.tensors[in.base]);
  const double t = std::abs(w1 + w2) < 1e-6 ? 0.5 : w2 / (w1 + w2);
  Reference ref{Vec(n), Vec(n), {}};
  const std::vector<uint64_t> shape = in.shape.empty() ? std::vector<uint64_t>{n} : in.shape;
  for (const std::vector<size_t>& group : nuslerp_vectors(shape, row_wise, flatten)) {
    Vec a, c;
    for (size_t j : group) {
      a.push_back(in.tensors[models[0]][j] - b[j]);
      c.push_back(in.tensors[models[1]][j] - b[j]);
    }
    const double cos_theta =
        std::clamp(dot(a, c) / (std::max(norm(a), 1e-7) * std::max(norm(c), 1e-7)), -1.0, 1.0);
    const double theta = std::acos(cos_theta);
    double ka = 1 - t, kc = t;
    if (std::abs(std::sin(theta)) >= 1e-8) {
      ka = std::sin((1 - t) * theta) / std::sin(theta);
      kc = std::sin(t * theta) / std::sin(theta);
    }
    for (size_t g = 0; g < group.size(); ++g) {
      const size_t j = group[g];
      ref.value[j] = b[j] + ka * a[g] + kc * c[g];
      ref.scale[j] = std::abs(b[j]) + std::abs(ka * a[g]) + std::abs(kc * c[g]);
    }
  }
  return ref;
}

// Two models (and a base, placed between them to check input order is respected) of `shape`.
Inputs nuslerp_inputs(const std::vector<uint64_t>& shape, bool with_base, double w1, double w2,
                      uint32_t seed) {
  size_t n = 1;
  for (uint64_t d : shape) n *= d;
  Inputs in;
  in.shape = shape;
  const Tensor base = normal_tensor(n, seed, 0.05f);
  in.tensors = {near(base, seed + 1, 0.01f), near(base, seed + 2, 0.01f)};
  in.per_model = {{{"weight", w1}}, {{"weight", w2}}};
  if (with_base) {
    in.tensors.insert(in.tensors.begin() + 1, base);
    in.per_model.insert(in.per_model.begin() + 1, ParamMap{});
    in.base = 1;
  }
  return in;
}

TEST(NuSlerp, HandComputedOrthogonalVectorsMeetHalfway) {
  // (1, 0) and (0, 2) are orthogonal: θ = π/2, t = ½ gives sin(π/4)·v0 + sin(π/4)·v1.
  Inputs in;
  in.tensors = {{1, 0}, {0, 2}};
  in.per_model = {{{"weight", 1.0}}, {{"weight", 1.0}}};
  const Tensor out = run(method("nuslerp"), in);
  EXPECT_NEAR(out[0], std::sqrt(0.5), 1e-7);
  EXPECT_NEAR(out[1], 2 * std::sqrt(0.5), 2e-7);
  // With a base (1, 1) the same happens to the task vectors: b + (√½, 2√½).
  Inputs based;
  based.tensors = {{2, 1}, {1, 1}, {1, 3}};
  based.base = 1;
  based.per_model = {{{"weight", 1.0}}, {}, {{"weight", 1.0}}};
  const Tensor out2 = run(method("nuslerp"), based);
  EXPECT_NEAR(out2[0], 1 + std::sqrt(0.5), 2e-7);
  EXPECT_NEAR(out2[1], 1 + 2 * std::sqrt(0.5), 2e-7);
  // t = w2 / (w1 + w2): weights 3 and 1 give t = ¼, i.e. sin(3π/8)·v0 + sin(π/8)·v1.
  in.per_model = {{{"weight", 3.0}}, {{"weight", 1.0}}};
  const Tensor quarter = run(method("nuslerp"), in);
  EXPECT_NEAR(quarter[0], std::sin(3 * std::numbers::pi / 8), 1e-7);
  EXPECT_NEAR(quarter[1], 2 * std::sin(std::numbers::pi / 8), 2e-7);
}

TEST(NuSlerp, MatchesReferenceForEveryBaseRowWiseFlattenCombination) {
  for (const std::vector<uint64_t>& shape :
       {std::vector<uint64_t>{37, 53}, std::vector<uint64_t>{6, 7, 9}}) {
    for (bool with_base : {false, true}) {
      for (bool row_wise : {false, true}) {
        for (bool flatten : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "shape[0] " << shape[0] << " base " << with_base
                                            << " row_wise " << row_wise << " flatten " << flatten);
          Inputs in = nuslerp_inputs(shape, with_base, 0.7, 0.3, 11);
          in.global = {{"nuslerp_row_wise", flag(row_wise)}, {"nuslerp_flatten", flag(flatten)}};
          const Reference ref = nuslerp_reference(in, 0.7, 0.3, row_wise, flatten);
          // Small chunks: several per tensor, columns spread over many chunks.
          expect_matches(run(method("nuslerp"), in, {.chunk = 200, .shuffle = 5, .threads = 2}),
                         ref);
          expect_matches(run(method("nuslerp"), in, {.chunk = 1 << 20}), ref);
        }
      }
    }
  }
}

TEST(NuSlerp, RowAndColumnModesInterpolateEachVectorSeparately) {
  // Rows of [2, 2]: row 0 = ((1, 0), (0, 1)) orthogonal; row 1 = ((1, 0), (3, 0)) colinear → lerp.
  Inputs in;
  in.shape = {2, 2};
  in.tensors = {{1, 0, 1, 0}, {0, 1, 3, 0}};
  in.per_model = {{{"weight", 1.0}}, {{"weight", 1.0}}};
  in.global = {{"nuslerp_flatten", 0}};
  const Tensor rows = run(method("nuslerp"), in);
  EXPECT_NEAR(rows[0], std::sqrt(0.5), 1e-7);
  EXPECT_NEAR(rows[1], std::sqrt(0.5), 1e-7);
  EXPECT_FLOAT_EQ(rows[2], 2.0f);  // (1 + 3) / 2
  EXPECT_FLOAT_EQ(rows[3], 0.0f);
  // Columns (row_wise): column 0 = ((1, 1), (0, 3)), column 1 = ((0, 0), (1, 0)).
  in.global["nuslerp_row_wise"] = 1;
  const Tensor cols = run(method("nuslerp"), in);
  const Reference ref = nuslerp_reference(in, 1.0, 1.0, true, false);
  expect_matches(cols, ref);
  // Column 1 of model 0 is zero: θ = π/2, so it gets sin(π/4)·(1, 0).
  EXPECT_NEAR(cols[1], std::sqrt(0.5), 1e-7);
  EXPECT_NEAR(cols[3], 0.0, 1e-7);
}

TEST(NuSlerp, ColinearAndZeroVectorsStayFinite) {
  const size_t n = 4000;
  const Tensor x = normal_tensor(n, 21);
  Tensor twice = x;
  for (float& v : twice) v *= 2;
  Inputs in;
  in.tensors = {x, twice};
  in.per_model = {{{"weight", 1.0}}, {{"weight", 3.0}}};
  // Exactly parallel: sin θ = 0, so lerp with t = ¾: ¼x + ¾·2x = 1.75x.
  const Tensor out = run(method("nuslerp"), in, {.chunk = 999});
  expect_finite(out);
  for (size_t j = 0; j < n; ++j) ASSERT_NEAR(out[j], 1.75 * x[j], 1e-6 * std::abs(x[j]) + 1e-7);
  // Exactly antiparallel: θ = π, sin θ ≈ 0 → lerp as well: ¼x − ¾·2x = −1.25x.
  for (float& v : twice) v = -v;
  in.tensors = {x, twice};
  const Tensor anti = run(method("nuslerp"), in, {.chunk = 999});
  expect_finite(anti);
  for (size_t j = 0; j < n; ++j) ASSERT_NEAR(anti[j], -1.25 * x[j], 1e-6 * std::abs(x[j]) + 1e-7);
  // Zero vectors (a model equal to the base, in every mode): norms clamp to 1e-7, result finite.
  for (bool flatten : {false, true}) {
    for (bool row_wise : {false, true}) {
      Inputs z = nuslerp_inputs({20, 30}, true, 1.0, 1.0, 22);
      z.tensors[0] = z.tensors[1];  // model 0 == base: a zero task vector
      z.global = {{"nuslerp_row_wise", flag(row_wise)}, {"nuslerp_flatten", flag(flatten)}};
      expect_matches(run(method("nuslerp"), z, {.chunk = 120}),
                     nuslerp_reference(z, 1.0, 1.0, row_wise, flatten));
    }
  }
}

TEST(NuSlerp, WeightsSummingToZeroUseTHalf) {
  Inputs in = nuslerp_inputs({30, 40}, false, 1.0, -1.0, 31);
  Inputs half = in;
  half.per_model = {{{"weight", 2.0}}, {{"weight", 2.0}}};
  const Tensor out = run(method("nuslerp"), in);
  expect_finite(out);
  EXPECT_TRUE(same_bits(out, run(method("nuslerp"), half)));
}

TEST(NuSlerp, OneDimensionalTensorIsOneVectorInEveryMode) {
  Inputs in = nuslerp_inputs({500}, true, 0.4, 0.6, 41);
  const Tensor flat = run(method("nuslerp"), in);
  for (bool row_wise : {false, true}) {
    in.global = {{"nuslerp_row_wise", flag(row_wise)}, {"nuslerp_flatten", 0.0}};
    EXPECT_TRUE(same_bits(flat, run(method("nuslerp"), in, {.chunk = 1000}))) << row_wise;
  }
}

TEST(NuSlerp, OutputIsBitIdenticalForAnyThreadCountAndChunkOrder) {
  for (bool row_wise : {false, true}) {
    for (bool flatten : {false, true}) {
      Inputs in = nuslerp_inputs({64, 48}, true, 0.5, 0.8, 51);
      in.global = {{"nuslerp_row_wise", flag(row_wise)}, {"nuslerp_flatten", flag(flatten)}};
      expect_same_for_any_chunk_order(method("nuslerp"), in, 48 * 5);
    }
  }
}

TEST(NuSlerp, SingleInputIsCopied) {
  Inputs in;
  in.tensors = {normal_tensor(100, 61)};
  in.per_model = {{{"weight", 1.0}}};
  EXPECT_TRUE(same_bits(run(method("nuslerp"), in), in.tensors[0]));
}

TEST(NuSlerp, ValidateRejectsWrongInputCountsAndMissingWeightsNamingTensor) {
  // The base is one of the two models: 2 inputs with a base.
  Inputs two = nuslerp_inputs({10}, false, 1, 1, 1);
  two.base = 0;
  std::string error = validate_error(method("nuslerp"), two);
  EXPECT_TRUE(contains(error, kTensorName)) << error;
  EXPECT_TRUE(contains(error, "base model can not be one of the two models")) << error;
  // Three models without a base.
  Inputs three = nuslerp_inputs({10}, true, 1, 1, 1);
  three.base = -1;
  three.per_model[1] = {{"weight", 1.0}};
  error = validate_error(method("nuslerp"), three);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "exactly two")) << error;
  // A model without a weight.
  Inputs no_weight = nuslerp_inputs({10}, true, 1, 1, 1);
  no_weight.per_model[2].clear();
  error = validate_error(method("nuslerp"), no_weight);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "weight")) << error;
  EXPECT_EQ(validate_error(method("nuslerp"), nuslerp_inputs({10}, true, 1, 1, 1)), "");
}

// ---------------------------------------------------------------------------------------------
// multislerp

// mergekit's algorithm on whole vectors in double (docs/methods.md); throws std::runtime_error
// where mergekit raises.
Reference multislerp_reference(const Inputs& in, Vec w, bool normalize, double eps = 1e-8) {
  const size_t n = in.tensors[0].size();
  Vec b(n, 0.0);
  if (in.base >= 0) b = to_double(in.tensors[in.base]);
  std::vector<Vec> v;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) == in.base) continue;
    Vec d(n);
    for (size_t j = 0; j < n; ++j) d[j] = in.tensors[i][j] - b[j];
    v.push_back(std::move(d));
  }
  if (normalize) {
    const double s = std::accumulate(w.begin(), w.end(), 0.0);
    for (double& x : w) x /= s;
  }
  const size_t k = v.size();
  Vec r(k);
  std::vector<Vec> u(k, Vec(n));
  Vec m(n, 0.0);
  for (size_t i = 0; i < k; ++i) {
    r[i] = norm(v[i]);
    for (size_t j = 0; j < n; ++j) {
      u[i][j] = v[i][j] / (r[i] + eps);
      m[j] += w[i] * u[i][j];
    }
  }
  Reference ref{Vec(n), Vec(n), {}};
  const double m_norm = norm(m);
  if (m_norm < eps) {
    if (k != 2) throw std::runtime_error("weighted sum of the input tensors is zero");
    for (size_t j = 0; j < n; ++j) {
      ref.value[j] = b[j] + w[0] * v[0][j] + w[1] * v[1][j];
      ref.scale[j] = std::abs(b[j]) + std::abs(w[0] * v[0][j]) + std::abs(w[1] * v[1][j]);
    }
    return ref;
  }
  for (double& x : m) x /= m_norm;
  Vec tangent(n, 0.0);
  for (size_t i = 0; i < k; ++i) {
    const double d = dot(u[i], m);
    for (size_t j = 0; j < n; ++j) tangent[j] += w[i] * (u[i][j] - d * m[j]);
  }
  const double tn = norm(tangent) + eps;
  double avg_norm = 0;
  for (size_t i = 0; i < k; ++i) avg_norm += w[i] * r[i];
  double max_ratio = 0;  // bounds the size of each input's term in the result
  for (size_t i = 0; i < k; ++i) max_ratio = std::max(max_ratio, std::abs(avg_norm) / r[i]);
  for (size_t j = 0; j < n; ++j) {
    ref.value[j] = b[j] + (m[j] * std::cos(tn) + tangent[j] * std::sin(tn) / tn) * avg_norm;
    double terms = 0;
    for (size_t i = 0; i < k; ++i) terms += std::abs(v[i][j]);
    ref.scale[j] = std::abs(b[j]) + 2 * max_ratio * terms;
  }
  return ref;
}

Inputs multislerp_inputs(size_t models, const Vec& weights, bool with_base, size_t n,
                         uint32_t seed) {
  Inputs in;
  const Tensor base = normal_tensor(n, seed, 0.05f);
  for (size_t i = 0; i < models; ++i) {
    // Correlated task vectors of different sizes.
    Tensor x = near(base, seed + 1 + i, 0.01f * (1 + i));
    const Tensor shared = normal_tensor(n, seed + 100, 0.01f);
    for (size_t j = 0; j < n; ++j) x[j] += shared[j];
    in.tensors.push_back(x);
    in.per_model.push_back({{"weight", weights[i]}});
  }
  if (with_base) {
    in.tensors.push_back(base);
    in.per_model.push_back({});
    in.base = static_cast<int>(models);
  }
  return in;
}

TEST(MultiSlerp, HandComputedOrthogonalVectorsGiveScaledBisector) {
  // u = e1, e2 with weights ½: m̂ = (1, 1)/√2, the tangent sum is 0, so the result is m̂ times
  // the weighted mean norm ½·2 + ½·4 = 3.
  Inputs in;
  in.tensors = {{2, 0}, {0, 4}};
  in.per_model = {{{"weight", 0.5}}, {{"weight", 0.5}}};
  const Tensor out = run(method("multislerp"), in);
  EXPECT_NEAR(out[0], 3 * std::sqrt(0.5), 1e-6);
  EXPECT_NEAR(out[1], 3 * std::sqrt(0.5), 1e-6);
  // Weights are normalised: 1 and 1 give the same result.
  in.per_model = {{{"weight", 1.0}}, {{"weight", 1.0}}};
  EXPECT_TRUE(same_bits(out, run(method("multislerp"), in)));
  // With a base (10, 10), the same applies to the task vectors.
  in.tensors = {{12, 10}, {10, 14}, {10, 10}};
  in.per_model.push_back({});
  in.base = 2;
  const Tensor based = run(method("multislerp"), in);
  EXPECT_NEAR(based[0], 10 + 3 * std::sqrt(0.5), 2e-6);
  EXPECT_NEAR(based[1], 10 + 3 * std::sqrt(0.5), 2e-6);
}

TEST(MultiSlerp, MatchesReferenceWithAndWithoutBaseAndNormalization) {
  for (bool with_base : {false, true}) {
    for (bool normalize : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "base " << with_base << " normalize " << normalize);
      const Vec w = {0.5, 0.3, 0.2, 0.4};
      Inputs in = multislerp_inputs(4, w, with_base, 30000, 71);
      in.shape = {200, 150};
      in.global["normalize_weights"] = normalize;
      expect_matches(run(method("multislerp"), in, {.chunk = 4000, .shuffle = 3, .threads = 2}),
                     multislerp_reference(in, w, normalize));
    }
  }
  // Two models, unequal weights.
  Inputs two = multislerp_inputs(2, {0.2, 0.9}, true, 5000, 72);
  expect_matches(run(method("multislerp"), two), multislerp_reference(two, {0.2, 0.9}, true));
}

TEST(MultiSlerp, ColinearInputsKeepTheirDirection) {
  // x and 3x: one direction, mean norm ½·‖x‖ + ½·3‖x‖ = 2‖x‖ → 2x.
  const Tensor x = normal_tensor(3000, 81);
  Tensor x3 = x;
  for (float& v : x3) v *= 3;
  Inputs in;
  in.tensors = {x, x3};
  in.per_model = {{{"weight", 1.0}}, {{"weight", 1.0}}};
  const Tensor out = run(method("multislerp"), in, {.chunk = 700});
  expect_matches(out, multislerp_reference(in, {1, 1}, true));
  for (size_t j = 0; j < x.size(); ++j) ASSERT_NEAR(out[j], 2 * x[j], 1e-5 * std::abs(x[j]) + 1e-7);
}

TEST(MultiSlerp, AntipodalPairFallsBackToWeightedSumAndMoreModelsFail) {
  const Tensor x = normal_tensor(2000, 91);
  Tensor minus = x;
  for (float& v : minus) v = -v;
  Inputs in;
  in.tensors = {x, minus};
  in.per_model = {{{"weight", 1.0}}, {{"weight", 1.0}}};
  // m = ½x̂ − ½x̂ = 0 → ½x + ½(−x) = 0.
  const Tensor out = run(method("multislerp"), in);
  for (float v : out) ASSERT_EQ(v, 0.0f);
  // Three models whose weighted unit vectors cancel: mergekit raises, smelt stops with an Error
  // naming the tensor.
  Inputs three = in;
  three.tensors = {x, minus, x};
  three.per_model = {{{"weight", 1.0}}, {{"weight", 2.0}}, {{"weight", 1.0}}};
  EXPECT_THROW(multislerp_reference(three, {1, 2, 1}, true), std::runtime_error);
  const std::string error = error_of(method("multislerp"), three);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "zero")) << error;
}

TEST(MultiSlerp, NormalizedWeightsSummingToZeroAreRejectedNamingTensorAndWeights) {
  Inputs in = multislerp_inputs(3, {1.0, -0.5, -0.5}, true, 100, 101);
  const std::string error = validate_error(method("multislerp"), in);
  EXPECT_TRUE(contains(error, kTensorName)) << error;
  EXPECT_TRUE(contains(error, "1, -0.5, -0.5")) << error;
  EXPECT_TRUE(contains(error, "normalize_weights")) << error;
  // Without normalisation the same weights are fine (and the output finite).
  in.global["normalize_weights"] = 0;
  EXPECT_EQ(validate_error(method("multislerp"), in), "");
  expect_matches(run(method("multislerp"), in), multislerp_reference(in, {1, -0.5, -0.5}, false));
}

TEST(MultiSlerp, SingleModelIsCopiedWithOrWithoutBase) {
  Inputs in;
  in.tensors = {normal_tensor(100, 111)};
  in.per_model = {{{"weight", 0.3}}};
  EXPECT_TRUE(same_bits(run(method("multislerp"), in), in.tensors[0]));
  in.tensors.push_back(normal_tensor(100, 112));
  in.per_model.push_back({});
  in.base = 1;
  EXPECT_TRUE(same_bits(run(method("multislerp"), in), in.tensors[0]));
  // Only the base: copied.
  Inputs only_base;
  only_base.tensors = {normal_tensor(100, 113)};
  only_base.base = 0;
  EXPECT_TRUE(same_bits(run(method("multislerp"), only_base), only_base.tensors[0]));
}

TEST(MultiSlerp, OutputIsBitIdenticalForAnyThreadCountAndChunkOrder) {
  Inputs in = multislerp_inputs(3, {0.2, 0.5, 0.3}, true, 50000, 121);
  expect_same_for_any_chunk_order(method("multislerp"), in, 3000);
}

// ---------------------------------------------------------------------------------------------
// karcher

struct KarcherResult {
  Reference ref;
  double last_t_norm = 0;  // ‖T‖ of the last iteration
  int iterations = 0;      // iterations that moved the mean
};

// mergekit's algorithm on whole vectors in double (docs/methods.md).
KarcherResult karcher_reference(const std::vector<Tensor>& x, int max_iter, double tol) {
  const size_t k = x.size(), n = x[0].size();
  const double alpha = 1.0 / static_cast<double>(k);
  Vec r(k);
  std::vector<Vec> u(k);
  for (size_t i = 0; i < k; ++i) {
    u[i] = to_double(x[i]);
    r[i] = norm(u[i]);
    for (double& v : u[i]) v = r[i] == 0 ? 0.0 : v / r[i];
  }
  std::vector<size_t> valid;
  for (size_t i = 0; i < k; ++i) {
    if (r[i] > tol) valid.push_back(i);
  }
  KarcherResult result{{Vec(n, 0.0), Vec(n, 0.0), {}}, 0};
  if (valid.empty()) return result;
  const double a = 1.0 / static_cast<double>(valid.size());
  Vec mean(n, 0.0);
  for (size_t i : valid) {
    for (size_t j = 0; j < n; ++j) mean[j] += a * u[i][j];
  }
  const double mn = norm(mean);
  if (mn < tol) {
    mean = u[valid[0]];
  } else {
    for (double& v : mean) v /= mn;
  }
  for (int it = 0; it < max_iter; ++it) {
    Vec t(n, 0.0);
    for (size_t i : valid) {
      const double c = std::clamp(dot(mean, u[i]), -1.0, 1.0);
      const double theta = std::acos(c);
      if (theta < tol) continue;
      for (size_t j = 0; j < n; ++j) {
        t[j] += a * (theta / std::sin(theta)) * (u[i][j] - c * mean[j]);
      }
    }
    const double tn = norm(t);
    result.last_t_norm = tn;
    if (tn < tol) break;
    ++result.iterations;
    for (size_t j = 0; j < n; ++j) {
      mean[j] = std::cos(tn) * mean[j] + std::sin(tn) * t[j] / tn;
    }
    const double un = norm(mean);
    if (un > tol) {
      for (double& v : mean) v /= un;
    }
  }
  double s = 0;
  for (size_t i = 0; i < k; ++i) s += alpha * r[i];
  for (size_t j = 0; j < n; ++j) {
    result.ref.value[j] = s * mean[j];
    double terms = 0;  // the size of each input's term s·x_i/r_i
    for (size_t i : valid) terms += std::abs(u[i][j]);
    result.ref.scale[j] = s * terms;
  }
  return result;
}

// Inputs that share a direction, of different norms, so the Karcher mean is well defined.
std::vector<Tensor> karcher_tensors(size_t count, size_t n, uint32_t seed) {
  const Tensor shared = normal_tensor(n, seed, 0.05f);
  std::vector<Tensor> x;
  for (size_t i = 0; i < count; ++i) {
    Tensor t = near(shared, seed + 1 + i, 0.03f * (1 + i));
    for (float& v : t) v *= static_cast<float>(1 + 0.5 * i);
    x.push_back(t);
  }
  return x;
}

Inputs karcher_inputs(const std::vector<Tensor>& x) {
  Inputs in;
  in.tensors = x;
  return in;
}

TEST(Karcher, HandComputedOrthogonalVectorsGiveScaledBisector) {
  // The Karcher mean of e1 and e2 is their bisector; the scale is the mean norm (1 + 3)/2.
  const Tensor out = run(method("karcher"), karcher_inputs({{1, 0}, {0, 3}}));
  EXPECT_NEAR(out[0], 2 * std::sqrt(0.5), 1e-6);
  EXPECT_NEAR(out[1], 2 * std::sqrt(0.5), 1e-6);
  // Colinear inputs: x and 2x share their direction → 1.5x.
  const Tensor x = normal_tensor(1000, 131);
  Tensor x2 = x;
  for (float& v : x2) v *= 2;
  const Tensor same = run(method("karcher"), karcher_inputs({x, x2}), {.chunk = 300});
  for (size_t j = 0; j < x.size(); ++j) ASSERT_NEAR(same[j], 1.5 * x[j], 1e-6 * std::abs(x[j]));
}

TEST(Karcher, MatchesWholeVectorIterationWithinTolerance) {
  for (size_t count : {2u, 3u, 5u}) {
    for (int max_iter : {1, 3, 10}) {
      SCOPED_TRACE(::testing::Message() << count << " inputs, max_iter " << max_iter);
      Inputs in = karcher_inputs(karcher_tensors(count, 20000, 141 + count));
      in.global["max_iter"] = max_iter;
      const KarcherResult ref = karcher_reference(in.tensors, max_iter, 1e-5);
      expect_matches(run(method("karcher"), in, {.chunk = 3000, .shuffle = 2, .threads = 2}),
                     ref.ref, 1e-5);
    }
  }
}

TEST(Karcher, ConvergesToTheMeanAngleOfPointsOnACircle) {
  // Points at angles 0°, 10° and 120° on a circle (two orthogonal directions g1, g2 with
  // disjoint supports) with norms 1, 2, 3: their Karcher mean is the mean angle 130°/3, while the
  // starting guess (the normalised Euclidean mean of the unit vectors) is near 35°, so several
  // iterations are needed. The scale is the mean norm 2.
  const size_t n = 10000;
  const Tensor noise = normal_tensor(n, 151);
  Vec g1(n, 0.0), g2(n, 0.0);
  for (size_t j = 0; j < n; ++j) (j % 2 == 0 ? g1 : g2)[j] = noise[j];
  const double n1 = norm(g1), n2 = norm(g2);
  const double deg = std::numbers::pi / 180;
  std::vector<Tensor> x;
  const double angles[] = {0 * deg, 10 * deg, 120 * deg};
  for (size_t i = 0; i < 3; ++i) {
    Tensor t(n);
    for (size_t j = 0; j < n; ++j) {
      t[j] = static_cast<float>(
          (i + 1) * (std::cos(angles[i]) * g1[j] / n1 + std::sin(angles[i]) * g2[j] / n2));
    }
    x.push_back(t);
  }
  Inputs in = karcher_inputs(x);
  in.global["max_iter"] = 100;
  const KarcherResult ref = karcher_reference(x, 100, 1e-5);
  EXPECT_LT(ref.last_t_norm, 1e-5);  // the reference converged
  const Tensor out = run(method("karcher"), in, {.chunk = 1000, .threads = 2});
  expect_matches(out, ref.ref, 1e-5);
  // Hand value: 2·(cos φ ĝ1 + sin φ ĝ2) with φ = 130°/3; the iteration stops within tol.
  const double phi = 130.0 / 3 * deg;
  Reference hand{Vec(n), Vec(n), {}};
  for (size_t j = 0; j < n; ++j) {
    hand.value[j] = 2 * (std::cos(phi) * g1[j] / n1 + std::sin(phi) * g2[j] / n2);
    hand.scale[j] = 2 * (std::abs(g1[j] / n1) + std::abs(g2[j] / n2));
  }
  expect_matches(out, hand, 2e-5);
  // Without iterations the result is the starting guess, well away from the mean angle.
  in.global["max_iter"] = 0;
  const Tensor start = run(method("karcher"), in);
  double diff = 0;
  for (size_t j = 0; j < n; ++j) {
    diff = std::max(diff, std::abs(start[j] - hand.value[j]) / hand.scale[j]);
  }
  EXPECT_GT(diff, 1e-2);
}

TEST(Karcher, IteratesOnTheSphereUntilTheGradientIsBelowTol) {
  // Three points spread over a 2-sphere (three disjoint supports): unlike on a circle, each
  // step only approaches the mean, so the reference needs several iterations.
  const size_t n = 9000;
  const Tensor noise = normal_tensor(n, 152);
  std::vector<Vec> g(3, Vec(n, 0.0));
  for (size_t j = 0; j < n; ++j) g[j % 3][j] = noise[j];
  for (Vec& gk : g) {
    const double length = norm(gk);
    for (double& v : gk) v /= length;
  }
  const double dirs[3][3] = {{1, 0, 0}, {0.2, 1, 0}, {0.1, 0.6, 1.5}};
  std::vector<Tensor> x;
  for (size_t i = 0; i < 3; ++i) {
    Tensor t(n);
    for (size_t j = 0; j < n; ++j) {
      double v = 0;
      for (size_t k = 0; k < 3; ++k) v += dirs[i][k] * g[k][j] * static_cast<double>(1 + i);
      t[j] = static_cast<float>(v);
    }
    x.push_back(t);
  }
  Inputs in = karcher_inputs(x);
  in.global["max_iter"] = 100;
  const KarcherResult ref = karcher_reference(x, 100, 1e-5);
  EXPECT_GT(ref.iterations, 2);
  EXPECT_LT(ref.iterations, 100);
  expect_matches(run(method("karcher"), in, {.chunk = 900, .shuffle = 3, .threads = 2}), ref.ref,
                 1e-5);
}

TEST(Karcher, ZeroNormInputsCountOnlyInTheScale) {
  std::vector<Tensor> x = karcher_tensors(3, 5000, 161);
  x.insert(x.begin() + 1, Tensor(5000, 0.0f));
  Inputs in = karcher_inputs(x);
  const KarcherResult ref = karcher_reference(x, 10, 1e-5);
  const Tensor out = run(method("karcher"), in, {.chunk = 999});
  expect_matches(out, ref.ref, 1e-5);
  // The zero input leaves the direction of the other three and scales by 3/4.
  std::vector<Tensor> without = x;
  without.erase(without.begin() + 1);
  const Tensor out3 = run(method("karcher"), karcher_inputs(without));
  // f32 rounding of each output is relative to the size of its terms (about the largest output).
  float largest = 0;
  for (float v : out3) largest = std::max(largest, std::abs(v));
  for (size_t j = 0; j < out.size(); ++j) {
    ASSERT_NEAR(out[j], 0.75 * out3[j], 1e-5 * std::abs(out3[j]) + 1e-6 * largest);
  }
  // Every input zero: the result is zero.
  const Tensor zeros = run(method("karcher"), karcher_inputs({Tensor(50, 0.0f), Tensor(50, 0.0f)}));
  for (float v : zeros) ASSERT_EQ(v, 0.0f);
}

TEST(Karcher, SingleInputIsCopiedAndMaxIterMustBeAWholeNumber) {
  Inputs one = karcher_inputs({normal_tensor(100, 171)});
  EXPECT_TRUE(same_bits(run(method("karcher"), one), one.tensors[0]));
  Inputs in = karcher_inputs(karcher_tensors(2, 10, 172));
  in.global["max_iter"] = 2.5;
  const std::string error = validate_error(method("karcher"), in);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "max_iter")) << error;
  // max_iter 0: the normalised mean of the unit vectors, scaled.
  in.global["max_iter"] = 0;
  expect_matches(run(method("karcher"), in), karcher_reference(in.tensors, 0, 1e-5).ref, 1e-5);
}

TEST(Karcher, OutputIsBitIdenticalForAnyThreadCountAndChunkOrder) {
  expect_same_for_any_chunk_order(method("karcher"), karcher_inputs(karcher_tensors(4, 40000, 181)),
                                  3000);
}

// ---------------------------------------------------------------------------------------------
// model_stock

// mergekit's algorithm in double (docs/methods.md): rows along the last dim when filter_wise (a 1-D
// tensor is one row), else the whole tensor.
Reference model_stock_reference(const Inputs& in, bool filter_wise) {
  const size_t n = in.tensors[0].size();
  const Tensor& b = in.tensors[in.base];
  std::vector<const Tensor*> w;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (static_cast<int>(i) != in.base) w.push_back(&in.tensors[i]);
  }
  const size_t row = filter_wise && in.shape.size() > 1 ? in.shape.back() : n;
  const double big_n = static_cast<double>(w.size());
  Reference ref{Vec(n), Vec(n), {}};
  for (size_t start = 0; start < n; start += row) {
    std::vector<Vec> d(w.size(), Vec(row));
    for (size_t j = 0; j < w.size(); ++j) {
      for (size_t e = 0; e < row; ++e) d[j][e] = double{(*w[j])[start + e]} - b[start + e];
    }
    double cos_sum = 0;
    int pairs = 0;
    for (size_t j = 0; j < d.size(); ++j) {
      for (size_t k = j + 1; k < d.size(); ++k) {
        cos_sum += std::clamp(dot(d[j], d[k]) / std::max(norm(d[j]) * norm(d[k]), 1e-6), -1.0, 1.0);
        ++pairs;
      }
    }
    const double c = cos_sum / pairs;
    const double t = big_n * c / (1 + (big_n - 1) * c);
    for (size_t e = start; e < start + row; ++e) {
      double avg = 0, abs_avg = 0;
      for (const Tensor* x : w) {
        avg += (*x)[e];
        abs_avg += std::abs((*x)[e]);
      }
      avg /= big_n;
      abs_avg /= big_n;
      ref.value[e] = t * avg + (1 - t) * b[e];
      ref.scale[e] = std::abs(t) * abs_avg + std::abs(1 - t) * std::abs(b[e]);
    }
  }
  return ref;
}

// `models` fine-tunes of a base (base last, as mergekit's `models:` form appends it).
Inputs model_stock_inputs(size_t models, std::vector<uint64_t> shape, uint32_t seed) {
  size_t n = 1;
  for (uint64_t d : shape) n *= d;
  Inputs in;
  in.shape = shape;
  const Tensor base = normal_tensor(n, seed, 0.05f);
  const Tensor shared = normal_tensor(n, seed + 50, 0.01f);  // a common direction: cos > 0
  for (size_t i = 0; i < models; ++i) {
    Tensor x = near(base, seed + 1 + i, 0.01f);
    for (size_t j = 0; j < n; ++j) x[j] += shared[j];
    in.tensors.push_back(x);
  }
  in.tensors.push_back(base);
  in.base = static_cast<int>(models);
  return in;
}

TEST(ModelStock, HandComputedRatioFromTheAngleBetweenTaskVectors) {
  // Base (0, 0); task vectors (1, 0) and (1, 1): cos = 1/√2, N = 2 → t = 2c/(1 + c).
  Inputs in;
  in.tensors = {{0, 0}, {1, 0}, {1, 1}};
  in.base = 0;
  const Tensor out = run(method("model_stock"), in);
  const double c = std::sqrt(0.5), t = 2 * c / (1 + c);
  EXPECT_NEAR(out[0], t * 1.0, 1e-6);
  EXPECT_NEAR(out[1], t * 0.5, 1e-6);
  // Orthogonal task vectors: cos = 0 → t = 0 → the base.
  in.tensors = {{5, 7}, {6, 7}, {5, 8}};
  const Tensor base = run(method("model_stock"), in);
  EXPECT_EQ(base, (Tensor{5, 7}));
  // Identical task vectors: cos = 1 → t = 1 → their average.
  in.tensors = {{5, 7}, {6, 9}, {6, 9}};
  EXPECT_EQ(run(method("model_stock"), in), (Tensor{6, 9}));
}

TEST(ModelStock, MatchesReferenceOverTheWholeTensorAndPerRow) {
  for (size_t models : {2u, 4u}) {
    for (bool filter_wise : {false, true}) {
      for (const std::vector<uint64_t>& shape :
           {std::vector<uint64_t>{40, 70}, std::vector<uint64_t>{4, 5, 30}}) {
        SCOPED_TRACE(::testing::Message() << models << " models, filter_wise " << filter_wise
                                          << " ndim " << shape.size());
        Inputs in = model_stock_inputs(models, shape, 191);
        in.global["filter_wise"] = filter_wise;
        const Reference ref = model_stock_reference(in, filter_wise);
        expect_matches(run(method("model_stock"), in, {.chunk = 500, .shuffle = 4, .threads = 2}),
                       ref);
      }
    }
  }
}

TEST(ModelStock, FilterWiseOnOneDimensionalTensorIsOneRow) {
  Inputs in = model_stock_inputs(3, {3000}, 201);
  const Tensor whole = run(method("model_stock"), in, {.chunk = 700});
  in.global["filter_wise"] = 1;
  EXPECT_TRUE(same_bits(whole, run(method("model_stock"), in, {.chunk = 700})));
  expect_matches(whole, model_stock_reference(in, true));
}

TEST(ModelStock, ModelsEqualToTheBaseGiveTheBase) {
  // Zero task vectors: norms clamp to 1e-6, cos = 0, t = 0: finite, and the base.
  Inputs in;
  const Tensor b = normal_tensor(400, 211);
  in.tensors = {b, b, b};
  in.base = 2;
  in.shape = {20, 20};
  for (bool filter_wise : {false, true}) {
    in.global["filter_wise"] = filter_wise;
    EXPECT_TRUE(same_bits(run(method("model_stock"), in), b));
  }
}

TEST(ModelStock, OppositeTaskVectorsOfTwoModelsAreAnErrorNotInfinity) {
  // d_2 = −d_1 exactly (base 0): cos = −1, N = 2 → t = −2/0 (mergekit writes inf/NaN).
  const Tensor d = normal_tensor(300, 221);
  Tensor minus = d;
  for (float& v : minus) v = -v;
  Inputs in;
  in.tensors = {d, minus, Tensor(300, 0.0f)};
  in.base = 2;
  std::string error = error_of(method("model_stock"), in);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "divides by zero")) << error;
  // Per row, the message names the row.
  in.shape = {3, 100};
  in.global["filter_wise"] = 1;
  error = error_of(method("model_stock"), in);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "(row ")) << error;
}

TEST(ModelStock, NeedsTheBaseAndTwoOtherModels) {
  Inputs two = model_stock_inputs(1, {10}, 231);
  const std::string error = validate_error(method("model_stock"), two);
  EXPECT_TRUE(contains(error, kTensorName)) << error;
  EXPECT_TRUE(contains(error, "model_stock needs the base and at least 2 other models")) << error;
  Inputs no_base = model_stock_inputs(2, {10}, 231);
  no_base.base = -1;
  EXPECT_TRUE(contains(validate_error(method("model_stock"), no_base), kTensorName));
  // Only the base: copied.
  Inputs only;
  only.tensors = {normal_tensor(10, 232)};
  only.base = 0;
  EXPECT_TRUE(same_bits(run(method("model_stock"), only), only.tensors[0]));
}

TEST(ModelStock, OutputIsBitIdenticalForAnyThreadCountAndChunkOrder) {
  for (bool filter_wise : {false, true}) {
    Inputs in = model_stock_inputs(3, {100, 300}, 241);
    in.global["filter_wise"] = filter_wise;
    expect_same_for_any_chunk_order(method("model_stock"), in, 3000);
  }
}

// ---------------------------------------------------------------------------------------------
// nearswap

Inputs nearswap_inputs(const Tensor& base, const Tensor& other, double t) {
  Inputs in;
  in.tensors = {other, base};
  in.base = 1;
  in.global["t"] = t;
  return in;
}

TEST(NearSwap, TakesCloseValuesAndKeepsTheBaseWhereTheyDiffer) {
  // t = 1: |b − x| = 0.5 → w = min(2, 1) = 1 → x; |b − x| = 2 → w = ½; |b − x| = 4 → w = ¼;
  // a difference below 1e-6 is clamped → w = 1 → x.
  const Tensor b = {0, 0, 0, 1};
  const Tensor x = {0.5f, 2, -4, 1 + 1e-7f};
  const Tensor out = run(method("nearswap"), nearswap_inputs(b, x, 1.0));
  EXPECT_FLOAT_EQ(out[0], 0.5f);
  EXPECT_FLOAT_EQ(out[1], 1.0f);
  EXPECT_FLOAT_EQ(out[2], -1.0f);
  EXPECT_FLOAT_EQ(out[3], x[3]);
  // t = 0 (or negative) keeps the base.
  EXPECT_EQ(run(method("nearswap"), nearswap_inputs(b, x, 0.0)), b);
  EXPECT_EQ(run(method("nearswap"), nearswap_inputs(b, x, -1.0)), b);
}

TEST(NearSwap, MatchesReference) {
  const Tensor b = normal_tensor(20000, 251, 0.05f);
  const Tensor x = near(b, 252, 0.01f);
  for (double t : {1e-4, 0.005, 0.1}) {
    Inputs in = nearswap_inputs(b, x, t);
    Reference ref{Vec(b.size()), Vec(b.size()), {}};
    for (size_t j = 0; j < b.size(); ++j) {
      const double w = std::clamp(t / std::max(std::abs(double{b[j]} - x[j]), 1e-6), 0.0, 1.0);
      ref.value[j] = w * x[j] + (1 - w) * b[j];
      ref.scale[j] = std::abs(x[j]) + std::abs(b[j]);
    }
    expect_matches(run(method("nearswap"), in, {.chunk = 3000, .threads = 2}), ref);
  }
}

TEST(NearSwap, NeedsTheBaseAndExactlyOneOtherModel) {
  Inputs three = nearswap_inputs({1}, {2}, 0.1);
  three.tensors.push_back({3});
  std::string error = validate_error(method("nearswap"), three);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "exactly 2")) << error;
  Inputs no_base = nearswap_inputs({1}, {2}, 0.1);
  no_base.base = -1;
  error = validate_error(method("nearswap"), no_base);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "base")) << error;
  Inputs only;
  only.tensors = {normal_tensor(10, 261)};
  only.base = 0;
  only.global["t"] = 0.1;
  EXPECT_TRUE(same_bits(run(method("nearswap"), only), only.tensors[0]));
}

// ---------------------------------------------------------------------------------------------
// arcee_fusion

// Per-element importance |p − q| · KL(row) in double, rows along the last dimension.
Vec arcee_importance(const Inputs& in) {
  const Tensor& q = in.tensors[in.base];
  const Tensor& p = in.tensors[1 - in.base];
  const size_t n = p.size();
  const size_t row = in.shape.empty() ? n : in.shape.back();
  Vec imp(n);
  for (size_t start = 0; start < n; start += row) {
    auto softmax = [&](const Tensor& x) {
      double mx = -INFINITY, s = 0;
      for (size_t j = start; j < start + row; ++j) mx = std::max(mx, double{x[j]});
      Vec e(row);
      for (size_t j = 0; j < row; ++j) s += e[j] = std::exp(x[start + j] - mx);
      for (double& v : e) v = v / s + 1e-8;
      return e;
    };
    const Vec sp = softmax(p), sq = softmax(q);
    double kl = 0;
    for (size_t j = 0; j < row; ++j) kl += sp[j] * std::log(sp[j] / sq[j]);
    for (size_t j = 0; j < row; ++j) {
      // |p − q| in f32, smelt's working precision (mergekit: the working dtype).
      imp[start + j] = double{std::abs(p[start + j] - q[start + j])} * kl;
    }
  }
  return imp;
}

double quantile_of_sorted(const Vec& sorted, double q) {
  return sorted[static_cast<size_t>(q * static_cast<double>(sorted.size() - 1))];
}

// The merge for a given threshold: p where the importance reaches it, else q; elements within
// rounding of the threshold are ambiguous.
Reference arcee_result(const Inputs& in, const Vec& imp, double threshold) {
  const Tensor& q = in.tensors[in.base];
  const Tensor& p = in.tensors[1 - in.base];
  Reference ref{Vec(p.size()), Vec(p.size()), std::vector<bool>(p.size())};
  for (size_t j = 0; j < p.size(); ++j) {
    ref.value[j] = imp[j] >= threshold ? p[j] : q[j];
    ref.scale[j] = std::abs(p[j]) + std::abs(q[j]);
    ref.ambiguous[j] = std::abs(imp[j] - threshold) <= 1e-9 * std::abs(threshold);
  }
  return ref;
}

// mergekit's algorithm with exact quantiles (what it does for tensors of at most 1e6 elements).
Reference arcee_reference(const Inputs& in) {
  const Vec imp = arcee_importance(in);
  Vec sorted = imp;
  std::sort(sorted.begin(), sorted.end());
  const double threshold =
      quantile_of_sorted(sorted, 0.5) +
      1.5 * (quantile_of_sorted(sorted, 0.75) - quantile_of_sorted(sorted, 0.25));
  return arcee_result(in, imp, threshold);
}

Inputs arcee_inputs(std::vector<uint64_t> shape, uint32_t seed, uint64_t random_seed = 0) {
  size_t n = 1;
  for (uint64_t d : shape) n *= d;
  Inputs in;
  in.shape = shape;
  const Tensor base = normal_tensor(n, seed, 1.0f);
  Tensor other = near(base, seed + 1, 0.1f);
  // Some rows change much more (large KL), so their elements are the outliers.
  const size_t row = shape.back();
  for (size_t start = 0; start < n; start += 7 * row) {
    for (size_t j = start; j < start + row && j < n; ++j) other[j] += 0.5f * base[j];
  }
  in.tensors = {base, other};
  in.base = 0;
  in.seed = random_seed;
  return in;
}

size_t count_changed(const Inputs& in, const Tensor& out) {
  size_t changed = 0;
  for (size_t j = 0; j < out.size(); ++j) changed += out[j] != in.tensors[in.base][j];
  return changed;
}

TEST(ArceeFusion, HandComputedKeepsOnlyOutlierChanges) {
  // One row of 8: q = 0; p changes one element by 4 and three by 0.1. KL > 0 is shared by the
  // row, so importance ∝ |p − q| = (4, .1, .1, .1, 0, 0, 0, 0): sorted, Q1 = 0 (index 1),
  // median = 0 (index 3), Q3 = 0.1 (index 5) → threshold 0.15: only the 4 is kept.
  Inputs in;
  in.tensors = {Tensor(8, 0.0f), {4, 0.1f, 0.1f, 0.1f, 0, 0, 0, 0}};
  in.base = 0;
  const Tensor out = run(method("arcee_fusion"), in);
  EXPECT_EQ(out, (Tensor{4, 0, 0, 0, 0, 0, 0, 0}));
  // Identical models: importance 0 everywhere, threshold 0, so every (zero) change is kept.
  Inputs same;
  same.tensors = {Tensor{1, 2, 3}, Tensor{1, 2, 3}};
  same.base = 1;
  EXPECT_EQ(run(method("arcee_fusion"), same), (Tensor{1, 2, 3}));
}

TEST(ArceeFusion, MatchesExactQuantileReferenceUpToAMillionElements) {
  for (const std::vector<uint64_t>& shape :
       {std::vector<uint64_t>{300, 400}, std::vector<uint64_t>{5000},
        std::vector<uint64_t>{6, 20, 50}}) {
    for (int base : {0, 1}) {
      Inputs in = arcee_inputs(shape, 271);
      if (base == 1) {
        std::swap(in.tensors[0], in.tensors[1]);
        in.base = 1;
      }
      const Tensor out =
          run(method("arcee_fusion"), in, {.chunk = 4000, .shuffle = 2, .threads = 2});
      expect_matches(out, arcee_reference(in));
      const size_t changed = count_changed(in, out);
      EXPECT_GT(changed, 0u);
      EXPECT_LT(changed, out.size());
    }
  }
}

TEST(ArceeFusion, SampledQuantilesAreReproducibleFromTheSeedForAnyChunkingAndThreads) {
  // 1.2e6 elements > 1e6: quantiles come from the Bernoulli sample.
  Inputs in = arcee_inputs({1200, 1000}, 281, 7);
  const Tensor first = run(method("arcee_fusion"), in, {.chunk = 100000});
  expect_finite(first);
  EXPECT_TRUE(same_bits(
      first, run(method("arcee_fusion"), in, {.chunk = 30000, .shuffle = 3, .threads = 2})));
  EXPECT_TRUE(same_bits(
      first, run(method("arcee_fusion"), in, {.chunk = 1200000, .shuffle = 4, .threads = 3})));
  EXPECT_TRUE(same_bits(
      first, run(method("arcee_fusion"), in, {.chunk = 1000, .shuffle = 5, .threads = 3})));

  // The documented design: element j is sampled iff random_uniform(stream_key(seed, tensor,
  // salt), j) < 1e6/numel; the quantiles of that sample give exactly smelt's result.
  const Vec imp = arcee_importance(in);
  const uint64_t key = kernels::stream_key(in.seed, in.name, 0xA4CEEF0510Full);
  const float p = static_cast<float>(1e6 / static_cast<double>(imp.size()));
  Vec sample;
  for (size_t j = 0; j < imp.size(); ++j) {
    if (kernels::random_uniform(key, j) < p) sample.push_back(imp[j]);
  }
  EXPECT_NEAR(static_cast<double>(sample.size()), 1e6, 5000);
  std::sort(sample.begin(), sample.end());
  const double threshold =
      quantile_of_sorted(sample, 0.5) +
      1.5 * (quantile_of_sorted(sample, 0.75) - quantile_of_sorted(sample, 0.25));
  expect_matches(first, arcee_result(in, imp, threshold));

  // And the sample's threshold is close to the exact one: almost no element differs.
  const Reference exact = arcee_reference(in);
  size_t differ = 0;
  for (size_t j = 0; j < first.size(); ++j)
    differ += first[j] != static_cast<float>(exact.value[j]);
  EXPECT_LT(static_cast<double>(differ) / first.size(), 0.005);
}

TEST(ArceeFusion, DifferentSeedsSampleDifferently) {
  Inputs a = arcee_inputs({1200, 1000}, 291, 1);
  Inputs b = a;
  b.seed = 2;
  const Tensor out_a = run(method("arcee_fusion"), a, {.chunk = 200000, .threads = 2});
  const Tensor out_b = run(method("arcee_fusion"), b, {.chunk = 200000, .threads = 2});
  EXPECT_FALSE(same_bits(out_a, out_b));
  size_t differ = 0;
  for (size_t j = 0; j < out_a.size(); ++j) differ += out_a[j] != out_b[j];
  EXPECT_LT(static_cast<double>(differ) / out_a.size(), 0.005);
  // Below 1e6 elements there is no sampling: the seed does not matter.
  Inputs small = arcee_inputs({100, 100}, 292, 1);
  Inputs small2 = small;
  small2.seed = 2;
  EXPECT_TRUE(same_bits(run(method("arcee_fusion"), small), run(method("arcee_fusion"), small2)));
}

TEST(ArceeFusion, NeedsTheBaseAndExactlyOneOtherModel) {
  Inputs three = arcee_inputs({10, 10}, 301);
  three.tensors.push_back(three.tensors[0]);
  std::string error = validate_error(method("arcee_fusion"), three);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "exactly 2")) << error;
  Inputs no_base = arcee_inputs({10, 10}, 301);
  no_base.base = -1;
  error = validate_error(method("arcee_fusion"), no_base);
  EXPECT_TRUE(contains(error, kTensorName) && contains(error, "base")) << error;
  Inputs one;
  one.tensors = {normal_tensor(10, 302)};
  one.base = 0;
  EXPECT_TRUE(same_bits(run(method("arcee_fusion"), one), one.tensors[0]));
}

}  // namespace
}  // namespace smelt::methods
