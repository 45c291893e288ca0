// Tests of the ranking kernel (kernels/rank.h) and della's keep decision against the
// straightforward implementation they replaced: std::sort of 64-bit keys (magnitude bits, then the
// complement of the index) and one scalar random draw per element in rank order.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/rank.h"
#include "smelt/kernels/topk.h"

namespace {

namespace k = smelt::kernels;

// ---------------------------------------------------------------------------------------------
// The reference: della's previous implementation (sparsify_ranked.cpp).

// Position of each element in ascending order: smaller magnitude first, and among equal
// magnitudes the higher index first.
std::vector<uint32_t> reference_ranks(const float* x, uint64_t size, uint64_t stride) {
  std::vector<uint64_t> keys(size);
  for (uint64_t b = 0; b < size; ++b) {
    keys[b] = (uint64_t{k::magnitude_bits(x[b * stride])} << 32) | (0xFFFFFFFFu - b);
  }
  std::sort(keys.begin(), keys.end());
  std::vector<uint32_t> ranks(size);
  for (uint64_t q = 0; q < size; ++q) {
    ranks[0xFFFFFFFFu - (keys[q] & 0xFFFFFFFFu)] = static_cast<uint32_t>(q);
  }
  return ranks;
}

// della's decision for one group, visiting elements in rank order.
void reference_della(float* x, uint64_t size, uint64_t stride, uint64_t key, uint64_t first,
                     float low, float epsilon) {
  std::vector<uint64_t> keys(size);
  for (uint64_t b = 0; b < size; ++b) {
    keys[b] = (uint64_t{k::magnitude_bits(x[b * stride])} << 32) | (0xFFFFFFFFu - b);
  }
  std::sort(keys.begin(), keys.end());
  for (uint64_t q = 0; q < size; ++q) {
    const uint64_t b = 0xFFFFFFFFu - (keys[q] & 0xFFFFFFFFu);
    const float rank_norm = static_cast<float>(q) / static_cast<float>(size - 1);
    const float p = low + (rank_norm * 2.0f) * epsilon;
    const uint64_t offset = b * stride;
    if (!(k::draw_uniform(key, first + offset) < p)) x[offset] = 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
// Test data.

float from_bits(uint32_t bits) { return std::bit_cast<float>(bits); }

enum class Kind {
  kNormal,           // distinct magnitudes, all 31 bits vary
  kEightMagnitudes,  // many exact ties: 8 magnitudes, both signs
  kSignedZeros,      // a third ±0, the rest normal
  kSpecials,         // NaNs (several payloads, both signs), ±inf, ±0 and a few finite values
  kAllEqual,         // one magnitude, both signs
  kAllZero,          // ±0 only
  kBf16Deltas,       // differences of bf16 values: low mantissa bits zero, half exact zeros
  kConstantMiddle,   // magnitudes differing only in bit 0 and bits 26–27 (a middle digit is
                     // the same in every key)
  kSubnormals,       // tiny magnitudes and zeros
};

const Kind kKinds[] = {Kind::kNormal,     Kind::kEightMagnitudes, Kind::kSignedZeros,
                       Kind::kSpecials,   Kind::kAllEqual,        Kind::kAllZero,
                       Kind::kBf16Deltas, Kind::kConstantMiddle,  Kind::kSubnormals};

std::string kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNormal:
      return "normal";
    case Kind::kEightMagnitudes:
      return "eight_magnitudes";
    case Kind::kSignedZeros:
      return "signed_zeros";
    case Kind::kSpecials:
      return "specials";
    case Kind::kAllEqual:
      return "all_equal";
    case Kind::kAllZero:
      return "all_zero";
    case Kind::kBf16Deltas:
      return "bf16_deltas";
    case Kind::kConstantMiddle:
      return "constant_middle";
    case Kind::kSubnormals:
      return "subnormals";
  }
  return "?";
}

float bf16_round(float v) {
  return from_bits((std::bit_cast<uint32_t>(v) + 0x8000u) & 0xFFFF0000u);
}

std::vector<float> make_data(Kind kind, size_t n, uint64_t seed) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = k::random_u64(seed, i);
    const float sign = (r & 1) != 0 ? -1.0f : 1.0f;
    float v = k::random_normal(seed + 1, i);
    switch (kind) {
      case Kind::kNormal:
        break;
      case Kind::kEightMagnitudes:
        v = sign * static_cast<float>((r >> 8) % 8) * 0.25f;
        break;
      case Kind::kSignedZeros:
        if (r % 3 == 0) v = sign * 0.0f;
        break;
      case Kind::kSpecials: {
        switch ((r >> 8) % 8) {
          case 0:
            v = sign * std::numeric_limits<float>::infinity();
            break;
          case 1:
            v = sign * std::numeric_limits<float>::quiet_NaN();
            break;
          case 2:
            v = from_bits(0x7F800001u | static_cast<uint32_t>(r >> 41));
            break;  // NaN
          case 3:
            v = from_bits(0xFFC00000u | static_cast<uint32_t>((r >> 20) % 7));
            break;
          case 4:
            v = sign * 0.0f;
            break;
          case 5:
            v = sign * std::numeric_limits<float>::max();
            break;
          default:
            v = sign * static_cast<float>((r >> 12) % 3);
            break;
        }
        break;
      }
      case Kind::kAllEqual:
        v = sign * 1.5f;
        break;
      case Kind::kAllZero:
        v = sign * 0.0f;
        break;
      case Kind::kBf16Deltas: {
        const float base = bf16_round(k::random_normal(seed + 2, i) * 0.02f);
        v = (r >> 8) % 2 == 0 ? 0.0f : bf16_round(base + v * 1e-4f) - base;
        break;
      }
      case Kind::kConstantMiddle: {
        const uint32_t bits = 0x3F800000u ^ static_cast<uint32_t>((r >> 8) & 1) ^
                              (static_cast<uint32_t>((r >> 9) & 3) << 26);
        v = sign * from_bits(bits);
        break;
      }
      case Kind::kSubnormals:
        v = sign * from_bits(static_cast<uint32_t>((r >> 10) % 64));
        break;
    }
    x[i] = v;
  }
  return x;
}

std::vector<uint32_t> bits_of(const std::vector<float>& x) {
  std::vector<uint32_t> out(x.size());
  std::memcpy(out.data(), x.data(), x.size() * sizeof(float));
  return out;
}

const size_t kSizes[] = {1, 2, 3, 7, 100, 2048, 5000};

// ---------------------------------------------------------------------------------------------

TEST(RankByMagnitude, MatchesSortedKeysOnEveryKindSizeAndStride) {
  for (Kind kind : kKinds) {
    for (size_t n : kSizes) {
      for (size_t stride : {size_t{1}, size_t{3}}) {
        SCOPED_TRACE(kind_name(kind) + " n=" + std::to_string(n) +
                     " stride=" + std::to_string(stride));
        const std::vector<float> data = make_data(kind, n * stride, n * 31 + stride);
        // Each of the `stride` interleaved groups, as in a 3-D tensor's slice.
        for (size_t g = 0; g < stride; ++g) {
          std::vector<uint32_t> ranks(n, 0xDEADBEEFu);
          k::rank_by_magnitude(data.data() + g, n, stride, ranks.data());
          ASSERT_EQ(ranks, reference_ranks(data.data() + g, n, stride)) << "group " << g;
        }
      }
    }
  }
}

TEST(RankByMagnitude, EqualMagnitudesRankByDescendingIndex) {
  // 2, −0, +0, −2, 1, NaN, 2: the zeros (indices 2, 1) first, then 1, the 2s by descending index
  // (6, 3, 0), then the NaN.
  const std::vector<float> x = {
      2.0f, -0.0f, 0.0f, -2.0f, 1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  std::vector<uint32_t> ranks(x.size());
  k::rank_by_magnitude(x.data(), x.size(), 1, ranks.data());
  EXPECT_EQ(ranks, (std::vector<uint32_t>{5, 1, 0, 4, 2, 6, 3}));
}

TEST(RankByMagnitude, ReusesScratchAcrossGroupsOfDifferentSizes) {
  // Thread-local scratch grows and shrinks between calls; results must not depend on the order.
  uint64_t seed = 7;
  for (size_t n : {5000, 3, 2048, 1, 4999, 100, 5000}) {
    for (Kind kind : {Kind::kNormal, Kind::kBf16Deltas, Kind::kEightMagnitudes}) {
      const std::vector<float> x = make_data(kind, n, ++seed);
      std::vector<uint32_t> ranks(n);
      k::rank_by_magnitude(x.data(), n, 1, ranks.data());
      ASSERT_EQ(ranks, reference_ranks(x.data(), n, 1)) << kind_name(kind) << " n=" << n;
    }
  }
}

// keep_random_by_rank decides most elements from their magnitude bucket: every kind of data,
// several bucket widths (group sizes), both signs of epsilon, and strided groups must give the
// reference's bits.
TEST(KeepRandomByRank, DellaDecisionsAreBitIdenticalToTheRankOrderLoop) {
  struct Setting {
    double density;
    double epsilon;
  };
  const Setting settings[] = {{0.5, 0.1}, {0.3, 0.15}, {0.7, 0.25}, {0.5, 0.0}, {0.4, -0.2}};
  for (Kind kind : kKinds) {
    for (size_t n : {size_t{2}, size_t{3}, size_t{7}, size_t{100}, size_t{2048}, size_t{5000}}) {
      for (size_t stride : {size_t{1}, size_t{3}}) {
        for (const Setting& s : settings) {
          for (uint64_t key : {uint64_t{1}, k::stream_key(42, "model.layers.0.mlp.weight", 1)}) {
            SCOPED_TRACE(kind_name(kind) + " n=" + std::to_string(n) + " stride=" +
                         std::to_string(stride) + " density=" + std::to_string(s.density) +
                         " epsilon=" + std::to_string(s.epsilon) + " key=" + std::to_string(key));
            const float low = static_cast<float>(s.density - s.epsilon);
            const float epsilon = static_cast<float>(s.epsilon);
            const uint64_t first = 1000 * n + 17;
            const std::vector<float> data = make_data(kind, n * stride, n + stride + key);
            std::vector<float> expected = data;
            std::vector<float> actual = data;
            for (size_t g = 0; g < stride; ++g) {
              reference_della(expected.data() + g, n, stride, key, first + g, low, epsilon);
              k::keep_random_by_rank(key, first + g, low, epsilon, actual.data() + g, n, stride);
            }
            ASSERT_EQ(bits_of(actual), bits_of(expected));
          }
        }
      }
    }
  }
}

// Rows where the buckets leave many elements undecided: all magnitudes in a few buckets, many
// −0 (whose result depends on the decision, unlike +0), and a wide row with most elements equal.
TEST(KeepRandomByRank, CrowdedBucketsAndNegativeZerosRankExactly) {
  const size_t n = 4096;
  for (int pattern = 0; pattern < 4; ++pattern) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) {
      const uint64_t r = k::random_u64(99 + pattern, i);
      switch (pattern) {
        case 0:  // −0 and +0 only
          x[i] = (r & 1) != 0 ? -0.0f : 0.0f;
          break;
        case 1:  // half −0, the rest in two magnitudes
          x[i] = (r & 1) != 0 ? -0.0f : ((r >> 1) & 1) != 0 ? 1.0f : -2.0f;
          break;
        case 2:  // magnitudes 1 + j·2^-23 for j < 4: one bucket once the shift drops bit 0, 1
          x[i] = from_bits(0x3F800000u + static_cast<uint32_t>((r >> 3) % 4));
          break;
        default:  // one huge outlier stretches the buckets; the rest share the lowest ones
          x[i] = i == 17 ? 1e30f : from_bits(0x3F800000u + static_cast<uint32_t>((r >> 3) % 1000));
          break;
      }
    }
    for (float epsilon : {0.2f, -0.2f}) {
      SCOPED_TRACE("pattern " + std::to_string(pattern) + " epsilon " + std::to_string(epsilon));
      std::vector<float> expected = x;
      std::vector<float> actual = x;
      reference_della(expected.data(), n, 1, 5, 123, 0.5f - epsilon, epsilon);
      k::keep_random_by_rank(5, 123, 0.5f - epsilon, epsilon, actual.data(), n, 1);
      ASSERT_EQ(bits_of(actual), bits_of(expected));
    }
  }
}

// A row whose counters cross a block of 2^32 (random.h: the key's constants change there) takes
// the scalar path and must still give the reference's bits, as must one that starts in the
// second block.
TEST(KeepRandomByRank, RowsAcrossADrawBlockBoundary) {
  const size_t n = 2048;
  const std::vector<float> data = make_data(Kind::kBf16Deltas, n, 11);
  for (uint64_t first : {(uint64_t{1} << 32) - 1000, (uint64_t{1} << 32) + 8}) {
    SCOPED_TRACE("first " + std::to_string(first));
    std::vector<float> expected = data;
    std::vector<float> actual = data;
    reference_della(expected.data(), n, 1, 77, first, 0.35f, 0.15f);
    k::keep_random_by_rank(77, first, 0.35f, 0.15f, actual.data(), n, 1);
    ASSERT_EQ(bits_of(actual), bits_of(expected));
  }
}

}  // namespace
