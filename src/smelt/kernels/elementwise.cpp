// The elementwise loops and fixed-order reductions merge methods run over chunks.
#include "smelt/kernels/elementwise.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "smelt/kernels/cpu_features.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/random_avx2.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace smelt::kernels {
namespace {

// Reductions in double (dot, abs_sum) add element j to lane j % 16 (a tail shorter than 16 to
// lane 0) and combine the lanes by the fixed tree below: 16 independent chains vectorize, and the
// sum is still a pure function of the values, the same for every instruction set.
constexpr size_t kSumLanes = 16;

double combine_lanes(double* s) {
  for (size_t w = kSumLanes / 2; w > 0; w /= 2) {
    for (size_t l = 0; l < w; ++l) s[l] += s[l + w];
  }
  return s[0];
}

}  // namespace

SMELT_ELEMENTWISE void subtract(const float* a, const float* b, float* out, size_t n) {
  for (size_t j = 0; j < n; ++j) out[j] = a[j] - b[j];
}

SMELT_ELEMENTWISE void scale(float w, const float* x, float* out, size_t n) {
  for (size_t j = 0; j < n; ++j) out[j] = w * x[j];
}

SMELT_ELEMENTWISE void scale_add(float w, const float* x, float* acc, size_t n) {
  for (size_t j = 0; j < n; ++j) acc[j] += w * x[j];
}

namespace {

// weighted_sum for two and three inputs, each product rounded, then each sum (fp-contract=off).
SMELT_ELEMENTWISE void weighted_sum2(const float* x0, const float* x1, float w0, float w1,
                                     bool divide, float d, float* out, size_t n) {
  if (divide) {
    for (size_t j = 0; j < n; ++j) out[j] = (w0 * x0[j] + w1 * x1[j]) / d;
  } else {
    for (size_t j = 0; j < n; ++j) out[j] = w0 * x0[j] + w1 * x1[j];
  }
}

SMELT_ELEMENTWISE void weighted_sum3(const float* x0, const float* x1, const float* x2, float w0,
                                     float w1, float w2, bool divide, float d, float* out,
                                     size_t n) {
  if (divide) {
    for (size_t j = 0; j < n; ++j) out[j] = ((w0 * x0[j] + w1 * x1[j]) + w2 * x2[j]) / d;
  } else {
    for (size_t j = 0; j < n; ++j) out[j] = (w0 * x0[j] + w1 * x1[j]) + w2 * x2[j];
  }
}

}  // namespace

void weighted_sum(const float* const* x, const float* w, size_t k, bool divide, float divisor,
                  float* out, size_t n) {
  if (k == 2) return weighted_sum2(x[0], x[1], w[0], w[1], divide, divisor, out, n);
  if (k == 3) return weighted_sum3(x[0], x[1], x[2], w[0], w[1], w[2], divide, divisor, out, n);
  // Other counts: the three kernels over blocks small enough to stay in L1.
  constexpr size_t kBlock = 2048;
  for (size_t first = 0; first < n; first += kBlock) {
    const size_t len = std::min(kBlock, n - first);
    float* o = out + first;
    scale(w[0], x[0] + first, o, len);
    for (size_t i = 1; i < k; ++i) scale_add(w[i], x[i] + first, o, len);
    if (divide) kernels::divide(o, divisor, len);
  }
}

SMELT_ELEMENTWISE void weighted_pair(float a, const float* x, float b, const float* y, float* out,
                                     size_t n) {
  for (size_t j = 0; j < n; ++j) out[j] = a * x[j] + b * y[j];
}

SMELT_ELEMENTWISE void weighted_pair_of_differences(float a, const float* x, float c,
                                                    const float* y, const float* b, float* out,
                                                    size_t n) {
  for (size_t j = 0; j < n; ++j) {
    const float s = a * (x[j] - b[j]) + c * (y[j] - b[j]);
    out[j] = s + 1.0f * b[j];
  }
}

SMELT_ELEMENTWISE void blend_mean_pair(const float* x, const float* y, float count, float t,
                                       const float* b, float* out, size_t n) {
  const float u = 1.0f - t;
  for (size_t j = 0; j < n; ++j) {
    const float mean = (x[j] + 1.0f * y[j]) / count;
    out[j] = t * mean + u * b[j];
  }
}

SMELT_ELEMENTWISE void zero_where_nonzero(const float* mask, float* x, size_t n) {
  for (size_t j = 0; j < n; ++j) x[j] = mask[j] != 0.0f ? 0.0f : x[j];
}

namespace {

[[gnu::optimize("no-tree-vectorize")]] void not_positive_zero_scalar(const float* x, uint8_t* bits,
                                                                     size_t n) {
  for (size_t q = 0; q * 8 < n; ++q) {
    uint32_t byte = 0;
    for (size_t l = 0; l < 8 && q * 8 + l < n; ++l) {
      byte |= uint32_t{std::bit_cast<uint32_t>(x[q * 8 + l]) != 0} << l;
    }
    bits[q] = static_cast<uint8_t>(byte);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void not_positive_zero_avx2(const float* x, uint8_t* bits,
                                                            size_t n) {
  const __m256i zero = _mm256_setzero_si256();
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
    const auto is_zero =
        static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero))));
    bits[j >> 3] = static_cast<uint8_t>(~is_zero);
  }
  not_positive_zero_scalar(x + j, bits + (j >> 3), n - j);
}
#endif

}  // namespace

void not_positive_zero(const float* x, uint8_t* bits, size_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx2()) return not_positive_zero_avx2(x, bits, n);
#endif
  not_positive_zero_scalar(x, bits, n);
}

SMELT_ELEMENTWISE void divide(float* x, float d, size_t n) {
  for (size_t j = 0; j < n; ++j) x[j] /= d;
}

SMELT_ELEMENTWISE void divide(float* x, const float* d, size_t n) {
  for (size_t j = 0; j < n; ++j) x[j] /= d[j];
}

namespace {

[[gnu::always_inline]] inline void keep_random_loop(uint64_t key, uint64_t first_counter, float p,
                                                    float* x, size_t n) {
  const int32_t t = keep_threshold(p);
  for_each_draw_block(key, first_counter, n, [&](DrawKey k, uint32_t lo, uint64_t j, uint64_t len) {
    float* y = x + j;
    for (uint64_t i = 0; i < len; ++i) {
      y[i] = kept_or_zero(static_cast<int32_t>(draw_bits24(k, lo + static_cast<uint32_t>(i))) < t,
                          y[i]);
    }
  });
}

#if defined(__x86_64__)
// The generator is 32-bit integer arithmetic (random.h), which GCC vectorizes sixteen lanes wide
// for AVX-512; the AVX2 paths are written with intrinsics below. All give the same bits.
[[gnu::target("avx512f,avx512dq"), gnu::optimize("O3")]] void keep_random_avx512(
    uint64_t key, uint64_t first_counter, float p, float* x, size_t n) {
  keep_random_loop(key, first_counter, p, x, n);
}
#endif

[[gnu::always_inline]] inline void keep_random_difference_loop(uint64_t key, uint64_t first_counter,
                                                               float p, const float* a,
                                                               const float* b, float* delta,
                                                               size_t n) {
  const int32_t t = keep_threshold(p);
  for_each_draw_block(key, first_counter, n, [&](DrawKey k, uint32_t lo, uint64_t j, uint64_t len) {
    for (uint64_t i = 0; i < len; ++i) {
      const float d = a[j + i] - b[j + i];
      delta[j + i] =
          kept_or_zero(static_cast<int32_t>(draw_bits24(k, lo + static_cast<uint32_t>(i))) < t, d);
    }
  });
}

#if defined(__x86_64__)
[[gnu::target("avx512f,avx512dq"), gnu::optimize("O3", "fp-contract=off")]] void
keep_random_difference_avx512(uint64_t key, uint64_t first_counter, float p, const float* a,
                              const float* b, float* delta, size_t n) {
  keep_random_difference_loop(key, first_counter, p, a, b, delta, n);
}
#endif

// The mask one bit per element: bit j % 8 of bits[j / 8]. Blocks of 64 decisions are made as
// bytes (the loop the AVX-512 build vectorizes), then packed; a last partial byte gets zeros in
// its unused bits. The block key is computed once per 2^32 counters (Draws), not per block.
[[gnu::always_inline]] inline void random_mask_loop(uint64_t key, uint64_t first_counter, float p,
                                                    uint8_t* bits, size_t n) {
  constexpr size_t kBlock = 64;
  const int32_t t = keep_threshold(p);
  Draws draws(key);
  for (size_t first = 0; first < n; first += kBlock) {
    const size_t len = std::min(kBlock, n - first);
    const uint64_t c = first_counter + first;
    uint8_t keep[kBlock];
    if (draws_in_one_block(c, len)) {
      const DrawKey k = draws.block_key(c >> 32);
      const auto lo = static_cast<uint32_t>(c);
      for (size_t j = 0; j < len; ++j) {
        keep[j] = static_cast<uint8_t>(
            static_cast<int32_t>(draw_bits24(k, lo + static_cast<uint32_t>(j))) < t);
      }
    } else {
      for (size_t j = 0; j < len; ++j) keep[j] = static_cast<uint8_t>(draws.uniform(c + j) < p);
    }
    for (size_t q = 0; q * 8 < len; ++q) {
      uint32_t byte = 0;
      for (size_t l = 0; l < 8 && q * 8 + l < len; ++l) byte |= uint32_t{keep[q * 8 + l]} << l;
      bits[(first >> 3) + q] = static_cast<uint8_t>(byte);
    }
  }
}
#if defined(__x86_64__)
[[gnu::target("avx512f,avx512dq,avx512bw"), gnu::optimize("O3")]] void random_mask_avx512(
    uint64_t key, uint64_t first_counter, float p, uint8_t* m, size_t n) {
  random_mask_loop(key, first_counter, p, m, n);
}
#endif
[[gnu::optimize("no-tree-vectorize")]] void random_mask_scalar(uint64_t key, uint64_t first_counter,
                                                               float p, uint8_t* m, size_t n) {
  random_mask_loop(key, first_counter, p, m, n);
}

[[gnu::optimize("no-tree-vectorize")]] void keep_random_difference_scalar(uint64_t key,
                                                                          uint64_t first_counter,
                                                                          float p, const float* a,
                                                                          const float* b,
                                                                          float* delta, size_t n) {
  keep_random_difference_loop(key, first_counter, p, a, b, delta, n);
}

[[gnu::optimize("no-tree-vectorize")]] void keep_random_scalar(uint64_t key, uint64_t first_counter,
                                                               float p, float* x, size_t n) {
  keep_random_loop(key, first_counter, p, x, n);
}

#if defined(__x86_64__)
// The same three loops with the generator eight lanes wide (random_avx2.h) when the counters lie
// in one block of 2^32; the tails (and runs across a block boundary) go to the scalar loops.
__attribute__((target("avx2"))) void keep_random_avx2(uint64_t key, uint64_t first_counter, float p,
                                                      float* x, size_t n) {
  size_t j = 0;
  if (draws_in_one_block(first_counter, n)) {
    avx2::DrawsX8 d = avx2::draws_x8_start(key, first_counter);
    const __m256i t = _mm256_set1_epi32(keep_threshold(p));
    for (; j + 8 <= n; j += 8) {
      const __m256 keep = avx2::draws_x8_keep(d, t);
      _mm256_storeu_ps(x + j, _mm256_and_ps(_mm256_loadu_ps(x + j), keep));
    }
  }
  keep_random_scalar(key, first_counter + j, p, x + j, n - j);
}

__attribute__((target("avx2"))) void keep_random_difference_avx2(uint64_t key,
                                                                 uint64_t first_counter, float p,
                                                                 const float* a, const float* b,
                                                                 float* delta, size_t n) {
  size_t j = 0;
  if (draws_in_one_block(first_counter, n)) {
    avx2::DrawsX8 d = avx2::draws_x8_start(key, first_counter);
    const __m256i t = _mm256_set1_epi32(keep_threshold(p));
    for (; j + 8 <= n; j += 8) {
      const __m256 keep = avx2::draws_x8_keep(d, t);
      const __m256 diff = _mm256_sub_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(delta + j, _mm256_and_ps(diff, keep));
    }
  }
  keep_random_difference_scalar(key, first_counter + j, p, a + j, b + j, delta + j, n - j);
}

__attribute__((target("avx2"))) void random_mask_avx2(uint64_t key, uint64_t first_counter, float p,
                                                      uint8_t* bits, size_t n) {
  size_t j = 0;
  if (draws_in_one_block(first_counter, n)) {
    avx2::DrawsX8 d = avx2::draws_x8_start(key, first_counter);
    const __m256i t = _mm256_set1_epi32(keep_threshold(p));
    for (; j + 8 <= n; j += 8) {
      // Lane l's decision is bit l of the movemask, as the mask's layout wants.
      bits[j >> 3] = static_cast<uint8_t>(_mm256_movemask_ps(avx2::draws_x8_keep(d, t)));
    }
  }
  random_mask_scalar(key, first_counter + j, p, bits + (j >> 3), n - j);
}
#endif

}  // namespace

void keep_random(uint64_t key, uint64_t first_counter, float p, float* x, size_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx512dq()) return keep_random_avx512(key, first_counter, p, x, n);
  if (cpu_has_avx2()) return keep_random_avx2(key, first_counter, p, x, n);
#endif
  keep_random_scalar(key, first_counter, p, x, n);
}

void keep_random_difference(uint64_t key, uint64_t first_counter, float p, const float* a,
                            const float* b, float* delta, size_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx512dq()) {
    return keep_random_difference_avx512(key, first_counter, p, a, b, delta, n);
  }
  if (cpu_has_avx2()) return keep_random_difference_avx2(key, first_counter, p, a, b, delta, n);
#endif
  keep_random_difference_scalar(key, first_counter, p, a, b, delta, n);
}

namespace {

// Adds |x[j]| to lane j % 16 for j < n (n a multiple of 16): abs_sum's lanes.
SMELT_ELEMENTWISE void abs_sum_lanes(const float* x, size_t n, double* s) {
  for (size_t j = 0; j < n; j += kSumLanes) {
    for (size_t l = 0; l < kSumLanes; ++l) s[l] += std::fabs(double{x[j + l]});
  }
}

// abs_sum_lanes over a block of two arrays (the tail, n % 16 elements, into lane 0).
void abs_sum_pair_block(const float* d, const float* kept, size_t n, double* s, double* t) {
  const size_t body = n / kSumLanes * kSumLanes;
  abs_sum_lanes(d, body, s);
  abs_sum_lanes(kept, body, t);
  for (size_t j = body; j < n; ++j) {
    s[0] += std::fabs(double{d[j]});
    t[0] += std::fabs(double{kept[j]});
  }
}

}  // namespace

void random_mask(uint64_t key, uint64_t first_counter, float p, uint8_t* m, size_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx512dq() && cpu_has_avx512bw()) {
    return random_mask_avx512(key, first_counter, p, m, n);
  }
  if (cpu_has_avx2()) return random_mask_avx2(key, first_counter, p, m, n);
#endif
  random_mask_scalar(key, first_counter, p, m, n);
}

namespace {

[[gnu::optimize("no-tree-vectorize")]] void masked_difference_scalar(const uint8_t* bits,
                                                                     const float* a, const float* b,
                                                                     float* delta, size_t n) {
  // As integers (the bit becomes all ones or zero): a select would become a branch.
  for (size_t j = 0; j < n; ++j) {
    const uint32_t d = std::bit_cast<uint32_t>(a[j] - b[j]);
    delta[j] = std::bit_cast<float>(d & (0u - ((uint32_t{bits[j >> 3]} >> (j & 7)) & 1u)));
  }
}

#if defined(__x86_64__)
// Eight elements per mask byte: the byte in every lane, lane l tests bit l.
__attribute__((target("avx2"))) void masked_difference_avx2(const uint8_t* bits, const float* a,
                                                            const float* b, float* delta,
                                                            size_t n) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i byte = _mm256_set1_epi32(bits[j >> 3]);
    const __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bit), lane_bit);
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    _mm256_storeu_ps(delta + j, _mm256_and_ps(d, _mm256_castsi256_ps(keep)));
  }
  masked_difference_scalar(bits + (j >> 3), a + j, b + j, delta + j, n - j);
}
#endif

}  // namespace

void masked_difference(const uint8_t* bits, const float* a, const float* b, float* delta,
                       size_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx2()) return masked_difference_avx2(bits, a, b, delta, n);
#endif
  masked_difference_scalar(bits, a, b, delta, n);
}

namespace {

// {abs_sum(a − b), abs_sum(kept)} where form_kept(start, len, kept) writes the sparsified
// difference of elements [start, start + len). Blocks are a multiple of 16 elements, so abs_sum's
// lanes stay j % 16 (a tail only in the last block).
template <typename FormKept>
std::array<double, 2> kept_abs_sums(const float* a, const float* b, size_t n, FormKept form_kept) {
  constexpr size_t kBlock = 2048;
  alignas(64) float d[kBlock];
  alignas(64) float kept[kBlock];
  double s[kSumLanes] = {};
  double t[kSumLanes] = {};
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t len = std::min(kBlock, n - start);
    subtract(a + start, b + start, d, len);
    form_kept(start, len, kept);
    abs_sum_pair_block(d, kept, len, s, t);
  }
  return {combine_lanes(s), combine_lanes(t)};
}

}  // namespace

std::array<double, 2> masked_abs_sums(const uint8_t* bits, const float* a, const float* b,
                                      size_t n) {
  // kept_abs_sums' blocks start at multiples of 8 elements, so at whole bytes of the mask.
  return kept_abs_sums(a, b, n, [&](size_t start, size_t len, float* kept) {
    masked_difference(bits + start / 8, a + start, b + start, kept, len);
  });
}

std::array<double, 2> random_kept_abs_sums(uint64_t key, uint64_t first_counter, float p,
                                           const float* a, const float* b, size_t n) {
  return kept_abs_sums(a, b, n, [&](size_t start, size_t len, float* kept) {
    keep_random_difference(key, first_counter + start, p, a + start, b + start, kept, len);
  });
}

namespace {

// All ones when `c`, else zero: selections written as bit masks, so that the loops below
// vectorize for AVX2 as well (a `c ? x : 0` there stayed a branch per element, mispredicted on
// random signs). `x & mask` gives x or +0, exactly what the selection gives.
inline int32_t lane_mask(bool c) { return -static_cast<int32_t>(c); }
inline float masked(float x, int32_t mask) {
  return std::bit_cast<float>(std::bit_cast<int32_t>(x) & mask);
}

// elect_sign on elements [0, n) of the arrays (n small enough for L1). The first input
// initializes each sum: 0 + d0 would only turn -0 into +0, and both count as >= 0 below; a first
// term "match ? x : +0" is exactly what 0 + (match ? x : 0) gives, since a match is never ±0.
SMELT_ELEMENTWISE void elect_sign_block(const float* const* d, const float* w, size_t count,
                                        size_t first, size_t n, float* majority, float* mixed,
                                        float* divisor) {
  const float* d0 = d[0] + first;
  for (size_t j = 0; j < n; ++j) majority[j] = d0[j];
  for (size_t i = 1; i < count; ++i) {
    const float* di = d[i] + first;
    for (size_t j = 0; j < n; ++j) majority[j] += di[j];
  }
  for (size_t j = 0; j < n; ++j) majority[j] = majority[j] >= 0.0f ? 1.0f : -1.0f;
  // majority is exactly ±1, so the product is positive iff the signs match and d is nonzero
  // (NaN never matches, as in mergekit).
  {
    const float w0 = w[0];
    for (size_t j = 0; j < n; ++j) {
      const int32_t match = lane_mask(d0[j] * majority[j] > 0.0f);
      mixed[j] = masked(d0[j], match);
      divisor[j] = masked(w0, match);
    }
  }
  for (size_t i = 1; i < count; ++i) {
    const float* di = d[i] + first;
    const float wi = w[i];
    for (size_t j = 0; j < n; ++j) {
      const int32_t match = lane_mask(di[j] * majority[j] > 0.0f);
      mixed[j] = mixed[j] + masked(di[j], match);
      divisor[j] = divisor[j] + masked(wi, match);
    }
  }
  for (size_t j = 0; j < n; ++j) divisor[j] = divisor[j] == 0.0f ? 1.0f : divisor[j];
}

// The same for two inputs in one loop (the common TIES merge of two fine-tunes). With the
// majority sign s = ±1, d·s > 0 is d > 0 for s = 1 and d < 0 for s = −1.
SMELT_ELEMENTWISE void elect_sign_pair(const float* d0, const float* d1, float w0, float w1,
                                       size_t n, float* mixed, float* divisor) {
  for (size_t j = 0; j < n; ++j) {
    const float a = d0[j], b = d1[j];
    const int32_t pos = lane_mask(a + b >= 0.0f);
    const int32_t m0 = (pos & lane_mask(a > 0.0f)) | (~pos & lane_mask(a < 0.0f));
    const int32_t m1 = (pos & lane_mask(b > 0.0f)) | (~pos & lane_mask(b < 0.0f));
    mixed[j] = masked(a, m0) + masked(b, m1);
    const float dv = masked(w0, m0) + masked(w1, m1);
    divisor[j] = dv == 0.0f ? 1.0f : dv;
  }
}

}  // namespace

namespace {

// variance_of_differences on a block of at most kVarianceBlock elements (doubles on the stack).
// `inverse` is 1/count when count is a power of two, else 0: dividing by a power of two and
// multiplying by its inverse give the same bits, and the multiply is several times faster. The
// sums start from the first term rather than from 0.0 + the first term: the two differ only in
// the sign of a zero sum, which no square sees.
constexpr size_t kVarianceBlock = 512;
SMELT_ELEMENTWISE void variance_block(const float* const* x, size_t count, double inverse,
                                      const float* b, size_t first, size_t n, float* var) {
  double sum[kVarianceBlock], squares[kVarianceBlock];
  const float* bb = b + first;
  const float* x0 = x[0] + first;
  for (size_t j = 0; j < n; ++j) sum[j] = static_cast<double>(x0[j] - bb[j]);
  for (size_t i = 1; i < count; ++i) {
    const float* xi = x[i] + first;
    for (size_t j = 0; j < n; ++j) sum[j] += static_cast<double>(xi[j] - bb[j]);
  }
  const double c = static_cast<double>(count);
  if (inverse != 0.0) {
    for (size_t j = 0; j < n; ++j) sum[j] *= inverse;  // the mean
  } else {
    for (size_t j = 0; j < n; ++j) sum[j] /= c;
  }
  for (size_t j = 0; j < n; ++j) {
    const double d = static_cast<double>(x0[j] - bb[j]) - sum[j];
    squares[j] = d * d;
  }
  for (size_t i = 1; i < count; ++i) {
    const float* xi = x[i] + first;
    for (size_t j = 0; j < n; ++j) {
      const double d = static_cast<double>(xi[j] - bb[j]) - sum[j];
      squares[j] += d * d;
    }
  }
  if (inverse != 0.0) {
    for (size_t j = 0; j < n; ++j) var[first + j] = static_cast<float>(squares[j] * inverse);
  } else {
    for (size_t j = 0; j < n; ++j) var[first + j] = static_cast<float>(squares[j] / c);
  }
}

// The same for two task vectors in one loop.
SMELT_ELEMENTWISE void variance_pair(const float* x0, const float* x1, const float* b, size_t n,
                                     float* var) {
  for (size_t j = 0; j < n; ++j) {
    const double d0 = static_cast<double>(x0[j] - b[j]);
    const double d1 = static_cast<double>(x1[j] - b[j]);
    const double mean = (d0 + d1) * 0.5;
    const double a0 = d0 - mean;
    const double a1 = d1 - mean;
    var[j] = static_cast<float>((a0 * a0 + a1 * a1) * 0.5);
  }
}

}  // namespace

void variance_of_differences(const float* const* x, size_t count, const float* b, size_t n,
                             float* var) {
  if (count == 0) {
    std::fill(var, var + n, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  if (count == 2) return variance_pair(x[0], x[1], b, n, var);
  const double inverse = std::has_single_bit(count) ? 1.0 / static_cast<double>(count) : 0.0;
  for (size_t first = 0; first < n; first += kVarianceBlock) {
    variance_block(x, count, inverse, b, first, std::min(kVarianceBlock, n - first), var);
  }
}

SMELT_ELEMENTWISE uint64_t selection_keys(float* v, size_t n) {
  uint64_t nonzero = 0;
  for (size_t j = 0; j < n; ++j) {
    const uint32_t bits = std::bit_cast<uint32_t>(v[j]) & 0x7FFFFFFFu;
    nonzero += bits != 0;
    v[j] = std::bit_cast<float>(std::min(bits, 0x7FFFFFFEu) + 1u);
  }
  return nonzero;
}

SMELT_ELEMENTWISE void keep_where_nonzero(const float* key, float* x, size_t n) {
  for (size_t j = 0; j < n; ++j) x[j] = masked(x[j], lane_mask(key[j] != 0.0f));
}

namespace {

// sign_weighted_merge on a block (sums on the stack).
constexpr size_t kMergeBlock = 1024;
SMELT_ELEMENTWISE void sign_weighted_block(const float* const* tau, const float* w, size_t count,
                                           const float* base, float floor, size_t first, size_t n,
                                           float* out) {
  float sign[kMergeBlock], mixed[kMergeBlock], divisor[kMergeBlock];
  for (size_t j = 0; j < n; ++j) sign[j] = 0.0f;
  for (size_t i = 0; i < count; ++i) {
    const float* t = tau[i] + first;
    for (size_t j = 0; j < n; ++j) sign[j] += t[j];
  }
  for (size_t j = 0; j < n; ++j) {
    sign[j] = sign[j] >= 0.0f ? 1.0f : -1.0f;
    mixed[j] = 0.0f;
    divisor[j] = 0.0f;
  }
  // A match never adds ±0 to a sum that is -0 (sums start at +0, and x + (−x) is +0), so adding
  // the masked +0 of a non-match leaves each sum's bits as the skipped addition would.
  for (size_t i = 0; i < count; ++i) {
    const float* t = tau[i] + first;
    const float wi = w[i];
    for (size_t j = 0; j < n; ++j) {
      const int32_t match = lane_mask(t[j] * sign[j] > 0.0f);
      mixed[j] += masked(t[j] * wi, match);
      divisor[j] += masked(wi, match);
    }
  }
  const float* bb = base + first;
  for (size_t j = 0; j < n; ++j) {
    const float d = divisor[j] < floor ? floor : divisor[j];  // std::max(divisor, floor)
    out[first + j] = bb[j] + mixed[j] / d;
  }
}

}  // namespace

namespace {

// merge_task_pair's loop for one setting of its flags (inlined into each ISA's clone). With
// `Elect` and `Normalize` it runs over blocks in two loops, elect_sign_pair's into a block of
// mixed values and divisors on the stack, then the division and the rest: GCC left the single
// loop scalar.
template <bool Elect, bool Normalize, bool Scaled>
[[gnu::always_inline]] inline void merge_task_pair_loop(const float* d0, const float* d1, float w0,
                                                        float w1, float weight_sum, float lambda,
                                                        const float* base, float* out, size_t n) {
  if constexpr (Elect && Normalize) {
    constexpr size_t kBlock = 1024;
    alignas(64) float mixed[kBlock], divisor[kBlock];
    for (size_t first = 0; first < n; first += kBlock) {
      const size_t m = std::min(kBlock, n - first);
      const float* x0 = d0 + first;
      const float* x1 = d1 + first;
      for (size_t j = 0; j < m; ++j) {
        const float a = w0 * x0[j], b = w1 * x1[j];
        const int32_t pos = lane_mask(a + b >= 0.0f);
        const int32_t m0 = (pos & lane_mask(a > 0.0f)) | (~pos & lane_mask(a < 0.0f));
        const int32_t m1 = (pos & lane_mask(b > 0.0f)) | (~pos & lane_mask(b < 0.0f));
        mixed[j] = masked(a, m0) + masked(b, m1);
        const float dv = masked(w0, m0) + masked(w1, m1);
        divisor[j] = dv == 0.0f ? 1.0f : dv;
      }
      const float* bb = base + first;
      float* o = out + first;
      for (size_t j = 0; j < m; ++j) {
        float r = mixed[j] / divisor[j];
        if constexpr (Scaled) r = lambda * r;
        o[j] = r + bb[j];
      }
    }
    return;
  }
  for (size_t j = 0; j < n; ++j) {
    const float a = w0 * d0[j], b = w1 * d1[j];
    float r;
    if constexpr (Elect) {
      // elect_sign_pair on the weighted values.
      const int32_t pos = lane_mask(a + b >= 0.0f);
      const int32_t m0 = (pos & lane_mask(a > 0.0f)) | (~pos & lane_mask(a < 0.0f));
      const int32_t m1 = (pos & lane_mask(b > 0.0f)) | (~pos & lane_mask(b < 0.0f));
      r = masked(a, m0) + masked(b, m1);
    } else {
      r = a + b;
      if constexpr (Normalize) r = r / weight_sum;
    }
    if constexpr (Scaled) r = lambda * r;
    out[j] = r + base[j];
  }
}

SMELT_ELEMENTWISE void merge_task_pair_kernel(const float* d0, const float* d1, float w0, float w1,
                                              bool elect, bool normalize, float weight_sum,
                                              float lambda, const float* base, float* out,
                                              size_t n) {
  const bool scaled = lambda != 1.0f;
  const int variant = (elect ? 4 : 0) | (normalize ? 2 : 0) | (scaled ? 1 : 0);
  switch (variant) {
    case 0:
      return merge_task_pair_loop<false, false, false>(d0, d1, w0, w1, weight_sum, lambda, base,
                                                       out, n);
    case 1:
      return merge_task_pair_loop<false, false, true>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                      n);
    case 2:
      return merge_task_pair_loop<false, true, false>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                      n);
    case 3:
      return merge_task_pair_loop<false, true, true>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                     n);
    case 4:
      return merge_task_pair_loop<true, false, false>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                      n);
    case 5:
      return merge_task_pair_loop<true, false, true>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                     n);
    case 6:
      return merge_task_pair_loop<true, true, false>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                     n);
    default:
      return merge_task_pair_loop<true, true, true>(d0, d1, w0, w1, weight_sum, lambda, base, out,
                                                    n);
  }
}

}  // namespace

void merge_task_pair(const float* d0, const float* d1, float w0, float w1, bool elect,
                     bool normalize, float weight_sum, float lambda, const float* base, float* out,
                     size_t n) {
  merge_task_pair_kernel(d0, d1, w0, w1, elect, normalize, weight_sum, lambda, base, out, n);
}

void sign_weighted_merge(const float* const* tau, const float* w, size_t count, const float* base,
                         float floor, size_t n, float* out) {
  for (size_t first = 0; first < n; first += kMergeBlock) {
    sign_weighted_block(tau, w, count, base, floor, first, std::min(kMergeBlock, n - first), out);
  }
}

void elect_sign(const float* const* d, const float* w, size_t count, size_t n, float* majority,
                float* mixed, float* divisor) {
  if (count == 0) {
    std::fill(mixed, mixed + n, 0.0f);
    std::fill(divisor, divisor + n, 1.0f);
    return;
  }
  if (count == 2) {
    elect_sign_pair(d[0], d[1], w[0], w[1], n, mixed, divisor);
    return;
  }
  // Blocks that stay in L1 while every input is visited.
  constexpr size_t kBlock = 2048;
  for (size_t first = 0; first < n; first += kBlock) {
    const size_t m = std::min(kBlock, n - first);
    elect_sign_block(d, w, count, first, m, majority + first, mixed + first, divisor + first);
  }
}

namespace {

// Adds a[j] * b[j] to lane j % 16 for j < n (n a multiple of 16), the way dot() does.
SMELT_ELEMENTWISE void dot_lanes(const float* a, const float* b, size_t n, double* s) {
  for (size_t j = 0; j < n; j += kSumLanes) {
    for (size_t l = 0; l < kSumLanes; ++l) s[l] += double{a[j + l]} * double{b[j + l]};
  }
}

// dot()'s tail (into lane 0) and its fixed combining tree.
double dot_finish(const float* a, const float* b, size_t n, double* s) {
  for (size_t j = 0; j < n; ++j) s[0] += double{a[j]} * double{b[j]};
  return combine_lanes(s);
}

}  // namespace

// kSumLanes interleaved accumulators combined by combine_lanes (two AVX-512 or four AVX2
// registers of doubles).
double dot(const float* a, const float* b, size_t n) {
  double s[kSumLanes] = {};
  const size_t body = n / kSumLanes * kSumLanes;
  dot_lanes(a, b, body, s);
  return dot_finish(a + body, b + body, n - body, s);
}

namespace {

// dot_lanes of (a, a), (a, b) and (b, b) in one loop, each element widened once: every lane
// accumulates the same products in the same order as three dot_lanes calls.
SMELT_ELEMENTWISE void gram2_lanes(const float* a, const float* b, size_t n, double* aa, double* ab,
                                   double* bb) {
  for (size_t j = 0; j < n; j += kSumLanes) {
    for (size_t l = 0; l < kSumLanes; ++l) {
      const double x = a[j + l], y = b[j + l];
      aa[l] += x * x;
      ab[l] += x * y;
      bb[l] += y * y;
    }
  }
}

}  // namespace

void gram_upper(const float* const* v, size_t m, size_t n, double* upper) {
  const size_t pairs = m * (m + 1) / 2;
  std::vector<double> lanes(pairs * kSumLanes, 0.0);
  const size_t body = n / kSumLanes * kSumLanes;
  constexpr size_t kBlock = 1024;  // a multiple of kSumLanes: lanes stay j % 16
  for (size_t first = 0; first < body; first += kBlock) {
    const size_t len = std::min(kBlock, body - first);
    if (m == 2) {  // slerp, nuslerp-like pairs, model_stock's two task vectors
      gram2_lanes(v[0] + first, v[1] + first, len, lanes.data(), lanes.data() + kSumLanes,
                  lanes.data() + 2 * kSumLanes);
      continue;
    }
    size_t p = 0;
    for (size_t i = 0; i < m; ++i) {
      for (size_t j = i; j < m; ++j, ++p) {
        dot_lanes(v[i] + first, v[j] + first, len, lanes.data() + p * kSumLanes);
      }
    }
  }
  size_t p = 0;
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = i; j < m; ++j, ++p) {
      upper[p] = dot_finish(v[i] + body, v[j] + body, n - body, lanes.data() + p * kSumLanes);
    }
  }
}

void gram2_of_differences(const float* x, const float* y, const float* b, size_t n, double* upper) {
  double lanes[3 * kSumLanes] = {};
  constexpr size_t kBlock = 1024;  // a multiple of kSumLanes: lanes stay j % 16
  alignas(64) float d[kBlock];
  alignas(64) float e[kBlock];
  const size_t body = n / kSumLanes * kSumLanes;
  for (size_t first = 0; first < body; first += kBlock) {
    const size_t len = std::min(kBlock, body - first);
    subtract(x + first, b + first, d, len);
    subtract(y + first, b + first, e, len);
    gram2_lanes(d, e, len, lanes, lanes + kSumLanes, lanes + 2 * kSumLanes);
  }
  const size_t tail = n - body;
  subtract(x + body, b + body, d, tail);
  subtract(y + body, b + body, e, tail);
  upper[0] = dot_finish(d, d, tail, lanes);
  upper[1] = dot_finish(d, e, tail, lanes + kSumLanes);
  upper[2] = dot_finish(e, e, tail, lanes + 2 * kSumLanes);
}

double abs_sum(const float* x, size_t n) {
  double s[kSumLanes] = {};
  const size_t body = n / kSumLanes * kSumLanes;
  abs_sum_lanes(x, body, s);
  for (size_t j = body; j < n; ++j) s[0] += std::fabs(double{x[j]});
  return combine_lanes(s);
}

}  // namespace smelt::kernels
