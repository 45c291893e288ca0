// Ranking by magnitude with a stable LSD radix sort, and della's rank-dependent keep decision.
#include "smelt/kernels/rank.h"

#include <bit>
#include <vector>

#include "smelt/kernels/cpu_features.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/random_avx2.h"
#include "smelt/kernels/topk.h"

namespace smelt::kernels {
namespace {

// Digits of at most 11 bits: at most three passes over the 31 magnitude bits, and at most 2048
// buckets per digit.
constexpr int kMaxDigitBits = 11;
constexpr int kMaxDigits = 3;

struct RankScratch {
  std::vector<uint32_t> histogram;  // one block of counts (then offsets) per digit
  std::vector<uint64_t> items[2];   // (magnitude_bits << 32) | index
};

// Over the nonzero magnitudes of the group: the bits set in some and clear in some other. Also
// counts the zeros. Release builds are -O2, which does not vectorize this loop; O3 does.
[[gnu::optimize("O3")]] uint32_t varying_bits(const float* x, size_t n, size_t stride,
                                              size_t& zeros) {
  uint32_t any = 0;
  uint32_t all = 0x7FFFFFFFu;
  size_t z = 0;
  if (stride == 1) {
    for (size_t b = 0; b < n; ++b) {
      const uint32_t k = magnitude_bits(x[b]);
      any |= k;
      all &= k != 0 ? k : 0x7FFFFFFFu;
      z += k == 0;
    }
  } else {
    for (size_t b = 0; b < n; ++b) {
      const uint32_t k = magnitude_bits(x[b * stride]);
      any |= k;
      all &= k != 0 ? k : 0x7FFFFFFFu;
      z += k == 0;
    }
  }
  zeros = z;
  return any & ~all;
}

// Reads the group by descending index: a zero gets rank (zeros at higher indices), the others are
// appended to items as (magnitude_bits << 32) | index. Every element is counted in the histogram
// of each of the `Digits` digits (zeros too, in bucket 0). items needs room for one more.
template <int Digits>
void list_and_count(const float* x, size_t n, size_t stride, uint32_t mask, uint32_t* const* h,
                    const int* shift, uint32_t* ranks, uint64_t* items) {
  uint32_t* h0 = h[0];
  uint32_t* h1 = h[1];
  uint32_t* h2 = h[2];
  const int s0 = shift[0];
  const int s1 = shift[1];
  const int s2 = shift[2];
  uint32_t zero_rank = 0;
  size_t i = 0;
  for (size_t b = n; b-- > 0;) {
    const uint32_t k = magnitude_bits(x[b * stride]);
    ranks[b] = zero_rank;  // overwritten later unless k == 0
    zero_rank += k == 0;
    items[i] = (uint64_t{k} << 32) | b;
    i += k != 0;
    if constexpr (Digits >= 1) ++h0[(k >> s0) & mask];
    if constexpr (Digits >= 2) ++h1[(k >> s1) & mask];
    if constexpr (Digits >= 3) ++h2[(k >> s2) & mask];
  }
}

}  // namespace

void rank_by_magnitude(const float* x, size_t n, size_t stride, uint32_t* ranks) {
  size_t zeros = 0;
  const uint32_t varying = varying_bits(x, n, stride, zeros);
  const size_t m = n - zeros;  // nonzero elements
  thread_local RankScratch scratch;

  // Magnitude 0 ranks lowest, so the zeros take ranks [0, zeros) by descending index and the
  // others ranks [zeros, n). The others are sorted on the bits in which they differ: the bits
  // outside [lo, hi) are the same in all of them. [lo, hi) is split into the fewest digits of at
  // most kMaxDigitBits bits, of equal width.
  int digits = 0;
  int width = 0;
  int lo = 0;
  if (varying != 0) {
    lo = std::countr_zero(varying);
    const int span = 32 - std::countl_zero(varying) - lo;
    digits = (span + kMaxDigitBits - 1) / kMaxDigitBits;
    width = (span + digits - 1) / digits;
  }
  const size_t buckets = size_t{1} << width;
  const uint32_t mask = static_cast<uint32_t>(buckets - 1);
  std::vector<uint32_t>& histogram = scratch.histogram;
  histogram.assign(static_cast<size_t>(digits) * buckets, 0);
  uint32_t* h[kMaxDigits] = {};
  int shift[kMaxDigits] = {};
  for (int d = 0; d < digits; ++d) {
    h[d] = histogram.data() + static_cast<size_t>(d) * buckets;
    shift[d] = lo + d * width;
  }

  // Lists the nonzero elements by descending index and counts their digits; zeros get their ranks.
  std::vector<uint64_t>& listed = scratch.items[0];
  listed.resize(m + 1);  // one more: each zero is written past the last item, then overwritten
  uint64_t* items = listed.data();
  switch (digits) {
    case 0:
      list_and_count<0>(x, n, stride, mask, h, shift, ranks, items);
      break;
    case 1:
      list_and_count<1>(x, n, stride, mask, h, shift, ranks, items);
      break;
    case 2:
      list_and_count<2>(x, n, stride, mask, h, shift, ranks, items);
      break;
    default:
      list_and_count<3>(x, n, stride, mask, h, shift, ranks, items);
      break;
  }
  if (digits == 0) {
    // All nonzero magnitudes are equal: they keep their listed order.
    for (size_t i = 0; i < m; ++i) {
      ranks[static_cast<uint32_t>(items[i])] = static_cast<uint32_t>(zeros + i);
    }
    return;
  }
  // Zeros were counted in bucket 0 of every digit.
  for (int d = 0; d < digits; ++d) h[d][0] -= static_cast<uint32_t>(zeros);
  // Exclusive prefix sums, the last digit's starting at `zeros` (its pass writes the ranks). The
  // lowest and highest digits hold bits lo and hi − 1, which vary; a middle digit that is the same
  // in every key (one bucket holds all m) would move nothing, so its pass is dropped.
  int kept = 0;
  for (int d = 0; d < digits; ++d) {
    uint32_t sum = d + 1 == digits ? static_cast<uint32_t>(zeros) : 0;
    bool constant = false;
    for (size_t v = 0; v < buckets; ++v) {
      const uint32_t c = h[d][v];
      constant |= c == m;
      h[d][v] = sum;
      sum += c;
    }
    if (!constant || d == 0 || d + 1 == digits) {
      h[kept] = h[d];
      shift[kept] = shift[d];
      ++kept;
    }
  }
  digits = kept;

  // A stable counting sort per digit, least significant first, so equal keys stay in listed
  // order (descending index). The last pass writes each element's final position as its rank.
  const uint64_t* in = items;
  for (int d = 0; d + 1 < digits; ++d) {
    std::vector<uint64_t>& next = scratch.items[(d + 1) & 1];
    next.resize(m + 1);
    uint64_t* out = next.data();
    uint32_t* off = h[d];
    const int s = shift[d];
    for (size_t i = 0; i < m; ++i) {
      const uint64_t item = in[i];
      out[off[(static_cast<uint32_t>(item >> 32) >> s) & mask]++] = item;
    }
    in = out;
  }
  uint32_t* off = h[digits - 1];
  const int s = shift[digits - 1];
  for (size_t i = 0; i < m; ++i) {
    const uint64_t item = in[i];
    ranks[static_cast<uint32_t>(item)] = off[(static_cast<uint32_t>(item >> 32) >> s) & mask]++;
  }
}

namespace {

// fp-contract must stay off: with FMA, low + (r · 2) · ε could fuse and round differently.
[[gnu::always_inline]] inline void keep_random_ranked_loop(uint64_t key, uint64_t first_counter,
                                                           const uint32_t* ranks, float low,
                                                           float epsilon, float denom, float* x,
                                                           size_t n, size_t stride) {
  if (stride == 1) {
    for (size_t b = 0; b < n; ++b) {
      const float rank_norm = static_cast<float>(ranks[b]) / denom;
      const float p = low + (rank_norm * 2.0f) * epsilon;
      x[b] = kept_or_zero(random_uniform(key, first_counter + b) < p, x[b]);
    }
  } else {
    for (size_t b = 0; b < n; ++b) {
      const float rank_norm = static_cast<float>(ranks[b]) / denom;
      const float p = low + (rank_norm * 2.0f) * epsilon;
      const uint64_t offset = b * stride;
      x[offset] = kept_or_zero(random_uniform(key, first_counter + offset) < p, x[offset]);
    }
  }
}

#if defined(__x86_64__)
// As keep_random (elementwise.cpp): the generator vectorizes well only with AVX-512DQ's vpmullq.
// The uint32 → f32 conversion, the division and the comparison are exact IEEE operations in both.
[[gnu::target("avx512f,avx512dq"), gnu::optimize("O3", "fp-contract=off")]] void
keep_random_ranked_avx512(uint64_t key, uint64_t first_counter, const uint32_t* ranks, float low,
                          float epsilon, float denom, float* x, size_t n, size_t stride) {
  keep_random_ranked_loop(key, first_counter, ranks, low, epsilon, denom, x, n, stride);
}
#endif

[[gnu::optimize("no-tree-vectorize", "fp-contract=off")]] void keep_random_ranked_scalar(
    uint64_t key, uint64_t first_counter, const uint32_t* ranks, float low, float epsilon,
    float denom, float* x, size_t n, size_t stride) {
  keep_random_ranked_loop(key, first_counter, ranks, low, epsilon, denom, x, n, stride);
}

#if defined(__x86_64__)
// stride 1 with the generator eight lanes wide (random_avx2.h): p computed as the loop does (the
// rank converted exactly, a division and two products and a sum, each rounded as in the scalar
// code: no fused multiply-add).
__attribute__((target("avx2"))) void keep_random_ranked_avx2(uint64_t key, uint64_t first_counter,
                                                             const uint32_t* ranks, float low,
                                                             float epsilon, float denom, float* x,
                                                             size_t n) {
  avx2::UniformX8 u = avx2::uniform_x8_start(key, first_counter);
  const __m256 lowv = _mm256_set1_ps(low), epsv = _mm256_set1_ps(epsilon),
               denv = _mm256_set1_ps(denom), two = _mm256_set1_ps(2.0f);
  size_t b = 0;
  for (; b + 8 <= n; b += 8) {
    // Ranks are below 2^31 (positions in a row), so the signed conversion is exact.
    const __m256 rank =
        _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ranks + b)));
    const __m256 rank_norm = _mm256_div_ps(rank, denv);
    const __m256 p = _mm256_add_ps(lowv, _mm256_mul_ps(_mm256_mul_ps(rank_norm, two), epsv));
    const __m256 keep = avx2::keep_mask_next(u, p);
    _mm256_storeu_ps(x + b, _mm256_and_ps(_mm256_loadu_ps(x + b), keep));
  }
  keep_random_ranked_scalar(key, first_counter + b, ranks + b, low, epsilon, denom, x + b, n - b,
                            1);
}
#endif

}  // namespace

void keep_random_ranked(uint64_t key, uint64_t first_counter, const uint32_t* ranks, float low,
                        float epsilon, float denom, float* x, size_t n, size_t stride) {
#if defined(__x86_64__)
  if (cpu_has_avx512dq()) {
    return keep_random_ranked_avx512(key, first_counter, ranks, low, epsilon, denom, x, n, stride);
  }
  if (stride == 1 && cpu_has_avx2()) {
    return keep_random_ranked_avx2(key, first_counter, ranks, low, epsilon, denom, x, n);
  }
#endif
  keep_random_ranked_scalar(key, first_counter, ranks, low, epsilon, denom, x, n, stride);
}

}  // namespace smelt::kernels
