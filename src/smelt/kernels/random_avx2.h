// random_uniform (random.h) for eight consecutive counters at once with AVX2, for the DARE and
// della kernels on machines without AVX-512DQ (docs/performance.md, "Round 2"). AVX2 has no
// 64-bit multiply, so the generator's two are built from 32-bit ones; every step is integer
// arithmetic and the 24-bit result converts to float exactly, so the draws are bit-identical to
// random_uniform's. Include only from code compiled for x86-64; call only where cpu_has_avx2().
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#define SMELT_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

namespace smelt::kernels::avx2 {

// x · c mod 2^64 in each 64-bit lane, c given as its 32-bit halves (each in every lane).
SMELT_AVX2_INLINE __m256i mul64(__m256i x, __m256i c_lo, __m256i c_hi) {
  const __m256i lo_lo = _mm256_mul_epu32(x, c_lo);
  const __m256i hi_lo = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), c_lo);
  const __m256i lo_hi = _mm256_mul_epu32(x, c_hi);
  return _mm256_add_epi64(lo_lo, _mm256_slli_epi64(_mm256_add_epi64(hi_lo, lo_hi), 32));
}

SMELT_AVX2_INLINE __m256i broadcast64(uint64_t v) {
  return _mm256_set1_epi64x(static_cast<long long>(v));
}

// mix64(w) >> 40 in each 64-bit lane.
SMELT_AVX2_INLINE __m256i mix64_high24(__m256i w) {
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull, kC1 = 0xBF58476D1CE4E5B9ull,
                     kC2 = 0x94D049BB133111EBull;
  __m256i x = _mm256_add_epi64(w, broadcast64(kGamma));
  x = mul64(_mm256_xor_si256(x, _mm256_srli_epi64(x, 30)), broadcast64(kC1 & 0xFFFFFFFFu),
            broadcast64(kC1 >> 32));
  x = mul64(_mm256_xor_si256(x, _mm256_srli_epi64(x, 27)), broadcast64(kC2 & 0xFFFFFFFFu),
            broadcast64(kC2 >> 32));
  x = _mm256_xor_si256(x, _mm256_srli_epi64(x, 31));
  return _mm256_srli_epi64(x, 40);
}

// The Weyl values key + counter · γ of eight consecutive counters, advanced eight at a time.
struct UniformX8 {
  __m256i w0, w1;  // counters c..c+3 and c+4..c+7
  __m256i step;    // 8 · γ
};

SMELT_AVX2_INLINE UniformX8 uniform_x8_start(uint64_t key, uint64_t first_counter) {
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  const uint64_t w = key + first_counter * kGamma;
  UniformX8 u;
  u.w0 = _mm256_set_epi64x(static_cast<long long>(w + 3 * kGamma),
                           static_cast<long long>(w + 2 * kGamma),
                           static_cast<long long>(w + kGamma), static_cast<long long>(w));
  u.w1 = _mm256_add_epi64(u.w0, broadcast64(4 * kGamma));
  u.step = broadcast64(8 * kGamma);
  return u;
}

// random_uniform of the next eight counters, in order, as floats; then advances.
SMELT_AVX2_INLINE __m256 uniform_x8_next(UniformX8& u) {
  const __m256i a = mix64_high24(u.w0), b = mix64_high24(u.w1);
  u.w0 = _mm256_add_epi64(u.w0, u.step);
  u.w1 = _mm256_add_epi64(u.w1, u.step);
  // Low 32 bits of each 64-bit lane: per 128-bit half [a0 a1 b0 b1 | a2 a3 b2 b3], then the
  // 64-bit pairs reordered to a0 a1 a2 a3 b0 b1 b2 b3.
  const __m256 packed =
      _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  const __m256i ordered =
      _mm256_permute4x64_epi64(_mm256_castps_si256(packed), _MM_SHUFFLE(3, 1, 2, 0));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(ordered), _mm256_set1_ps(1.0f / 16777216.0f));
}

// The keep mask (all ones where random_uniform < p, lane by lane) of the next eight counters.
SMELT_AVX2_INLINE __m256 keep_mask_next(UniformX8& u, __m256 p) {
  return _mm256_cmp_ps(uniform_x8_next(u), p, _CMP_LT_OQ);
}

}  // namespace smelt::kernels::avx2

#endif
