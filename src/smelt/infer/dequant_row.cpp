// Vectorizable dequantization of one weight row (dequant_row.h). Each formula is ggml's reference
// dequantizer's (docs/gguf.md), evaluated in the same order without fused multiply-adds, so the
// results equal kernels::dequantize's bit for bit.
#include "smelt/infer/dequant_row.h"

#include <cstdint>
#include <cstring>

#include "smelt/infer/matmul_isa.h"
#include "smelt/kernels/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>

#endif

namespace smelt::infer {

namespace {

using kernels::GgmlType;

// O3 for the vectorizer's cost model; fp-contract=off keeps d * q - m from becoming an FMA. No
// AVX-512 clone: AVX-512 machines use the explicit kernels below.
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SMELT_DEQUANT \
  __attribute__((target_clones("avx2", "default"), optimize("O3", "fp-contract=off")))
#else
#define SMELT_DEQUANT __attribute__((optimize("O3", "fp-contract=off")))
#endif

// IEEE half to float, exact (subnormals, infinities and NaNs included).
inline float half(const uint8_t* p) {
  const uint32_t h = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8);
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalize.
    exp = 113;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

SMELT_DEQUANT void row_q8_0(const uint8_t* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 34, y += 32) {
    const float d = half(x);
    const auto* q = reinterpret_cast<const int8_t*>(x + 2);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(q[j]) * d;
  }
}

SMELT_DEQUANT void row_q4_0(const uint8_t* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 18, y += 32) {
    const float d = half(x);
    const uint8_t* q = x + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((q[j] & 0xF) - 8) * d;
      y[j + 16] = static_cast<float>((q[j] >> 4) - 8) * d;
    }
  }
}

inline void scale_min(int j, const uint8_t* s, float d, float dmin, float* dl, float* ml) {
  uint8_t sc, mn;
  kernels::get_scale_min_k4(j, s, &sc, &mn);
  *dl = d * static_cast<float>(sc);
  *ml = dmin * static_cast<float>(mn);
}

// Q4_K: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles; Q5_K adds 32 bytes of fifth
// bits before the nibbles.
template <bool kFifth>
inline void row_q45_k(const uint8_t* x, float* y, size_t nb) {
  constexpr size_t kBytes = kFifth ? 176 : 144;
  for (size_t i = 0; i < nb; ++i, x += kBytes) {
    const float d = half(x), dmin = half(x + 2);
    const uint8_t* s = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* q = x + (kFifth ? 48 : 16);
    for (int g = 0; g < 4; ++g, q += 32, y += 64) {
      float d1, m1, d2, m2;
      scale_min(2 * g, s, d, dmin, &d1, &m1);
      scale_min(2 * g + 1, s, d, dmin, &d2, &m2);
      const int b1 = 2 * g, b2 = 2 * g + 1;
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] & 0xF) + (kFifth ? ((qh[l] >> b1) & 1) << 4 : 0);
        y[l] = d1 * static_cast<float>(v) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> 4) + (kFifth ? ((qh[l] >> b2) & 1) << 4 : 0);
        y[32 + l] = d2 * static_cast<float>(v) - m2;
      }
    }
  }
}

SMELT_DEQUANT void row_q4_k(const uint8_t* x, float* y, size_t nb) { row_q45_k<false>(x, y, nb); }
SMELT_DEQUANT void row_q5_k(const uint8_t* x, float* y, size_t nb) { row_q45_k<true>(x, y, nb); }

// Q6_K: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 int8 scales, f16 d. Element
// 32k + l of each 128-half takes nibble (k >> 1) of ql[l + 32 (k & 1)] and bit pair k of qh[l];
// its scale is d * scales[2k + l / 16], applied as (d * scale) * q.
SMELT_DEQUANT void row_q6_k(const uint8_t* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 210) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(x + 192);
    const float d = half(x + 208);
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int k = 0; k < 4; ++k) {
        const uint8_t* lo = ql + 32 * (k & 1);
        const int shift = 4 * (k >> 1);
        for (int half16 = 0; half16 < 2; ++half16) {
          const float ds = d * static_cast<float>(sc[2 * k + half16]);
          for (int l = 16 * half16; l < 16 * half16 + 16; ++l) {
            const int v = (((lo[l] >> shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
            y[32 * k + l] = ds * static_cast<float>(v);
          }
        }
      }
    }
  }
}

#if defined(__x86_64__)
// AVX-512 versions: 16 elements per step, each widened from bytes to 32-bit lanes; the same
// products and differences as above, so the same bits.
#define SMELT_AVX512 [[gnu::target("avx512f"), gnu::optimize("O3")]]

SMELT_AVX512 inline __m512i bytes16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

SMELT_AVX512 void row_q8_0_avx512(const uint8_t* x, float* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 34, y += 32) {
    const __m512 d = _mm512_set1_ps(half(x));
    for (int h = 0; h < 2; ++h) {
      const __m512i q =
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + 2 + 16 * h)));
      _mm512_storeu_ps(y + 16 * h, _mm512_mul_ps(_mm512_cvtepi32_ps(q), d));
    }
  }
}

SMELT_AVX512 void row_q4_0_avx512(const uint8_t* x, float* y, size_t nb) {
  const __m512i mask = _mm512_set1_epi32(0xF), eight = _mm512_set1_epi32(8);
  for (size_t i = 0; i < nb; ++i, x += 18, y += 32) {
    const __m512 d = _mm512_set1_ps(half(x));
    const __m512i q = bytes16(x + 2);
    const __m512i lo = _mm512_sub_epi32(_mm512_and_si512(q, mask), eight);
    const __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), eight);
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
  }
}

template <bool kFifth>
SMELT_AVX512 void row_q45_k_avx512(const uint8_t* x, float* y, size_t nb) {
  constexpr size_t kBytes = kFifth ? 176 : 144;
  const __m512i mask = _mm512_set1_epi32(0xF), one = _mm512_set1_epi32(1);
  for (size_t i = 0; i < nb; ++i, x += kBytes) {
    const float d = half(x), dmin = half(x + 2);
    const uint8_t* s = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* q = x + (kFifth ? 48 : 16);
    for (int g = 0; g < 4; ++g, q += 32, y += 64) {
      float d1, m1, d2, m2;
      scale_min(2 * g, s, d, dmin, &d1, &m1);
      scale_min(2 * g + 1, s, d, dmin, &d2, &m2);
      for (int h = 0; h < 2; ++h) {
        const __m512i b = bytes16(q + 16 * h);
        __m512i lo = _mm512_and_si512(b, mask), hi = _mm512_srli_epi32(b, 4);
        if constexpr (kFifth) {
          const __m512i e = bytes16(qh + 16 * h);
          lo = _mm512_add_epi32(
              lo, _mm512_slli_epi32(
                      _mm512_and_si512(_mm512_srl_epi32(e, _mm_cvtsi32_si128(2 * g)), one), 4));
          hi = _mm512_add_epi32(
              hi, _mm512_slli_epi32(
                      _mm512_and_si512(_mm512_srl_epi32(e, _mm_cvtsi32_si128(2 * g + 1)), one), 4));
        }
        _mm512_storeu_ps(y + 16 * h,
                         _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d1), _mm512_cvtepi32_ps(lo)),
                                       _mm512_set1_ps(m1)));
        _mm512_storeu_ps(y + 32 + 16 * h,
                         _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d2), _mm512_cvtepi32_ps(hi)),
                                       _mm512_set1_ps(m2)));
      }
    }
  }
}

SMELT_AVX512 void row_q6_k_avx512(const uint8_t* x, float* y, size_t nb) {
  const __m512i mask = _mm512_set1_epi32(0xF), three = _mm512_set1_epi32(3),
                bias = _mm512_set1_epi32(32);
  for (size_t i = 0; i < nb; ++i, x += 210) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(x + 192);
    const float d = half(x + 208);
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int half16 = 0; half16 < 2; ++half16) {
        const __m512i l0 = bytes16(ql + 16 * half16), l1 = bytes16(ql + 32 + 16 * half16);
        const __m512i hb = bytes16(qh + 16 * half16);
        for (int k = 0; k < 4; ++k) {
          const __m512i lo = (k & 1) ? l1 : l0;
          const __m512i nib =
              _mm512_and_si512(_mm512_srl_epi32(lo, _mm_cvtsi32_si128(4 * (k >> 1))), mask);
          const __m512i top = _mm512_slli_epi32(
              _mm512_and_si512(_mm512_srl_epi32(hb, _mm_cvtsi32_si128(2 * k)), three), 4);
          const __m512i v = _mm512_sub_epi32(_mm512_or_si512(nib, top), bias);
          const float ds = d * static_cast<float>(sc[2 * k + half16]);
          _mm512_storeu_ps(y + 32 * k + 16 * half16,
                           _mm512_mul_ps(_mm512_set1_ps(ds), _mm512_cvtepi32_ps(v)));
        }
      }
    }
  }
}

bool use_avx512() { return matmul_isa() == MatmulIsa::kAvx512; }
#endif

}  // namespace

void dequant_row(GgmlType type, const void* src, float* dst, size_t n) {
  const auto* x = static_cast<const uint8_t*>(src);
#if defined(__x86_64__)
  if (use_avx512()) {
    switch (type) {
      case GgmlType::kQ8_0:
        return row_q8_0_avx512(x, dst, n / 32);
      case GgmlType::kQ4_0:
        return row_q4_0_avx512(x, dst, n / 32);
      case GgmlType::kQ4_K:
        return row_q45_k_avx512<false>(x, dst, n / 256);
      case GgmlType::kQ5_K:
        return row_q45_k_avx512<true>(x, dst, n / 256);
      case GgmlType::kQ6_K:
        return row_q6_k_avx512(x, dst, n / 256);
      default:
        break;
    }
  }
#endif
  switch (type) {
    case GgmlType::kQ8_0:
      return row_q8_0(x, dst, n / 32);
    case GgmlType::kQ4_0:
      return row_q4_0(x, dst, n / 32);
    case GgmlType::kQ4_K:
      return row_q4_k(x, dst, n / 256);
    case GgmlType::kQ5_K:
      return row_q5_k(x, dst, n / 256);
    case GgmlType::kQ6_K:
      return row_q6_k(x, dst, n / 256);
    default:
      kernels::dequantize(type, src, dst, n);
  }
}

}  // namespace smelt::infer
