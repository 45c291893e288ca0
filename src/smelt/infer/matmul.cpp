// The matrix products of the forward pass (docs/inference.md, "Matrix products and threads").
//
// Two regimes:
//  * few tokens (generation, n_tokens < kGemmMinTokens): each weight row is converted to f32 in a
//    small per-thread buffer (kernels::dequantize, or read in place for F32) and dotted with every
//    token by a vectorized f32 dot (16 partial sums, a fixed reduction order);
//  * many tokens (prompt processing): rows are taken a panel of kPanelRows at a time, dequantized
//    once into a column-interleaved f32 panel (panel[c * kPanelRows + j] = W[r0 + j][c]), and a
//    register-blocked micro-kernel computes kPanelRows x kTile outputs, broadcasting x[t][c] and
//    accumulating each output in its own lane with one fused multiply-add per c, in c order.
//
// Q8_0 weights in generation take a third path: x quantized to 8 bits, integer dot products
// (matmul_q8_0 below).
//
// Every output element is computed by one code path chosen from n_tokens alone, and threads only
// split rows (whole panels), so the result does not depend on the thread count. In the panel
// path each output is a plain chain fma(w, x, acc) over c starting from 0, so the AVX-512 and
// AVX2 kernels give the same bits.
#include "smelt/infer/matmul.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "smelt/error.h"
#include "smelt/infer/dequant_row.h"
#include "smelt/infer/matmul_isa.h"
#include "smelt/infer/parallel.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "smelt/kernels/cpu_features.h"
#endif

namespace smelt::infer {

namespace {

using kernels::GgmlType;

// Rows of one panel (two AVX-512 vectors, four AVX2 vectors).
constexpr int64_t kPanelRows = 32;
// Tokens per micro-kernel call in the panel path (12 x 2 zmm accumulators).
constexpr int kTile = 12;
// Columns per block of the panel path (a 32 KiB slice of the panel).
constexpr int64_t kColBlock = 256;
// From this many tokens on, the panel path is used (measured crossover, docs/performance.md).
constexpr int64_t kGemmMinTokens = 4;
// Below this many multiply-adds a matmul runs on the calling thread alone.
constexpr int64_t kParallelMinWork = int64_t{1} << 18;

using Isa = MatmulIsa;

Isa detect_isa() {
#if defined(__x86_64__)
  if (kernels::cpu_has_avx512f()) return Isa::kAvx512;
  if (kernels::cpu_has_avx2() && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

std::atomic<int>& isa_in_use() {
  static std::atomic<int> v{static_cast<int>(detect_isa())};
  return v;
}

Isa isa() { return static_cast<Isa>(isa_in_use().load(std::memory_order_relaxed)); }

// ---- f32 dot products (generation path) ----

float dot_scalar(const float* a, const float* b, int64_t n) {
  float s[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) s[k] += a[i + k] * b[i + k];
  for (int k = 0; i < n; ++i, ++k) s[k] += a[i] * b[i];
  float t = 0;
  for (float v : s) t += v;
  return t;
}

#if defined(__x86_64__)
[[gnu::target("avx2,fma")]] float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float t = _mm_cvtss_f32(h);
  for (; i < n; ++i) t += a[i] * b[i];
  return t;
}

[[gnu::target("avx512f")]] float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
         s3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16)
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
#endif

using DotFn = float (*)(const float*, const float*, int64_t);

DotFn dot_fn() {
#if defined(__x86_64__)
  switch (isa()) {
    case Isa::kAvx512:
      return dot_avx512;
    case Isa::kAvx2:
      return dot_avx2;
    default:
      break;
  }
#endif
  return dot_scalar;
}

// ---- panel micro-kernels (prompt path) ----
// out[t * kPanelRows + j] (+)= sum_c panel[c * kPanelRows + j] * x[t * ldx + c], for t < NT, as
// a chain of multiply-adds in c order, starting from 0 or (load) from out's value: a chain cut
// into column blocks gives the same bits as an uncut one. The AVX-512 and AVX2 kernels fuse each
// multiply-add (same bits on both); the portable one rounds the product first, since std::fma
// is a slow library call on CPUs without FMA, the ones that need this kernel.

template <int NT>
void panel_scalar(const float* panel, int64_t cols, const float* x, int64_t ldx, float* out,
                  bool load) {
  float acc[NT][kPanelRows] = {};
  if (load) std::memcpy(acc, out, sizeof acc);
  for (int64_t c = 0; c < cols; ++c) {
    const float* w = panel + c * kPanelRows;
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const float b = x[t * ldx + c];
      for (int j = 0; j < kPanelRows; ++j) acc[t][j] += w[j] * b;
    }
  }
  std::memcpy(out, acc, sizeof acc);
}

#if defined(__x86_64__)
template <int NT>
[[gnu::target("avx512f"), gnu::optimize("O3")]] void panel_avx512(const float* panel, int64_t cols,
                                                                  const float* x, int64_t ldx,
                                                                  float* out, bool load) {
  __m512 a0[NT], a1[NT];
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    a0[t] = load ? _mm512_loadu_ps(out + t * kPanelRows) : _mm512_setzero_ps();
    a1[t] = load ? _mm512_loadu_ps(out + t * kPanelRows + 16) : _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < cols; ++c) {
    const __m512 w0 = _mm512_load_ps(panel + c * kPanelRows);
    const __m512 w1 = _mm512_load_ps(panel + c * kPanelRows + 16);
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const __m512 b = _mm512_set1_ps(x[t * ldx + c]);
      a0[t] = _mm512_fmadd_ps(w0, b, a0[t]);
      a1[t] = _mm512_fmadd_ps(w1, b, a1[t]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    _mm512_storeu_ps(out + t * kPanelRows, a0[t]);
    _mm512_storeu_ps(out + t * kPanelRows + 16, a1[t]);
  }
}

// AVX2 has 16 registers: two tokens x four vectors per call.
template <int NT>
[[gnu::target("avx2,fma"), gnu::optimize("O3")]] void panel_avx2_2(const float* panel, int64_t cols,
                                                                   const float* x, int64_t ldx,
                                                                   float* out, bool load) {
  __m256 a[NT][4];
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v)
      a[t][v] = load ? _mm256_loadu_ps(out + t * kPanelRows + 8 * v) : _mm256_setzero_ps();
  for (int64_t c = 0; c < cols; ++c) {
    const float* w = panel + c * kPanelRows;
    __m256 b[NT];
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) b[t] = _mm256_broadcast_ss(x + t * ldx + c);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const __m256 wv = _mm256_load_ps(w + 8 * v);
#pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) a[t][v] = _mm256_fmadd_ps(wv, b[t], a[t][v]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(out + t * kPanelRows + 8 * v, a[t][v]);
}

template <int NT>
[[gnu::target("avx2,fma")]] void panel_avx2(const float* panel, int64_t cols, const float* x,
                                            int64_t ldx, float* out, bool load) {
  int t = 0;
  for (; t + 2 <= NT; t += 2)
    panel_avx2_2<2>(panel, cols, x + t * ldx, ldx, out + t * kPanelRows, load);
  if (t < NT) panel_avx2_2<1>(panel, cols, x + t * ldx, ldx, out + t * kPanelRows, load);
}
#endif

using PanelFn = void (*)(const float*, int64_t, const float*, int64_t, float*, bool);

template <template <int> class K, size_t... I>
void fill_table(PanelFn* t, std::index_sequence<I...>) {
  ((t[I + 1] = K<static_cast<int>(I) + 1>::fn), ...);
}

template <int NT>
struct ScalarK {
  static constexpr PanelFn fn = panel_scalar<NT>;
};
#if defined(__x86_64__)
template <int NT>
struct Avx512K {
  static constexpr PanelFn fn = panel_avx512<NT>;
};
template <int NT>
struct Avx2K {
  static constexpr PanelFn fn = panel_avx2<NT>;
};
#endif

template <template <int> class K>
std::array<PanelFn, kTile + 1> make_table() {
  std::array<PanelFn, kTile + 1> t{};
  fill_table<K>(t.data(), std::make_index_sequence<kTile>());
  return t;
}

// The micro-kernel for nt (1..kTile) tokens with the instruction set in use.
PanelFn panel_fn(int nt) {
  const auto i = static_cast<size_t>(nt);
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512: {
      static const auto t = make_table<Avx512K>();
      return t[i];
    }
    case Isa::kAvx2: {
      static const auto t = make_table<Avx2K>();
      return t[i];
    }
#endif
    default: {
      static const auto t = make_table<ScalarK>();
      return t[i];
    }
  }
}

// ---- per-thread scratch ----

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// A 64-byte aligned float buffer that only grows.
class Scratch {
 public:
  float* get(size_t n) {
    if (n > size_) {
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      buf_.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      if (!buf_) fail("out of memory: {} bytes of matmul scratch", bytes);
      size_ = n;
    }
    return buf_.get();
  }

 private:
  std::unique_ptr<float, AlignedFree> buf_;
  size_t size_ = 0;
};

thread_local Scratch t_row;    // one dequantized row, or a panel's rows of one slice
thread_local Scratch t_panel;  // one transposed slice of a panel
thread_local Scratch t_acc;    // a panel's accumulators, every token

// Row r of W as f32: in place for F32, else dequantized into `buf`.
const float* row_f32(const WeightMatrix& w, size_t row_bytes, int64_t r, float* buf) {
  const auto* row = static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r) * row_bytes;
  if (w.type == GgmlType::kF32) return reinterpret_cast<const float*>(row);
  dequant_row(w.type, row, buf, static_cast<size_t>(w.cols));
  return buf;
}

// slice[c * kPanelRows + j] = src[j * ld + c] for c < kc, j < kPanelRows.
[[gnu::optimize("O3")]] void transpose_slice_portable(const float* src, int64_t ld, int64_t kc,
                                                      float* slice) {
  constexpr int64_t kB = 16;
  for (int64_t c0 = 0; c0 < kc; c0 += kB) {
    const int64_t ce = std::min(kc, c0 + kB);
    for (int64_t j = 0; j < kPanelRows; ++j)
      for (int64_t c = c0; c < ce; ++c) slice[c * kPanelRows + j] = src[j * ld + c];
  }
}

#if defined(__x86_64__)
// The same for kc a multiple of 16, by 16 x 16 blocks transposed in registers (unpack of 32-bit
// then 64-bit pairs, then two rounds of 128-bit lane shuffles).
[[gnu::target("avx512f"), gnu::optimize("O3")]] void transpose_slice_avx512(const float* src,
                                                                            int64_t ld, int64_t kc,
                                                                            float* slice) {
  for (int64_t j0 = 0; j0 < kPanelRows; j0 += 16) {
    for (int64_t c0 = 0; c0 < kc; c0 += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (j0 + i) * ld + c0);
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 16; i += 4) {
        const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
      }
      // r[4q + k] now holds, in each 128-bit lane L, rows 4q..4q+3 of column 4L + k.
      for (int i = 0; i < 16; i += 8)
        for (int k = 0; k < 4; ++k) {
          t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0x88);
          t[i + 4 + k] = _mm512_shuffle_f32x4(r[i + k], r[i + 4 + k], 0xdd);
        }
      for (int k = 0; k < 8; ++k) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
      }
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(slice + (c0 + i) * kPanelRows + j0, r[i]);
    }
  }
}
#endif

void transpose_slice(const float* src, int64_t ld, int64_t kc, float* slice) {
#if defined(__x86_64__)
  if (isa() == Isa::kAvx512 && kc % 16 == 0) return transpose_slice_avx512(src, ld, kc, slice);
#endif
  transpose_slice_portable(src, ld, kc, slice);
}

void gemv_rows(const WeightMatrix& w, size_t row_bytes, const float* x, int64_t n_tokens, float* y,
               int64_t r0, int64_t r1) {
  const DotFn dot = dot_fn();
  float* buf = w.type == GgmlType::kF32 ? nullptr : t_row.get(static_cast<size_t>(w.cols));
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr = row_f32(w, row_bytes, r, buf);
    for (int64_t t = 0; t < n_tokens; ++t) y[t * w.rows + r] = dot(wr, x + t * w.cols, w.cols);
  }
}

// Panels p0..p1 (rows p * kPanelRows ..) times every token. The columns are taken kColBlock at a
// time (a whole number of blocks of every type): the panel's slice is dequantized row by row into
// `tmp`, transposed into `slice` (slice[c * kPanelRows + j], both in L1), and every token passes
// over it; the per-token accumulators wait in `acc` between slices.
void gemm_panels(const WeightMatrix& w, size_t row_bytes, const float* x, int64_t n_tokens,
                 float* y, int64_t p0, int64_t p1) {
  const int64_t cols = w.cols;
  float* slice = t_panel.get(static_cast<size_t>(kColBlock * kPanelRows));
  float* tmp = t_row.get(static_cast<size_t>(kColBlock * kPanelRows));
  float* acc = t_acc.get(static_cast<size_t>(n_tokens * kPanelRows));
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t r0 = p * kPanelRows;
    const int64_t nr = std::min(kPanelRows, w.rows - r0);
    for (int64_t c0 = 0; c0 < cols; c0 += kColBlock) {
      const int64_t kc = std::min(kColBlock, cols - c0);
      const size_t offset = *kernels::ggml_type_bytes(w.type, static_cast<uint64_t>(c0));
      if (w.type == GgmlType::kF32 && nr == kPanelRows) {
        // Whole f32 panels are transposed straight from W.
        transpose_slice(
            reinterpret_cast<const float*>(base + static_cast<size_t>(r0) * row_bytes) + c0, cols,
            kc, slice);
      } else {
        for (int64_t j = 0; j < nr; ++j)
          dequant_row(w.type, base + static_cast<size_t>(r0 + j) * row_bytes + offset,
                      tmp + j * kColBlock, static_cast<size_t>(kc));
        for (int64_t j = nr; j < kPanelRows; ++j)
          std::memset(tmp + j * kColBlock, 0, static_cast<size_t>(kc) * sizeof(float));
        transpose_slice(tmp, kColBlock, kc, slice);
      }
      for (int64_t t0 = 0; t0 < n_tokens; t0 += kTile) {
        const int nt = static_cast<int>(std::min<int64_t>(kTile, n_tokens - t0));
        panel_fn(nt)(slice, kc, x + t0 * cols + c0, cols, acc + t0 * kPanelRows, c0 > 0);
      }
    }
    for (int64_t t = 0; t < n_tokens; ++t)
      std::memcpy(y + t * w.rows + r0, acc + t * kPanelRows,
                  static_cast<size_t>(nr) * sizeof(float));
  }
}

// ---- Q8_0 weights: integer dot products against 8-bit activations ----
// Each token's row of x is quantized as ggml's quantize_row_q8_0 does (blocks of 32, d =
// max|x| / 127 rounded to f16, q = nearbyint(x / d)), once per call. Output (r, t) is
//   acc[8 (b % 2) + k] = fma(dw_b * dx_b, float(p_bk), acc[8 (b % 2) + k])
// for blocks b in order and lanes k < 8, then y = reduce16(acc) (a fixed order of additions),
// where p_bk = sum_{i<4} qw[32b + 4k + i] * qx[32b + 4k + i] is exact in int32, so the AVX-512
// VNNI, AVX2 and portable (std::fma) kernels give the same bits, for any token and thread count.
// The portable kernel's std::fma is slow on CPUs without FMA, but it runs once per block. matmul
// uses this path for generation only (n_tokens < kGemmMinTokens).

constexpr int64_t kQ8Block = 32;
constexpr size_t kQ8BlockBytes = 34;   // f16 d, then 32 int8
constexpr int kQ8Tokens = 4;           // tokens per kernel call
constexpr int64_t kQ8TokenBlock = 16;  // tokens whose quantized x is reused across rows

// x quantized, nbp = nb rounded up to even blocks per token (a padding block is all zeros): q
// (nbp * 32 int8), dx (nbp * 8: each block's d repeated in 8 lanes) and, for the VNNI kernel, nc
// (nbp * 8): -128 * sum_{i<4} q[32b + 4k + i], which removes the +128 that makes the weights
// unsigned (vpdpbusd multiplies unsigned by signed bytes).
struct Q8Act {
  const int8_t* q;
  const float* dx;
  const int32_t* nc;
  int64_t nb, nbp;
};

thread_local std::vector<int8_t> t_xq;
thread_local std::vector<float> t_xd;
thread_local std::vector<int32_t> t_xnc;
thread_local std::vector<float> t_dw;

void quantize_x_row(const float* x, int64_t nb, int64_t nbp, int8_t* q, float* dx, int32_t* nc) {
  for (int64_t b = 0; b < nbp; ++b) {
    float amax = 0;
    bool finite = true;
    if (b < nb)
      for (int64_t i = 0; i < kQ8Block; ++i) {
        const float v = std::fabs(x[b * kQ8Block + i]);
        finite = finite && v <= std::numeric_limits<float>::max();
        amax = std::max(amax, v);
      }
    // A NaN or infinite x makes the block's scale NaN (q 0), so the outputs are NaN as with f32.
    const float db = finite ? amax / 127.0f : 0.0f;
    const float id = db != 0.0f ? 1.0f / db : 0.0f;
    const float d16 = finite ? kernels::f16_to_f32(kernels::ggml_f32_to_f16(db))
                             : std::numeric_limits<float>::quiet_NaN();
    for (int k = 0; k < 8; ++k) dx[b * 8 + k] = d16;
    // A scale below f32's normal range makes 1/d infinite and x/d infinite or NaN: clamped, so
    // the cast is defined (d rounds to f16 zero then, and the block adds nothing).
    auto quantize = [&](float v) {
      const float r = std::nearbyint(v * id);
      return r != r ? int8_t{0} : static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
    };
    for (int64_t i = 0; i < kQ8Block; ++i)
      q[b * kQ8Block + i] = b < nb && finite ? quantize(x[b * kQ8Block + i]) : int8_t{0};
    for (int k = 0; k < 8; ++k) {
      int32_t s = 0;
      for (int i = 0; i < 4; ++i) s += q[b * kQ8Block + 4 * k + i];
      nc[b * 8 + k] = -128 * s;
    }
  }
}

float reduce16(const float* a) {
  float v[8];
  for (int k = 0; k < 8; ++k) v[k] = a[k] + a[8 + k];
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// out[t] for tokens t0 .. t0 + NT - 1 of weight row `wrow` (nb blocks, scales dw as f32).
template <int NT>
[[gnu::optimize("O3", "fp-contract=off")]] void q8_scalar_row(const uint8_t* wrow, const float* dw,
                                                              const Q8Act& a, int64_t t0,
                                                              float* out) {
  for (int t = 0; t < NT; ++t) {
    const int8_t* xq = a.q + (t0 + t) * a.nbp * kQ8Block;
    const float* xd = a.dx + (t0 + t) * a.nbp * 8;
    float acc[16] = {};
    for (int64_t b = 0; b < a.nb; ++b) {
      const auto* wq = reinterpret_cast<const int8_t*>(wrow + b * kQ8BlockBytes + 2);
      const int8_t* xb = xq + b * kQ8Block;
      const float s = dw[b] * xd[b * 8];
      float* ac = acc + 8 * (b % 2);
      for (int k = 0; k < 8; ++k) {
        int32_t p = 0;
        for (int i = 0; i < 4; ++i) p += int32_t{wq[4 * k + i]} * int32_t{xb[4 * k + i]};
        ac[k] = std::fma(s, static_cast<float>(p), ac[k]);
      }
    }
    out[t] = reduce16(acc);
  }
}

#if defined(__x86_64__)
template <int NT>
[[gnu::target("avx2,fma"), gnu::optimize("O3", "fp-contract=off")]] void q8_avx2_row(
    const uint8_t* wrow, const float* dw, const Q8Act& a, int64_t t0, float* out) {
  __m256 acc[NT][2];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.nb; ++b) {
    const uint8_t* wq = wrow + b * kQ8BlockBytes + 2;
    const __m256i wlo = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wq)));
    const __m256i whi =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wq + 16)));
    const int h = static_cast<int>(b % 2);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const int8_t* xb = a.q + ((t0 + t) * a.nbp + b) * kQ8Block;
      const __m256i xlo =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb)));
      const __m256i xhi =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + 16)));
      // Pair sums of elements 0..15 and 16..31; hadd leaves the lanes as p0 p1 p4 p5 p2 p3 p6 p7.
      const __m256i p = _mm256_hadd_epi32(_mm256_madd_epi16(wlo, xlo), _mm256_madd_epi16(whi, xhi));
      const float s = dw[b] * a.dx[((t0 + t) * a.nbp + b) * 8];
      acc[t][h] = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(p), acc[t][h]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    alignas(32) float v[16];
    for (int h = 0; h < 2; ++h)
      _mm256_store_ps(v + 8 * h,
                      _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(acc[t][h]), 0xD8)));
    out[t] = reduce16(v);
  }
}

#endif

// Rows r .. r + NR - 1 (stride row_bytes; scales dw[j * nbp + b]) times tokens t0 .. t0 + NT - 1:
// out[j * NT + t].
using Q8Fn = void (*)(const uint8_t*, size_t, const float*, const Q8Act&, int64_t, float*);

template <int NR, int NT>
void q8_scalar(const uint8_t* w, size_t row_bytes, const float* dw, const Q8Act& a, int64_t t0,
               float* out) {
  for (int j = 0; j < NR; ++j)
    q8_scalar_row<NT>(w + j * row_bytes, dw + j * a.nbp, a, t0, out + j * NT);
}

#if defined(__x86_64__)
template <int NR, int NT>
void q8_avx2(const uint8_t* w, size_t row_bytes, const float* dw, const Q8Act& a, int64_t t0,
             float* out) {
  for (int j = 0; j < NR; ++j)
    q8_avx2_row<NT>(w + j * row_bytes, dw + j * a.nbp, a, t0, out + j * NT);
}

// Two blocks per step in one 512-bit vector (lanes 0..7 block b, 8..15 block b + 1); NR x NT
// accumulators, so each load of x serves NR rows and each load of W serves NT tokens.
template <int NR, int NT>
[[gnu::target("avx512f,avx512vl,avx512vnni"), gnu::optimize("O3", "fp-contract=off")]] void q8_vnni(
    const uint8_t* w, size_t row_bytes, const float* dw, const Q8Act& a, int64_t t0, float* out) {
  __m512 acc[NR][NT];
#pragma GCC unroll 4
  for (int j = 0; j < NR; ++j)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[j][t] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i half = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int64_t b = 0; b < a.nb; b += 2) {
    __m512i u[NR];
    __m512 dwv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const uint8_t* wrow = w + j * row_bytes;
      const __m256i w0 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + b * kQ8BlockBytes + 2));
      // The padding block past an odd nb: weights 0 (+128 after the flip, times q = 0), dw 0.
      const __m256i w1 = b + 1 < a.nb ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                            wrow + (b + 1) * kQ8BlockBytes + 2))
                                      : _mm256_setzero_si256();
      u[j] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), flip);
      double pair;  // dw[b], dw[b + 1]
      std::memcpy(&pair, dw + j * a.nbp + b, sizeof pair);
      dwv[j] = _mm512_permutexvar_ps(half, _mm512_castpd_ps(_mm512_set1_pd(pair)));
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const int64_t tb = (t0 + t) * a.nbp + b;
      const __m512i x = _mm512_loadu_si512(a.q + tb * kQ8Block);
      const __m512i nc = _mm512_loadu_si512(a.nc + tb * 8);
      const __m512 dx = _mm512_loadu_ps(a.dx + tb * 8);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const __m512i p = _mm512_dpbusd_epi32(nc, u[j], x);
        const __m512 sc = _mm512_mul_ps(dwv[j], dx);
        acc[j][t] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc[j][t]);
      }
    }
  }
  for (int j = 0; j < NR; ++j)
    for (int t = 0; t < NT; ++t) {
      alignas(64) float v[16];
      _mm512_store_ps(v, acc[j][t]);
      out[j * NT + t] = reduce16(v);
    }
}

bool cpu_has_vnni() {
  static const bool v = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return v;
}
#endif

constexpr int kQ8Rows = 4;  // rows per kernel call

Q8Fn q8_fn(int nr, int nt) {
#define SMELT_Q8_TABLE(K)                                               \
  {                                                                     \
    static const Q8Fn t[4][4] = {{K<1, 1>, K<1, 2>, K<1, 3>, K<1, 4>},  \
                                 {K<2, 1>, K<2, 2>, K<2, 3>, K<2, 4>},  \
                                 {K<3, 1>, K<3, 2>, K<3, 3>, K<3, 4>},  \
                                 {K<4, 1>, K<4, 2>, K<4, 3>, K<4, 4>}}; \
    return t[nr - 1][nt - 1];                                           \
  }
#if defined(__x86_64__)
  if (isa() == Isa::kAvx512 && cpu_has_vnni()) SMELT_Q8_TABLE(q8_vnni)
  if (isa() != Isa::kPortable) SMELT_Q8_TABLE(q8_avx2)
#endif
  SMELT_Q8_TABLE(q8_scalar)
#undef SMELT_Q8_TABLE
}

void matmul_q8_0(const WeightMatrix& w, size_t row_bytes, const float* x, int64_t n_tokens,
                 float* y, Parallel* par, bool parallel) {
  const int64_t cols = w.cols, nb = cols / kQ8Block, nbp = (nb + 1) / 2 * 2;
  const auto nt = static_cast<size_t>(n_tokens);
  const auto nbs = static_cast<size_t>(nbp);
  t_xq.resize(nt * nbs * kQ8Block);
  t_xd.resize(nt * nbs * 8);
  t_xnc.resize(nt * nbs * 8);
  // The vectors belong to the calling thread: the workers use their data through these.
  int8_t* xq = t_xq.data();
  float* xd = t_xd.data();
  int32_t* xnc = t_xnc.data();
  const Q8Act a{xq, xd, xnc, nb, nbp};
  auto quant_rows = [&](size_t b, size_t e, size_t) {
    for (size_t t = b; t < e; ++t)
      quantize_x_row(x + t * static_cast<size_t>(cols), nb, nbp, xq + t * nbs * kQ8Block,
                     xd + t * nbs * 8, xnc + t * nbs * 8);
  };
  if (parallel && n_tokens > 1)
    par->for_range(nt, quant_rows);
  else
    quant_rows(0, nt, 0);

  const auto* base = static_cast<const uint8_t*>(w.data);
  constexpr int64_t kChunk = 16;
  const int64_t chunks = (w.rows + kChunk - 1) / kChunk;
  // Per 16-row chunk: its scales once, then token blocks, each over the chunk's rows kQ8Rows at a
  // time (the chunk's weights and the block's x stay in cache).
  auto body = [&](size_t cb, size_t ce, size_t) {
    t_dw.resize(static_cast<size_t>(kChunk) * nbs);
    float* dw = t_dw.data();
    float out[kQ8Rows * kQ8Tokens];
    for (size_t c = cb; c < ce; ++c) {
      const int64_t r0 = static_cast<int64_t>(c) * kChunk;
      const int64_t r1 = std::min(w.rows, r0 + kChunk);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* wrow = base + static_cast<size_t>(r) * row_bytes;
        float* d = dw + (r - r0) * nbp;
        for (int64_t b = 0; b < nb; ++b) {
          uint16_t h;
          std::memcpy(&h, wrow + b * kQ8BlockBytes, 2);
          d[b] = kernels::f16_to_f32(h);
        }
        for (int64_t b = nb; b < nbp; ++b) d[b] = 0.0f;
      }
      for (int64_t tb = 0; tb < n_tokens; tb += kQ8TokenBlock) {
        const int64_t te = std::min(n_tokens, tb + kQ8TokenBlock);
        for (int64_t r = r0; r < r1; r += kQ8Rows) {
          const int nr = static_cast<int>(std::min<int64_t>(kQ8Rows, r1 - r));
          for (int64_t t0 = tb; t0 < te; t0 += kQ8Tokens) {
            const int n = static_cast<int>(std::min<int64_t>(kQ8Tokens, te - t0));
            q8_fn(nr, n)(base + static_cast<size_t>(r) * row_bytes, row_bytes, dw + (r - r0) * nbp,
                         a, t0, out);
            for (int j = 0; j < nr; ++j)
              for (int t = 0; t < n; ++t) y[(t0 + t) * w.rows + r + j] = out[j * n + t];
          }
        }
      }
    }
  };
  if (parallel)
    par->for_range(static_cast<size_t>(chunks), body);
  else
    body(0, static_cast<size_t>(chunks), 0);
}

}  // namespace

MatmulIsa matmul_best_isa() {
  static const Isa v = detect_isa();
  return v;
}

MatmulIsa matmul_isa() { return isa(); }

void set_matmul_isa(MatmulIsa want) {
  isa_in_use().store(std::min(static_cast<int>(want), static_cast<int>(matmul_best_isa())));
}

size_t WeightMatrix::row_bytes() const {
  auto b = kernels::ggml_type_bytes(type, static_cast<uint64_t>(cols));
  if (!b)
    fail("weight matrix of type {} cannot hold rows of {} elements", kernels::ggml_type_name(type),
         cols);
  return static_cast<size_t>(*b);
}

bool matmul_supports(kernels::GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void get_row(const WeightMatrix& w, int64_t r, float* dst) {
  const auto* row = static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r) * w.row_bytes();
  kernels::dequantize(w.type, row, dst, static_cast<size_t>(w.cols));
}

void matmul(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, Parallel* par) {
  if (!matmul_supports(w.type))
    fail(
        "matmul: weight type {} is not supported (use F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K or "
        "Q6_K)",
        kernels::ggml_type_name(w.type));
  if (w.rows <= 0 || n_tokens <= 0) return;
  const size_t row_bytes = w.row_bytes();
  if (w.cols == 0) {
    std::fill(y, y + n_tokens * w.rows, 0.0f);
    return;
  }
  const bool parallel = par && par->threads() > 1 && w.rows * w.cols * n_tokens >= kParallelMinWork;
  // Q8_0 in generation: 8-bit activations and integer dot products. Prompt batches keep the f32
  // panel path, which is faster on AVX-512 (docs/performance.md, "Forward pass: matrix products").
  if (w.type == GgmlType::kQ8_0 && n_tokens < kGemmMinTokens)
    return matmul_q8_0(w, row_bytes, x, n_tokens, y, par, parallel);
  if (n_tokens < kGemmMinTokens) {
    // Chunks of 16 rows keep each thread's rows contiguous and the split cheap.
    constexpr int64_t kChunk = 16;
    const int64_t chunks = (w.rows + kChunk - 1) / kChunk;
    auto body = [&](size_t b, size_t e, size_t) {
      gemv_rows(w, row_bytes, x, n_tokens, y, static_cast<int64_t>(b) * kChunk,
                std::min(w.rows, static_cast<int64_t>(e) * kChunk));
    };
    if (parallel)
      par->for_range(static_cast<size_t>(chunks), body);
    else
      body(0, static_cast<size_t>(chunks), 0);
    return;
  }
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  auto body = [&](size_t b, size_t e, size_t) {
    gemm_panels(w, row_bytes, x, n_tokens, y, static_cast<int64_t>(b), static_cast<int64_t>(e));
  };
  if (parallel)
    par->for_range(static_cast<size_t>(panels), body);
  else
    body(0, static_cast<size_t>(panels), 0);
}

}  // namespace smelt::infer
