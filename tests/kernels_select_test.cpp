// The merge methods' elementwise kernels and reductions (kernels/elementwise.h) and top-k
// selection (kernels/topk.h) against plain scalar versions written here: exact equality where
// the kernel promises a fixed operation order, closeness to a long double sum for the reductions.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <vector>

#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "test_util.h"

namespace smelt {
namespace {

std::vector<float> random_vector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The lengths exercise empty input, tails shorter than a vector, block boundaries (1024, 2048)
// and a long run.
const size_t kLengths[] = {0, 1, 3, 15, 16, 17, 1023, 1024, 1025, 2047, 2049, 4096 + 13, 100003};

TEST(SelectKernels, DotIsCloseToALongDoubleSumAndGramMatchesDotBitForBit) {
  for (size_t n : kLengths) {
    const std::vector<float> a = random_vector(n, 1), b = random_vector(n, 2),
                             c = random_vector(n, 3, 1e-3f);
    long double ref = 0, mag = 0;
    for (size_t j = 0; j < n; ++j) {
      ref += static_cast<long double>(a[j]) * b[j];
      mag += std::fabs(static_cast<long double>(a[j]) * b[j]);
    }
    const double got = kernels::dot(a.data(), b.data(), n);
    EXPECT_NEAR(got, static_cast<double>(ref), 1e-14 * static_cast<double>(mag) + 1e-300)
        << "n=" << n;
    const float* v[3] = {a.data(), b.data(), c.data()};
    double upper[6];
    kernels::gram_upper(v, 3, n, upper);
    const std::array<std::array<int, 2>, 6> pairs = {
        {{0, 0}, {0, 1}, {0, 2}, {1, 1}, {1, 2}, {2, 2}}};
    for (size_t p = 0; p < pairs.size(); ++p) {
      const double want = kernels::dot(v[pairs[p][0]], v[pairs[p][1]], n);
      EXPECT_EQ(std::bit_cast<uint64_t>(upper[p]), std::bit_cast<uint64_t>(want))
          << "n=" << n << " pair " << p;
    }
  }
}

TEST(SelectKernels, FusedRandomMaskEqualsSubtractThenMask) {
  for (size_t n : kLengths) {
    const std::vector<float> a = random_vector(n, 4), b = random_vector(n, 5);
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f, 1.0f}) {
      const uint64_t key = kernels::stream_key(7, "model.layers.0.mlp.up_proj.weight", 1);
      const uint64_t first = 256 * 3;
      // Two steps, written out here: the difference, then each element kept with probability p.
      std::vector<float> want(n);
      double s = 0, t = 0;
      std::array<double, 16> sl{}, tl{};
      for (size_t j = 0; j < n; ++j) {
        want[j] = a[j] - b[j];
        const bool keep = kernels::draw_uniform(key, first + j) < p;
        const size_t lane = j < n / 16 * 16 ? j % 16 : 0;
        sl[lane] += std::fabs(double{want[j]});
        if (keep) tl[lane] += std::fabs(double{want[j]});
        if (!keep) want[j] = 0.0f;
      }
      // abs_sum's fixed tree: lanes l and l + w added for w = 8, 4, 2, 1.
      for (size_t w = 8; w > 0; w /= 2) {
        for (size_t l = 0; l < w; ++l) {
          sl[l] += sl[l + w];
          tl[l] += tl[l + w];
        }
      }
      s = sl[0];
      t = tl[0];
      std::vector<float> got(n, -1.0f);
      kernels::keep_random_difference(key, first, p, a.data(), b.data(), got.data(), n);
      EXPECT_EQ(got, want) << "n=" << n << " p=" << p;
      std::vector<float> two_step(n);
      kernels::subtract(a.data(), b.data(), two_step.data(), n);
      kernels::keep_random(key, first, p, two_step.data(), n);
      EXPECT_EQ(two_step, want) << "n=" << n << " p=" << p;
      const std::array<double, 2> sums =
          kernels::random_kept_abs_sums(key, first, p, a.data(), b.data(), n);
      EXPECT_EQ(sums[0], s) << "n=" << n << " p=" << p;
      EXPECT_EQ(sums[1], t) << "n=" << n << " p=" << p;
      // The bit-mask route gives the same bits: one bit per decision, the unused bits of a last
      // partial byte 0, nothing written past ceil(n / 8) bytes.
      const size_t mask_bytes = (n + 7) / 8;
      std::vector<uint8_t> mask(mask_bytes + 1, 0xA5);
      kernels::random_mask(key, first, p, mask.data(), n);
      ASSERT_EQ(mask[mask_bytes], 0xA5) << "n=" << n;
      for (size_t j = 0; j < mask_bytes * 8; ++j) {
        const bool bit = ((mask[j / 8] >> (j % 8)) & 1) != 0;
        ASSERT_EQ(bit, j < n && kernels::draw_uniform(key, first + j) < p)
            << "n=" << n << " p=" << p << " j=" << j;
      }
      std::vector<float> via_mask(n, -1.0f);
      kernels::masked_difference(mask.data(), a.data(), b.data(), via_mask.data(), n);
      EXPECT_EQ(via_mask, want) << "n=" << n << " p=" << p;
      const std::array<double, 2> mask_sums =
          kernels::masked_abs_sums(mask.data(), a.data(), b.data(), n);
      EXPECT_EQ(mask_sums[0], s) << "n=" << n << " p=" << p;
      EXPECT_EQ(mask_sums[1], t) << "n=" << n << " p=" << p;
      // abs_sum uses the same lanes.
      EXPECT_EQ(kernels::abs_sum(two_step.data(), n), t) << "n=" << n << " p=" << p;
    }
  }
}

// Statistics of 2^20 draws of a generator with 24-bit uniforms: mean and variance, each of the
// 24 bits balanced, a χ² of the top 8 bits, and no correlation between neighbouring counters or
// neighbouring keys.
void expect_uniform_and_keyed(float (*draw)(uint64_t key, uint64_t counter)) {
  const uint64_t key = kernels::stream_key(0, "t", 0);
  const uint64_t other = kernels::stream_key(0, "t", 1);
  const size_t n = size_t{1} << 20;
  double sum = 0, sq = 0, cross = 0, lag = 0, previous = 0.5;
  std::array<uint64_t, 24> ones{};
  std::array<uint64_t, 256> bins{};
  for (size_t j = 0; j < n; ++j) {
    const double u = draw(key, j);
    const double w = draw(other, j);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sq += u * u;
    cross += (u - 0.5) * (w - 0.5);
    lag += (u - 0.5) * (previous - 0.5);
    previous = u;
    const auto m = static_cast<uint32_t>(u * 16777216.0);
    for (int bit = 0; bit < 24; ++bit) ones[bit] += (m >> bit) & 1;
    ++bins[m >> 16];
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(var, 1.0 / 12, 1e-3);
  EXPECT_NEAR(cross / n, 0.0, 5 * (1.0 / 12) / std::sqrt(double(n)));
  EXPECT_NEAR(lag / n, 0.0, 5 * (1.0 / 12) / std::sqrt(double(n)));
  for (int bit = 0; bit < 24; ++bit) {
    EXPECT_NEAR(double(ones[bit]) / n, 0.5, 5 * 0.5 / std::sqrt(double(n))) << "bit " << bit;
  }
  // χ² of the top 8 bits, 255 degrees of freedom: mean 255, standard deviation 22.6.
  double chi2 = 0;
  const double expected = double(n) / 256;
  for (uint64_t c : bins) chi2 += (double(c) - expected) * (double(c) - expected) / expected;
  EXPECT_LT(chi2, 255 + 6 * 22.6);
}

// The general generator (random_uniform: SplitMix64, random.h).
TEST(SelectKernels, RandomUniformIsUniformAndKeyed) {
  expect_uniform_and_keyed(kernels::random_uniform);
}

// The sparsifying methods' generator (draw_uniform: the 32-bit mixer, random.h).
TEST(SelectKernels, DrawUniformIsUniformAndKeyed) {
  expect_uniform_and_keyed(kernels::draw_uniform);
}

// Counters from 2^32 on use other constants (draw_key of the high half): the kernels split or
// fall back there and still give draw_uniform's decisions, and the second block is not a copy
// of the first.
TEST(SelectKernels, DrawsAcrossABlockBoundary) {
  const uint64_t key = kernels::stream_key(3, "model.embed_tokens.weight", 2);
  const uint64_t block = uint64_t{1} << 32;
  size_t same = 0;
  for (uint64_t j = 0; j < 4096; ++j) {
    same += kernels::draw_uniform(key, j) == kernels::draw_uniform(key, block + j);
  }
  EXPECT_LT(same, 8u);
  kernels::Draws draws(key);
  for (uint64_t c : {uint64_t{5}, block + 5, uint64_t{6}, 3 * block - 1, 3 * block}) {
    EXPECT_EQ(draws.uniform(c), kernels::draw_uniform(key, c)) << c;
  }
  const size_t n = 300;
  const std::vector<float> a = random_vector(n, 8), b = random_vector(n, 9);
  for (uint64_t first : {block - 37, block - 296, block, 2 * block - 8}) {
    const float p = 0.4f;
    std::vector<float> want(n);
    std::vector<uint8_t> want_bits((n + 7) / 8, 0);
    for (size_t j = 0; j < n; ++j) {
      const bool keep = kernels::draw_uniform(key, first + j) < p;
      want[j] = keep ? a[j] - b[j] : 0.0f;
      want_bits[j / 8] |= static_cast<uint8_t>(keep) << (j % 8);
    }
    std::vector<float> got(n);
    kernels::keep_random_difference(key, first, p, a.data(), b.data(), got.data(), n);
    EXPECT_EQ(got, want) << "first=" << first;
    std::vector<float> x(n);
    kernels::subtract(a.data(), b.data(), x.data(), n);
    kernels::keep_random(key, first, p, x.data(), n);
    EXPECT_EQ(x, want) << "first=" << first;
    if (first % 8 == 0) {
      std::vector<uint8_t> bits((n + 7) / 8, 0xA5);
      kernels::random_mask(key, first, p, bits.data(), n);
      EXPECT_EQ(bits, want_bits) << "first=" << first;
    }
  }
}

// keep_threshold turns draw_uniform < p into an integer comparison of the 24-bit draw.
TEST(SelectKernels, KeepThresholdMatchesTheFloatComparison) {
  std::vector<float> ps = {0.0f,
                           -0.0f,
                           -1.0f,
                           1.0f,
                           2.0f,
                           std::nanf(""),
                           1e-30f,
                           0.5f,
                           0.1f,
                           0.9f,
                           std::nextafter(1.0f, 0.0f),
                           5.9604645e-8f,
                           1.0e-7f};
  for (uint64_t i = 0; i < 200; ++i) ps.push_back(kernels::random_uniform(12, i));
  for (float p : ps) {
    const int32_t t = kernels::keep_threshold(p);
    const double edge = std::isnan(p) ? 0.0 : std::clamp(double{p} * 16777216.0, 0.0, 16777216.0);
    std::vector<int64_t> ms = {0, 1, 16777215};
    for (int64_t d = -3; d <= 3; ++d) ms.push_back(static_cast<int64_t>(std::floor(edge)) + d);
    for (int64_t m : ms) {
      if (m < 0 || m > 16777215) continue;
      const bool by_float = static_cast<float>(m) * kernels::kDrawScale < p;
      EXPECT_EQ(m < t, by_float) << "p=" << p << " m=" << m;
    }
  }
}

TEST(SelectKernels, ElectSignMatchesAScalarReference) {
  for (size_t n : kLengths) {
    for (size_t count : {1, 2, 3, 5}) {
      std::vector<std::vector<float>> d;
      std::vector<const float*> ptr;
      std::vector<float> w;
      for (size_t i = 0; i < count; ++i) {
        d.push_back(random_vector(n, 10 + static_cast<uint32_t>(i)));
        // zeros, negative zeros and a NaN mixed in
        for (size_t j = i; j < n; j += 7) d.back()[j] = (j % 2) ? 0.0f : -0.0f;
        if (n > 5) d.back()[5] = std::numeric_limits<float>::quiet_NaN();
        ptr.push_back(d.back().data());
        w.push_back(0.25f + static_cast<float>(i));
      }
      std::vector<float> majority(n), mixed(n, 9.0f), divisor(n, 9.0f);
      kernels::elect_sign(ptr.data(), w.data(), count, n, majority.data(), mixed.data(),
                          divisor.data());
      for (size_t j = 0; j < n; ++j) {
        float sum = 0.0f;
        for (size_t i = 0; i < count; ++i) sum += d[i][j];
        const float sign = sum >= 0.0f ? 1.0f : -1.0f;
        float m = 0.0f, dv = 0.0f;
        for (size_t i = 0; i < count; ++i) {
          if (d[i][j] * sign > 0.0f) {
            m += d[i][j];
            dv += w[i];
          }
        }
        if (dv == 0.0f) dv = 1.0f;
        ASSERT_EQ(std::bit_cast<uint32_t>(mixed[j]), std::bit_cast<uint32_t>(m))
            << "n=" << n << " count=" << count << " j=" << j;
        ASSERT_EQ(divisor[j], dv) << "n=" << n << " count=" << count << " j=" << j;
      }
    }
  }
}

TEST(SelectKernels, MergeTaskPairMatchesTheSeparateSteps) {
  const float inf = std::numeric_limits<float>::infinity();
  // Weights with a zero sum (divisor 1 where both match), a negative one, and plain ones.
  const std::array<std::array<float, 2>, 3> weights = {
      {{0.5f, -0.5f}, {-1.25f, 0.3f}, {0.7f, 0.4f}}};
  for (size_t n : kLengths) {
    std::vector<float> d0 = random_vector(n, 30), d1 = random_vector(n, 31),
                       base = random_vector(n, 32);
    for (size_t j = 0; j < n; j += 5) d0[j] = (j % 2) ? 0.0f : -0.0f;
    for (size_t j = 1; j < n; j += 7) d1[j] = (j % 2) ? 0.0f : -0.0f;
    for (size_t j = 2; j < n; j += 11) d1[j] = -d0[j];  // sums of exactly 0
    if (n > 40) {
      d0[13] = std::numeric_limits<float>::quiet_NaN();
      d1[17] = inf;
      d0[19] = -inf;
      d1[19] = inf;
    }
    for (const auto& w : weights) {
      for (int flags = 0; flags < 8; ++flags) {
        const bool elect = flags & 4, normalize = flags & 2;
        const float lambda = (flags & 1) ? 0.6f : 1.0f;
        const float weight_sum = w[0] + w[1] == 0.0f ? 1.0f : w[0] + w[1];
        std::vector<float> out(n, 9.0f);
        kernels::merge_task_pair(d0.data(), d1.data(), w[0], w[1], elect, normalize, weight_sum,
                                 lambda, base.data(), out.data(), n);
        for (size_t j = 0; j < n; ++j) {
          // The steps as the merge ran them before: scale each task vector, combine, divide,
          // scale by lambda (only when it is not 1), add the base; each rounded to f32.
          const float a = w[0] * d0[j], b = w[1] * d1[j];
          float r;
          if (elect) {
            const float sign = a + b >= 0.0f ? 1.0f : -1.0f;
            float m = 0.0f, dv = 0.0f;
            bool first = true;
            for (int i = 0; i < 2; ++i) {
              const float v = i == 0 ? a : b;
              const bool match = v * sign > 0.0f;
              // elect_sign starts its sums from the first term (+0 when it does not match).
              m = first ? (match ? v : 0.0f) : m + (match ? v : 0.0f);
              dv = first ? (match ? w[i] : 0.0f) : dv + (match ? w[i] : 0.0f);
              first = false;
            }
            r = normalize ? m / (dv == 0.0f ? 1.0f : dv) : m;
          } else {
            r = normalize ? (a + b) / weight_sum : a + b;
          }
          if (lambda != 1.0f) r = lambda * r;
          const float expected = r + base[j];
          ASSERT_EQ(std::bit_cast<uint32_t>(out[j]), std::bit_cast<uint32_t>(expected))
              << "n=" << n << " flags=" << flags << " w0=" << w[0] << " j=" << j;
        }
      }
    }
  }
}

TEST(SelectKernels, ElementwiseLoopsMatchScalarArithmetic) {
  for (size_t n : kLengths) {
    const std::vector<float> a = random_vector(n, 20), b = random_vector(n, 21);
    std::vector<float> out(n), acc = b;
    kernels::subtract(a.data(), b.data(), out.data(), n);
    for (size_t j = 0; j < n; ++j) ASSERT_EQ(out[j], a[j] - b[j]);
    kernels::scale(0.3f, a.data(), out.data(), n);
    for (size_t j = 0; j < n; ++j) ASSERT_EQ(out[j], 0.3f * a[j]);
    kernels::scale_add(-1.7f, a.data(), acc.data(), n);
    for (size_t j = 0; j < n; ++j) {
      const float prod = -1.7f * a[j];  // rounded to f32 before the add: no fused multiply-add
      ASSERT_EQ(acc[j], b[j] + prod);
    }
    std::vector<float> mask = b, z = a;
    for (size_t j = 0; j < n; j += 3) mask[j] = (j % 2) ? 0.0f : -0.0f;
    if (n > 4) mask[4] = std::numeric_limits<float>::quiet_NaN();
    kernels::zero_where_nonzero(mask.data(), z.data(), n);
    for (size_t j = 0; j < n; ++j) {
      ASSERT_EQ(std::bit_cast<uint32_t>(z[j]),
                std::bit_cast<uint32_t>(mask[j] == 0.0f ? a[j] : 0.0f));
    }
    kernels::weighted_pair(0.25f, a.data(), 0.75f, b.data(), out.data(), n);
    for (size_t j = 0; j < n; ++j) {
      const float x = 0.25f * a[j], y = 0.75f * b[j];
      ASSERT_EQ(out[j], x + y);
    }
  }
}

// weighted_sum against the products and sums written out one rounding at a time, for every input
// count (the fused two- and three-input loops and the blocked general one), with and without the
// division.
TEST(SelectKernels, WeightedSumRoundsLikeScaleThenScaleAdd) {
  const float weights[] = {0.3f, -1.7f, 0.61f, 2.5f, -0.05f};
  for (size_t n : kLengths) {
    std::vector<std::vector<float>> x;
    for (uint32_t i = 0; i < 5; ++i) x.push_back(random_vector(n, 40 + i, 1.0f + float(i)));
    for (size_t k = 1; k <= 5; ++k) {
      std::vector<const float*> ptr;
      for (size_t i = 0; i < k; ++i) ptr.push_back(x[i].data());
      for (bool divide : {false, true}) {
        std::vector<float> got(n, -1.0f);
        kernels::weighted_sum(ptr.data(), weights, k, divide, 1.3f, got.data(), n);
        for (size_t j = 0; j < n; ++j) {
          float acc = weights[0] * x[0][j];
          for (size_t i = 1; i < k; ++i) {
            const float prod = weights[i] * x[i][j];
            acc = acc + prod;
          }
          if (divide) acc = acc / 1.3f;
          ASSERT_EQ(std::bit_cast<uint32_t>(got[j]), std::bit_cast<uint32_t>(acc))
              << "n=" << n << " k=" << k << " divide=" << divide << " j=" << j;
        }
      }
    }
  }
}

// The fused kernels on differences against subtract followed by the unfused kernels.
TEST(SelectKernels, DifferenceKernelsEqualSubtractThenKernel) {
  for (size_t n : kLengths) {
    const std::vector<float> x = random_vector(n, 60), y = random_vector(n, 61),
                             b = random_vector(n, 62);
    std::vector<float> d(n), e(n);
    kernels::subtract(x.data(), b.data(), d.data(), n);
    kernels::subtract(y.data(), b.data(), e.data(), n);
    const float* v[2] = {d.data(), e.data()};
    double expected[3], actual[3];
    kernels::gram_upper(v, 2, n, expected);
    kernels::gram2_of_differences(x.data(), y.data(), b.data(), n, actual);
    for (int i = 0; i < 3; ++i) {
      ASSERT_EQ(std::bit_cast<uint64_t>(actual[i]), std::bit_cast<uint64_t>(expected[i]))
          << "n=" << n << " i=" << i;
    }
    std::vector<float> want(n), got(n);
    kernels::weighted_pair(0.3f, d.data(), -0.7f, e.data(), want.data(), n);
    kernels::scale_add(1.0f, b.data(), want.data(), n);
    kernels::weighted_pair_of_differences(0.3f, x.data(), -0.7f, y.data(), b.data(), got.data(), n);
    for (size_t j = 0; j < n; ++j) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[j]), std::bit_cast<uint32_t>(want[j]))
          << "n=" << n << " j=" << j;
    }
    // model_stock's blend of the mean of two models.
    want = x;
    kernels::scale_add(1.0f, y.data(), want.data(), n);
    kernels::divide(want.data(), 2.0f, n);
    kernels::weighted_pair(0.37f, want.data(), 1.0f - 0.37f, b.data(), want.data(), n);
    kernels::blend_mean_pair(x.data(), y.data(), 2.0f, 0.37f, b.data(), got.data(), n);
    for (size_t j = 0; j < n; ++j) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[j]), std::bit_cast<uint32_t>(want[j]))
          << "blend n=" << n << " j=" << j;
    }
  }
}

// sce's variance against the formula as written: sums from 0.0 in i order, division by count,
// all in double. Differences with signed zeros, subnormals, an exponent gap of 2^60 (inexact
// double sums), infinities and NaN must give the same bits for every count (2 has its own loop).
TEST(SelectKernels, VarianceOfDifferencesMatchesTheDoubleFormula) {
  for (size_t n : kLengths) {
    for (size_t count : {1, 2, 3, 4, 5}) {
      std::vector<std::vector<float>> x;
      std::vector<const float*> ptr;
      const std::vector<float> b = random_vector(n, 40, 0.02f);
      for (size_t i = 0; i < count; ++i) {
        x.push_back(random_vector(n, 41 + static_cast<uint32_t>(i), 0.02f));
        std::vector<float>& xi = x.back();
        for (size_t j = 0; j < n; ++j) {
          switch ((j + i) % 11) {
            case 0:
              xi[j] = b[j];  // difference +0
              break;
            case 1:
              xi[j] = j % 2 ? -0.0f : b[j];
              break;
            case 2:
              xi[j] = b[j] + (i % 2 ? 1e-40f : -3e-42f);  // subnormal steps
              break;
            case 3:
              xi[j] = b[j] + (i == 0 ? 1e18f : 1e-18f);  // wide gap between the terms
              break;
            default:
              break;
          }
        }
        if (n > 7) xi[7] = i == 0 ? std::numeric_limits<float>::infinity() : xi[7];
        if (n > 9) xi[9] = std::numeric_limits<float>::quiet_NaN();
        ptr.push_back(xi.data());
      }
      std::vector<float> var(n, 9.0f);
      kernels::variance_of_differences(ptr.data(), count, b.data(), n, var.data());
      for (size_t j = 0; j < n; ++j) {
        double sum = 0.0;
        for (size_t i = 0; i < count; ++i) sum += static_cast<double>(x[i][j] - b[j]);
        const double mean = sum / static_cast<double>(count);
        double squares = 0.0;
        for (size_t i = 0; i < count; ++i) {
          const double d = static_cast<double>(x[i][j] - b[j]) - mean;
          squares += d * d;
        }
        const float expected = static_cast<float>(squares / static_cast<double>(count));
        if (std::isnan(expected)) {
          ASSERT_TRUE(std::isnan(var[j])) << "n=" << n << " count=" << count << " j=" << j;
        } else {
          ASSERT_EQ(std::bit_cast<uint32_t>(var[j]), std::bit_cast<uint32_t>(expected))
              << "n=" << n << " count=" << count << " j=" << j;
        }
      }
    }
  }
}

TEST(SelectKernels, SelectionKeysAndNonzeroBytes) {
  for (size_t n : kLengths) {
    std::vector<float> v = random_vector(n, 50);
    for (size_t j = 0; j < n; j += 5) v[j] = (j % 2) ? 0.0f : -0.0f;
    if (n > 3) v[3] = std::numeric_limits<float>::quiet_NaN();
    if (n > 8) v[8] = -std::numeric_limits<float>::infinity();
    const size_t mask_bytes = (n + 7) / 8;
    std::vector<uint8_t> m(mask_bytes + 1, 0xA5);
    kernels::not_positive_zero(v.data(), m.data(), n);
    ASSERT_EQ(m[mask_bytes], 0xA5) << "n=" << n;
    for (size_t j = 0; j < mask_bytes * 8; ++j) {
      ASSERT_EQ((m[j / 8] >> (j % 8)) & 1, j < n && std::bit_cast<uint32_t>(v[j]) != 0 ? 1 : 0)
          << "n=" << n << " j=" << j;
    }
    std::vector<float> keys = v;
    const uint64_t nonzero = kernels::selection_keys(keys.data(), n);
    uint64_t expected_nonzero = 0;
    for (size_t j = 0; j < n; ++j) {
      expected_nonzero += v[j] != 0.0f;
      const uint32_t magnitude = std::bit_cast<uint32_t>(v[j]) & 0x7FFFFFFFu;
      ASSERT_EQ(std::bit_cast<uint32_t>(keys[j]), std::min(magnitude, 0x7FFFFFFEu) + 1u)
          << "n=" << n << " j=" << j;
    }
    EXPECT_EQ(nonzero, expected_nonzero) << "n=" << n;
  }
}

// The hand-dispatched kernels have AVX-512, AVX2 and scalar paths; a machine runs only its best
// one. These tests run the kernel, top-k and sparsifying-method tests again in a child process
// with SMELT_MAX_ISA=avx2 and =scalar (kernels/cpu_features.h), so every path this CPU has is
// checked against the same scalar references and exact expectations.
TEST(KernelPaths, LowerInstructionSetsPassTheSameTests) {
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  const std::string filter =
      "SelectKernels.*:TopKMagnitude.*:RankByMagnitude.*:KeepRandomByRank.*:Convert.*:Ties.*:"
      "Dare*:Della*:Breadcrumbs*:Sce.*";
  for (const char* isa : {"avx2", "scalar"}) {
    const auto r =
        testing::run_command(std::string("SMELT_MAX_ISA=") + isa + " " + testing::quote(self) +
                             " --gtest_filter='" + filter + "' --gtest_brief=1 2>&1");
    EXPECT_EQ(r.exit_code, 0) << "SMELT_MAX_ISA=" << isa << ":\n" << r.output;
    EXPECT_NE(r.output.find("PASSED"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace smelt
