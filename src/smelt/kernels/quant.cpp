// Block (de)quantization, ported from the loops of ggml-quants.c so that every
// float operation happens in the same order and precision as in ggml's reference code.
#include "smelt/kernels/quant.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "smelt/error.h"
#include "smelt/kernels/convert.h"

// ggml-base (which holds the reference quantizers) is compiled for plain x86-64, so none of its
// a*b+c expressions are fused. Forbid contraction here too, whatever -march this file gets, or
// last-bit differences would change rounding decisions and thus whole quants. The dynamic cost
// model lets -O2 vectorize the block loops (about 3x faster dequantization); vectorizing
// elementwise float code does not change its results.
#pragma GCC optimize("fp-contract=off", "vect-cost-model=dynamic")

namespace smelt::kernels {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF blocks are little-endian; a big-endian port needs byte swaps here");

constexpr int kQK = 32;    // elements per block of the legacy types (Q4_0 ... Q8_0)
constexpr int kQKK = 256;  // elements per K-quant super-block
constexpr float kGroupMaxEps = 1e-15f;

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

inline void put_f16(uint8_t* p, float f) {
  const uint16_t h = ggml_f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

// What x86's cvttss2si gives, which is what ggml's (int) casts of floats compile to: truncation,
// and INT32_MIN for NaN or out-of-range values (where a plain C++ cast is undefined). Written
// as a select so that loops using it still vectorize.
inline int32_t trunc_to_int(float v) {
  const bool in_range = v > -2147483904.0f && v < 2147483648.0f;
  return static_cast<int32_t>(in_range ? v : -2147483648.0f);
}

// Low byte of the truncated value, as a float -> int8 cast compiles (cvttss2si, keep al).
inline int8_t trunc_to_int8(float v) {
  return static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(trunc_to_int(v)) & 0xFF));
}

// (int8_t)roundf(v) as ggml's Q8_0 computes it: round half away from zero, then the low byte
// (0 for NaN and infinities, whose conversion gives INT32_MIN). Exact: for |v| < 2^23 the
// fraction v - trunc(v) is computed without rounding, and larger floats are integers.
inline int8_t round_away_to_int8(float v) {
  const bool in_range = v > -2147483904.0f && v < 2147483648.0f;
  const float w = in_range ? v : -2147483648.0f;
  const auto t = static_cast<int32_t>(w);
  const float frac = w - static_cast<float>(t);
  const int32_t r = t + (frac >= 0.5f ? 1 : 0) - (frac <= -0.5f ? 1 : 0);
  return static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(r) & 0xFF));
}

// Round to nearest, ties to even, by adding 1.5*2^23 and reading the mantissa (ggml's
// nearest_int; exact for |v| < 2^22, garbage but defined beyond, as in ggml).
inline int nearest_int(float v) {
  const float biased = v + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

// ggml's MAX/MIN macros (a > b ? a : b), whose NaN behaviour differs from std::max.
template <typename T>
inline T gmax(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
inline T gmin(T a, T b) {
  return a < b ? a : b;
}

// ----------------------------------------------------------------------------------------------
// Dequantization: one function per type, each over whole blocks.

__attribute__((target_clones("avx2", "default"))) void dequant_q8_0(const uint8_t* x, float* y,
                                                                    size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 34, y += kQK) {
    const float d = f16(x);
    const auto* qs = reinterpret_cast<const int8_t*>(x + 2);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

__attribute__((target_clones("avx2", "default"))) void dequant_q4_0(const uint8_t* x, float* y,
                                                                    size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 18, y += kQK) {
    const float d = f16(x);
    const uint8_t* qs = x + 2;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

__attribute__((target_clones("avx2", "default"))) void dequant_q4_1(const uint8_t* x, float* y,
                                                                    size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 20, y += kQK) {
    const float d = f16(x);
    const float m = f16(x + 2);
    const uint8_t* qs = x + 4;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// Q5_0 (has_min false, block 22 bytes) and Q5_1 (has_min true, 24 bytes) share the bit layout.
template <bool kHasMin>
void dequant_q5(const uint8_t* x, float* y, size_t nb) {
  constexpr size_t kBytes = kHasMin ? 24 : 22;
  for (size_t i = 0; i < nb; ++i, x += kBytes, y += kQK) {
    const float d = f16(x);
    const float m = kHasMin ? f16(x + 2) : 0.0f;
    const uint8_t* p = x + (kHasMin ? 4 : 2);
    uint32_t qh;
    std::memcpy(&qh, p, 4);
    const uint8_t* qs = p + 4;
    for (int j = 0; j < kQK / 2; ++j) {
      const int h0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int h1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      if constexpr (kHasMin) {
        y[j] = static_cast<float>((qs[j] & 0x0F) | h0) * d + m;
        y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | h1) * d + m;
      } else {
        y[j] = static_cast<float>(((qs[j] & 0x0F) | h0) - 16) * d;
        y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | h1) - 16) * d;
      }
    }
  }
}

__attribute__((target_clones("avx2", "default"))) void dequant_q5_0(const uint8_t* x, float* y,
                                                                    size_t nb) {
  dequant_q5<false>(x, y, nb);
}

__attribute__((target_clones("avx2", "default"))) void dequant_q5_1(const uint8_t* x, float* y,
                                                                    size_t nb) {
  dequant_q5<true>(x, y, nb);
}

// Q2_K block: scales[16] (low nibble scale, high nibble min), qs[64], f16 d, f16 dmin.
__attribute__((target_clones("avx2", "default"))) void dequant_q2_k(const uint8_t* x, float* y,
                                                                    size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 84) {
    const uint8_t* scales = x;
    const uint8_t* q = x + 16;
    const float d = f16(x + 80);
    const float dmin = f16(x + 82);
    int is = 0;
    for (int n = 0; n < kQKK; n += 128) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = scales[is++];
          const float dl = d * static_cast<float>(sc & 0xF);
          const float ml = dmin * static_cast<float>(sc >> 4);
          const uint8_t* qq = q + 16 * half;
          for (int l = 0; l < 16; ++l) {
            *y++ = dl * static_cast<float>((qq[l] >> shift) & 3) - ml;
          }
        }
      }
      q += 32;
    }
  }
}

// Q3_K block: hmask[32], qs[64], scales[12] (16 signed 6-bit scales, biased by 32), f16 d.
__attribute__((target_clones("avx2", "default"))) void dequant_q3_k(const uint8_t* x, float* y,
                                                                    size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 110) {
    const uint8_t* hm = x;
    const uint8_t* q = x + 32;
    const uint8_t* b = x + 96;
    const float d_all = f16(x + 108);
    int scale[16];
    for (int j = 0; j < 16; ++j) {
      const int low4 = j < 8 ? (b[j] & 0xF) : (b[j - 8] >> 4);
      const int high2 = (b[8 + (j % 4)] >> (2 * (j / 4))) & 3;
      scale[j] = (low4 | (high2 << 4)) - 32;
    }
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < kQKK; n += 128) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const float dl = d_all * static_cast<float>(scale[is++]);
          const int o = 16 * half;
          for (int l = 0; l < 16; ++l) {
            const int v = ((q[l + o] >> shift) & 3) - ((hm[l + o] & m) ? 0 : 4);
            *y++ = dl * static_cast<float>(v);
          }
        }
        m = static_cast<uint8_t>(m << 1);
      }
      q += 32;
    }
  }
}

// Q4_K block: f16 d, f16 dmin, scales[12], qs[128]; Q5_K adds qh[32] before qs.
template <bool kFifthBit>
void dequant_q45_k(const uint8_t* x, float* y, size_t nb) {
  constexpr size_t kBytes = kFifthBit ? 176 : 144;
  for (size_t i = 0; i < nb; ++i, x += kBytes) {
    const float d = f16(x);
    const float dmin = f16(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* q = x + (kFifthBit ? 48 : 16);
    uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < 8; is += 2) {
      uint8_t sc, mn;
      get_scale_min_k4(is, scales, &sc, &mn);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = dmin * static_cast<float>(mn);
      get_scale_min_k4(is + 1, scales, &sc, &mn);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = dmin * static_cast<float>(mn);
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] & 0xF) + (kFifthBit && (qh[l] & u1) ? 16 : 0);
        *y++ = d1 * static_cast<float>(v) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> 4) + (kFifthBit && (qh[l] & u2) ? 16 : 0);
        *y++ = d2 * static_cast<float>(v) - m2;
      }
      q += 32;
      u1 = static_cast<uint8_t>(u1 << 2);
      u2 = static_cast<uint8_t>(u2 << 2);
    }
  }
}

__attribute__((target_clones("avx2", "default"))) void dequant_q4_k(const uint8_t* x, float* y,
                                                                    size_t nb) {
  dequant_q45_k<false>(x, y, nb);
}

__attribute__((target_clones("avx2", "default"))) void dequant_q5_k(const uint8_t* x, float* y,
                                                                    size_t nb) {
  dequant_q45_k<true>(x, y, nb);
}

// Q6_K block: ql[128], qh[64], int8 scales[16], f16 d.
__attribute__((target_clones("avx2", "default"))) void dequant_q6_k(const uint8_t* x, float* y,
                                                                    size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += 210) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(x + 192);
    const float d = f16(x + 208);
    for (int n = 0; n < kQKK; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        // (d * scale) * q, left to right as in ggml.
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Quantization of the legacy 32-element types.

void quant_q8_0(const float* x, uint8_t* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK, y += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = gmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(y, d);
    // The quants use the f32 scale, not the f16-rounded one stored above (as ggml does).
    for (int j = 0; j < kQK; ++j) {
      y[2 + j] = static_cast<uint8_t>(round_away_to_int8(x[j] * id));
    }
  }
}

void quant_q4_0(const float* x, uint8_t* y, size_t nb) {
  for (size_t i = 0; i < nb; ++i, x += kQK, y += 18) {
    // The signed value of largest magnitude (the first one on ties) maps to -8.
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(y, d);
    for (int j = 0; j < kQK / 2; ++j) {
      // x*id is rounded to f32 before adding 8.5 (no FMA), then truncated: ggml's rounding.
      const float x0 = x[j] * id;
      const float x1 = x[j + kQK / 2] * id;
      const auto xi0 = static_cast<uint8_t>(gmin<int>(15, trunc_to_int8(x0 + 8.5f)));
      const auto xi1 = static_cast<uint8_t>(gmin<int>(15, trunc_to_int8(x1 + 8.5f)));
      y[2 + j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

// ----------------------------------------------------------------------------------------------
// K-quant scale searches (make_qkx2_quants, make_qx_quants), operation for operation.

// Symmetric fit x ≈ scale*(L - nmax), L in [0, 2*nmax), weights x^2 (ggml's rmse_type 1 without
// importance), trying 18 inverse scales around -nmax/max. Returns scale.
float make_qx_quants_rmse1(int n, int nmax, const float* x, int8_t* L) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = gmax(-nmax, gmin(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    const auto fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = gmax(-nmax, gmin(nmax - 1, l));
      const float w = x[i] * x[i];
      const auto fl = static_cast<float>(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + gmax(-nmax, gmin(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// make_qkx2_quants for the eight 32-element sub-blocks of one Q4_K/Q5_K super-block at once,
// together with their weights (sqrt(mean x^2) + |x|, as quantize_row_q{4,5}_K_ref computes them).
// Sub-block j is SIMD lane j: every lane performs exactly the scalar sequence of float
// operations (loops run over elements outside, lanes inside), and the scalar branches become
// per-lane selects, so the results are bit-identical to the scalar search while the sweep of
// 16-21 candidate scales runs about eight times faster. Outputs: L[32j + i] (levels),
// scales[j], and mins[j] (ggml's the_min, i.e. -min).
__attribute__((target_clones("avx2", "default"))) void fit_sub_blocks_x8(const float* x, int nmax,
                                                                         float rmin, float rdelta,
                                                                         int nstep, uint8_t* L,
                                                                         float* scales,
                                                                         float* mins) {
  constexpr int kN = 32;
  constexpr int kLanes = 8;
  float xt[kN][kLanes], wt[kN][kLanes];
  int32_t lt[kN][kLanes], laux[kN][kLanes];
  for (int i = 0; i < kN; ++i) {
    for (int j = 0; j < kLanes; ++j) xt[i][j] = x[kN * j + i];
  }
  float sum_x2[kLanes] = {}, av_x[kLanes];
  for (int i = 0; i < kN; ++i) {
    for (int j = 0; j < kLanes; ++j) sum_x2[j] += xt[i][j] * xt[i][j];
  }
  for (int j = 0; j < kLanes; ++j) av_x[j] = std::sqrt(sum_x2[j] / 32);
  for (int i = 0; i < kN; ++i) {
    for (int j = 0; j < kLanes; ++j) wt[i][j] = av_x[j] + std::fabs(xt[i][j]);
  }

  float min[kLanes], max[kLanes], sum_w[kLanes], sum_x[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    min[j] = max[j] = xt[0][j];
    sum_w[j] = wt[0][j];
    sum_x[j] = sum_w[j] * xt[0][j];
  }
  for (int i = 1; i < kN; ++i) {
    for (int j = 0; j < kLanes; ++j) {
      min[j] = xt[i][j] < min[j] ? xt[i][j] : min[j];
      max[j] = xt[i][j] > max[j] ? xt[i][j] : max[j];
      sum_w[j] += wt[i][j];
      sum_x[j] += wt[i][j] * xt[i][j];
    }
  }
  const auto fnmax = static_cast<float>(nmax);
  float range[kLanes], scale[kLanes], best_error[kLanes] = {}, constant_min[kLanes];
  bool constant[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    min[j] = min[j] > 0 ? 0.0f : min[j];
    // ggml returns early for a constant sub-block (max == min after the clamp); here its lane
    // runs along with the others and its result is replaced at the end.
    constant[j] = max[j] == min[j];
    constant_min[j] = min[j];
    range[j] = max[j] - min[j];
    const float iscale = fnmax / range[j];
    scale[j] = 1 / iscale;
  }
  for (int i = 0; i < kN; ++i) {
    for (int j = 0; j < kLanes; ++j) {
      const float iscale = fnmax / range[j];
      const int l = nearest_int(iscale * (xt[i][j] - min[j]));
      lt[i][j] = gmax(0, gmin(nmax, l));
      float diff = scale[j] * static_cast<float>(lt[i][j]) + min[j] - xt[i][j];
      diff = diff * diff;  // ggml's use_mad is false for Q4_K and Q5_K
      best_error[j] += wt[i][j] * diff;
    }
  }
  for (int is = 0; is <= nstep; ++is) {
    const float numer = rmin + rdelta * static_cast<float>(is) + fnmax;
    float sum_l[kLanes] = {}, sum_l2[kLanes] = {}, sum_xl[kLanes] = {};
    float iscale[kLanes];
    // ggml divides by max - min with the min of the best fit so far, not the data minimum.
    for (int j = 0; j < kLanes; ++j) iscale[j] = numer / (max[j] - min[j]);
    for (int i = 0; i < kN; ++i) {
      for (int j = 0; j < kLanes; ++j) {
        const int l = gmax(0, gmin(nmax, nearest_int(iscale[j] * (xt[i][j] - min[j]))));
        laux[i][j] = l;
        const float w = wt[i][j];
        const auto fl = static_cast<float>(l);
        sum_l[j] += w * fl;
        sum_l2[j] += w * fl * fl;
        sum_xl[j] += w * fl * xt[i][j];
      }
    }
    float this_scale[kLanes], this_min[kLanes], cur_error[kLanes] = {};
    bool solvable[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      const float D = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
      solvable[j] = D > 0;
      const float s = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / D;
      const float m = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / D;
      // A positive min is replaced by 0 and the scale refitted without it.
      this_scale[j] = m > 0 ? sum_xl[j] / sum_l2[j] : s;
      this_min[j] = m > 0 ? 0.0f : m;
    }
    for (int i = 0; i < kN; ++i) {
      for (int j = 0; j < kLanes; ++j) {
        float diff = this_scale[j] * static_cast<float>(laux[i][j]) + this_min[j] - xt[i][j];
        diff = diff * diff;
        cur_error[j] += wt[i][j] * diff;
      }
    }
    bool take[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      take[j] = solvable[j] && cur_error[j] < best_error[j];
      best_error[j] = take[j] ? cur_error[j] : best_error[j];
      scale[j] = take[j] ? this_scale[j] : scale[j];
      min[j] = take[j] ? this_min[j] : min[j];
    }
    for (int i = 0; i < kN; ++i) {
      for (int j = 0; j < kLanes; ++j) lt[i][j] = take[j] ? laux[i][j] : lt[i][j];
    }
  }
  for (int j = 0; j < kLanes; ++j) {
    scales[j] = constant[j] ? 0.0f : scale[j];
    mins[j] = -(constant[j] ? constant_min[j] : min[j]);
    for (int i = 0; i < kN; ++i) L[kN * j + i] = static_cast<uint8_t>(constant[j] ? 0 : lt[i][j]);
  }
}

// Q4_K (kBits 4) and Q5_K (kBits 5): eight 32-element sub-blocks, each with a 6-bit scale and
// min relative to the f16 super-block d and dmin.
template <int kBits>
void quant_q45_k(const float* x, uint8_t* y, size_t nb) {
  constexpr int kNmax = (1 << kBits) - 1;
  constexpr float kRmin = kBits == 4 ? -1.f : -0.5f;
  constexpr int kSteps = kBits == 4 ? 20 : 15;
  constexpr size_t kBytes = kBits == 4 ? 144 : 176;
  uint8_t L[kQKK];
  float mins[8];
  float scales[8];
  for (size_t i = 0; i < nb; ++i, x += kQKK, y += kBytes) {
    std::memset(y, 0, kBytes);
    float max_scale = 0;
    float max_min = 0;
    fit_sub_blocks_x8(x, kNmax, kRmin, 0.1f, kSteps, L, scales, mins);
    for (int j = 0; j < 8; ++j) {
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; ++j) {
      // ggml stores nearest_int into a uint8_t before clamping: keep that truncation.
      ls[j] = gmin<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
      lm[j] = gmin<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
    }
    uint8_t* packed = y + 4;
    pack_scale_min_k4(ls, lm, packed);
    put_f16(y, max_scale / 63.f);
    put_f16(y + 2, max_min / 63.f);
    // Requantize against the scales as stored (f16 d times 6-bit factors).
    const float d_all = f16(y);
    const float dmin_all = f16(y + 2);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      get_scale_min_k4(j, packed, &sc, &m);
      const float d = d_all * static_cast<float>(sc);
      if (d == 0.0f) continue;
      const float dm = dmin_all * static_cast<float>(m);
      for (int ii = 0; ii < 32; ++ii) {
        const int l = nearest_int((x[32 * j + ii] + dm) / d);
        L[32 * j + ii] = static_cast<uint8_t>(gmax(0, gmin(kNmax, l)));
      }
    }
    if constexpr (kBits == 4) {
      uint8_t* q = y + 16;
      for (int j = 0; j < kQKK; j += 64, q += 32) {
        for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      }
    } else {
      uint8_t* qh = y + 16;  // zeroed above
      uint8_t* ql = y + 48;
      uint8_t m1 = 1, m2 = 2;
      for (int n = 0; n < kQKK; n += 64, ql += 32) {
        for (int j = 0; j < 32; ++j) {
          int l1 = L[n + j];
          if (l1 > 15) {
            l1 -= 16;
            qh[j] |= m1;
          }
          int l2 = L[n + j + 32];
          if (l2 > 15) {
            l2 -= 16;
            qh[j] |= m2;
          }
          ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
        }
        m1 = static_cast<uint8_t>(m1 << 2);
        m2 = static_cast<uint8_t>(m2 << 2);
      }
    }
  }
}

// Q6_K: sixteen 16-element sub-blocks with int8 scales relative to one f16 d; 6-bit quants.
void quant_q6_k(const float* x, uint8_t* y, size_t nb) {
  int8_t L[kQKK];
  float scales[16];
  for (size_t i = 0; i < nb; ++i, x += kQKK, y += 210) {
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      const float scale = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      const float abs_scale = std::fabs(scale);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scale;
      }
    }
    std::memset(y, 0, 210);
    if (max_abs_scale < kGroupMaxEps) continue;  // all-zero block (d = +0)
    uint8_t* ql = y;
    uint8_t* qh = y + 128;
    auto* sc = reinterpret_cast<int8_t*>(y + 192);
    const float iscale = -128.f / max_scale;
    put_f16(y + 208, 1 / iscale);
    for (int ib = 0; ib < 16; ++ib) {
      sc[ib] = static_cast<int8_t>(gmin(127, nearest_int(iscale * scales[ib])));
    }
    const float d_all = f16(y + 208);
    for (int j = 0; j < 16; ++j) {
      const float d = d_all * static_cast<float>(sc[j]);
      if (d == 0.0f) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int(x[16 * j + ii] / d);
        l = gmax(-32, gmin(31, l));
        L[16 * j + ii] = static_cast<int8_t>(l + 32);
      }
    }
    for (int j = 0; j < kQKK; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const int a = L[j + l], b = L[j + l + 32], c = L[j + l + 64], e = L[j + l + 96];
        ql[l] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((b & 0xF) | ((e & 0xF) << 4));
        qh[l] =
            static_cast<uint8_t>((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
      }
    }
  }
}

const GgmlTypeTraits& traits_or_fail(GgmlType type, const char* what) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  if (t == nullptr) fail("{}: unknown ggml type {}", what, static_cast<int32_t>(type));
  return *t;
}

size_t whole_blocks(const GgmlTypeTraits& t, size_t n, const char* what) {
  if (n % t.block_elems != 0) {
    fail("{} {}: {} elements is not a whole number of {}-element blocks", what, t.name, n,
         t.block_elems);
  }
  return n / t.block_elems;
}

}  // namespace

void dequantize(GgmlType type, const void* blocks, float* dst, size_t n) {
  const GgmlTypeTraits& t = traits_or_fail(type, "dequantize");
  if (!t.can_dequantize) {
    fail("dequantizing ggml type {} ({}) is not supported by smelt", t.name, t.id);
  }
  const size_t nb = whole_blocks(t, n, "dequantize");
  const auto* x = static_cast<const uint8_t*>(blocks);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, blocks, n * sizeof(float));
      return;
    case GgmlType::kF16:
      to_f32(DType::kF16, blocks, dst, n);
      return;
    case GgmlType::kBF16:
      to_f32(DType::kBF16, blocks, dst, n);
      return;
    case GgmlType::kF64:
      to_f32(DType::kF64, blocks, dst, n);
      return;
    case GgmlType::kQ4_0:
      dequant_q4_0(x, dst, nb);
      return;
    case GgmlType::kQ4_1:
      dequant_q4_1(x, dst, nb);
      return;
    case GgmlType::kQ5_0:
      dequant_q5_0(x, dst, nb);
      return;
    case GgmlType::kQ5_1:
      dequant_q5_1(x, dst, nb);
      return;
    case GgmlType::kQ8_0:
      dequant_q8_0(x, dst, nb);
      return;
    case GgmlType::kQ2_K:
      dequant_q2_k(x, dst, nb);
      return;
    case GgmlType::kQ3_K:
      dequant_q3_k(x, dst, nb);
      return;
    case GgmlType::kQ4_K:
      dequant_q4_k(x, dst, nb);
      return;
    case GgmlType::kQ5_K:
      dequant_q5_k(x, dst, nb);
      return;
    case GgmlType::kQ6_K:
      dequant_q6_k(x, dst, nb);
      return;
    default:
      break;
  }
  fail("dequantizing ggml type {} ({}) is not supported by smelt", t.name, t.id);
}

void quantize(GgmlType type, const float* src, void* blocks, size_t n) {
  const GgmlTypeTraits& t = traits_or_fail(type, "quantize");
  if (!t.can_quantize) {
    fail(
        "quantizing to ggml type {} ({}) is not supported by smelt (supported: f32, f16, bf16, "
        "q8_0, q4_0, q4_K, q5_K, q6_K)",
        t.name, t.id);
  }
  const size_t nb = whole_blocks(t, n, "quantize to");
  auto* y = static_cast<uint8_t*>(blocks);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(blocks, src, n * sizeof(float));
      return;
    case GgmlType::kF16:
      from_f32(DType::kF16, src, blocks, n);
      return;
    case GgmlType::kBF16:
      from_f32(DType::kBF16, src, blocks, n);
      return;
    case GgmlType::kQ8_0:
      quant_q8_0(src, y, nb);
      return;
    case GgmlType::kQ4_0:
      quant_q4_0(src, y, nb);
      return;
    case GgmlType::kQ4_K:
      quant_q45_k<4>(src, y, nb);
      return;
    case GgmlType::kQ5_K:
      quant_q45_k<5>(src, y, nb);
      return;
    case GgmlType::kQ6_K:
      quant_q6_k(src, y, nb);
      return;
    default:
      break;
  }
  fail("quantizing to ggml type {} ({}) is not supported by smelt", t.name, t.id);
}

void get_scale_min_k4(int j, const uint8_t* packed, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = packed[j] & 63;
    *min = packed[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}

void pack_scale_min_k4(const uint8_t scales[8], const uint8_t mins[8], uint8_t packed[12]) {
  // Bytes 0-3: scales 0-3 (low 6 bits) + top 2 bits of scales 4-7; bytes 4-7 likewise for mins;
  // bytes 8-11: low nibbles of scales 4-7 and mins 4-7.
  std::memset(packed, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = scales[j], lm = mins[j];
    if (j < 4) {
      packed[j] = ls;
      packed[j + 4] = lm;
    } else {
      packed[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
      packed[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      packed[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
}

uint16_t ggml_f32_to_f16(float f) {
  if (std::isnan(f)) return std::signbit(f) ? 0xFE00 : 0x7E00;
  return f32_to_f16(f);
}

}  // namespace smelt::kernels
