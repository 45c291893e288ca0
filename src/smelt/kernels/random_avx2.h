// The sparsifying methods' draws (draw_bits24, random.h) for eight consecutive counters at once
// with AVX2, for the DARE and della kernels (docs/performance.md, "Round 4"). Every step is
// 32-bit integer arithmetic, one lane per counter, so the draws are bit-identical to
// draw_bits24's. The counters of one run must lie in one block of 2^32 (draws_in_one_block):
// callers take the scalar path otherwise. Include only from code compiled for x86-64; call only
// where cpu_has_avx2().
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "smelt/kernels/random.h"

#define SMELT_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

namespace smelt::kernels::avx2 {

// lo · 0x9E3779B9 + a of eight consecutive counters, advanced eight at a time.
struct DrawsX8 {
  __m256i w;
  __m256i step;  // 8 · 0x9E3779B9
  __m256i b;
};

SMELT_AVX2_INLINE DrawsX8 draws_x8_start(uint64_t key, uint64_t first_counter) {
  constexpr uint32_t kGamma = 0x9E3779B9u;
  const DrawKey k = draw_key(key, first_counter >> 32);
  const uint32_t w = static_cast<uint32_t>(first_counter) * kGamma + k.a;
  DrawsX8 d;
  d.w = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(w)),
                         _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                            _mm256_set1_epi32(static_cast<int>(kGamma))));
  d.step = _mm256_set1_epi32(static_cast<int>(8 * kGamma));
  d.b = _mm256_set1_epi32(static_cast<int>(k.b));
  return d;
}

// draw_bits24 of the next eight counters, in order; then advances.
SMELT_AVX2_INLINE __m256i draws_x8_next(DrawsX8& d) {
  __m256i x = d.w;
  d.w = _mm256_add_epi32(d.w, d.step);
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x21F0AAAD));
  x = _mm256_xor_si256(x, _mm256_xor_si256(_mm256_srli_epi32(x, 15), d.b));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x735A2D97));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  return _mm256_srli_epi32(x, 8);
}

// draw_uniform of the next eight counters as floats (exact: 24-bit integers times 2^-24).
SMELT_AVX2_INLINE __m256 draws_x8_uniform(DrawsX8& d) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(draws_x8_next(d)), _mm256_set1_ps(kDrawScale));
}

// The keep mask (all ones where draw_uniform < p, lane by lane) of the next eight counters, for
// threshold = keep_threshold(p).
SMELT_AVX2_INLINE __m256 draws_x8_keep(DrawsX8& d, __m256i threshold) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(threshold, draws_x8_next(d)));
}

}  // namespace smelt::kernels::avx2

#endif
