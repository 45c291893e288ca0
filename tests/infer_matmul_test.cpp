// The forward pass's matrix products and thread team (src/smelt/infer/matmul.h, parallel.h;
// docs/inference.md): every weight type against dequantize + a double-precision dot, bit-identical
// results for any thread count, and the team's coverage and error propagation.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "smelt/error.h"
#include "smelt/infer/dequant_row.h"
#include "smelt/infer/matmul.h"
#include "smelt/infer/matmul_isa.h"
#include "smelt/infer/parallel.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/quant.h"

namespace smelt::infer {
namespace {

using kernels::GgmlType;

struct Weights {
  std::vector<uint8_t> bytes;
  WeightMatrix w;
};

Weights make_weights(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.5f);
  std::vector<float> f(static_cast<size_t>(rows * cols));
  for (auto& v : f) v = d(rng);
  Weights out;
  out.w.type = type;
  out.w.rows = rows;
  out.w.cols = cols;
  out.bytes.resize(out.w.row_bytes() * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    kernels::quantize(type, f.data() + r * cols, out.bytes.data() + r * out.w.row_bytes(),
                      static_cast<size_t>(cols));
  out.w.data = out.bytes.data();
  return out;
}

std::vector<float> make_x(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = d(rng);
  return x;
}

// y = W x with W dequantized by kernels::dequantize and the dot taken in double; also the sum of
// |W[r][c] * x[t][c]| per output, the scale of the f32 rounding error.
void reference(const WeightMatrix& w, const float* x, int64_t n_tokens, std::vector<double>& y,
               std::vector<double>& mag) {
  y.assign(static_cast<size_t>(n_tokens * w.rows), 0);
  mag.assign(y.size(), 0);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    kernels::dequantize(w.type, static_cast<const uint8_t*>(w.data) + r * w.row_bytes(), row.data(),
                        row.size());
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0, m = 0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const double p = static_cast<double>(row[c]) * x[t * w.cols + c];
        s += p;
        m += std::fabs(p);
      }
      y[t * w.rows + r] = s;
      mag[t * w.rows + r] = m;
    }
  }
}

// Q8_0 weights multiply 8-bit activations (docs/inference.md): each block of 32 values of x is
// quantized as ggml's quantize_row_q8_0 does, d = max|x| / 127 (kept as f16), q = nearbyint(x /
// d). Replacing x by d16 * q moves each element by at most d / 2 (rounding) + 127 |d16 - d| <=
// d (1/2 + 127 * 2^-11) (f16 keeps 11 significant bits), so the output moves by at most
// sum_c |w_c| * that bound for c's block: qbound.
void q8_activation_bound(const WeightMatrix& w, const float* x, int64_t n_tokens,
                         std::vector<double>& qbound) {
  qbound.assign(static_cast<size_t>(n_tokens * w.rows), 0);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    kernels::dequantize(w.type, static_cast<const uint8_t*>(w.data) + r * w.row_bytes(), row.data(),
                        row.size());
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0;
      for (int64_t b = 0; b < w.cols / 32; ++b) {
        double amax = 0, wsum = 0;
        for (int64_t i = 0; i < 32; ++i) {
          amax = std::max(amax, std::fabs(static_cast<double>(x[t * w.cols + b * 32 + i])));
          wsum += std::fabs(static_cast<double>(row[b * 32 + i]));
        }
        s += wsum * amax / 127 * (0.5 + 127 * 0x1p-11);
      }
      qbound[t * w.rows + r] = s;
    }
  }
}

// The Q8_0 product computed independently: x quantized by the rule above, integer dots per block
// in int64, the blocks combined in double. Also returns sum_b |dw dx| sum_c |qw qx|, the scale of
// the kernels' f32 rounding of that combination.
void q8_reference(const WeightMatrix& w, const float* x, int64_t n_tokens, std::vector<double>& y,
                  std::vector<double>& mag) {
  const int64_t nb = w.cols / 32;
  y.assign(static_cast<size_t>(n_tokens * w.rows), 0);
  mag.assign(y.size(), 0);
  std::vector<int8_t> xq(static_cast<size_t>(n_tokens * w.cols));
  std::vector<double> xd(static_cast<size_t>(n_tokens * nb));
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * w.cols + b * 32;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      xd[t * nb + b] = kernels::f16_to_f32(kernels::ggml_f32_to_f16(d));
      for (int i = 0; i < 32; ++i)
        xq[t * w.cols + b * 32 + i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
    }
  for (int64_t r = 0; r < w.rows; ++r) {
    const auto* row = static_cast<const uint8_t*>(w.data) + r * w.row_bytes();
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0, m = 0;
      for (int64_t b = 0; b < nb; ++b) {
        uint16_t h;
        std::memcpy(&h, row + b * 34, 2);
        const auto* qw = reinterpret_cast<const int8_t*>(row + b * 34 + 2);
        int64_t dot = 0, adot = 0;
        for (int i = 0; i < 32; ++i) {
          const int64_t p = int64_t{qw[i]} * xq[t * w.cols + b * 32 + i];
          dot += p;
          adot += p < 0 ? -p : p;
        }
        const double scale = static_cast<double>(kernels::f16_to_f32(h)) * xd[t * nb + b];
        s += scale * static_cast<double>(dot);
        m += std::fabs(scale) * static_cast<double>(adot);
      }
      y[t * w.rows + r] = s;
      mag[t * w.rows + r] = m;
    }
  }
}

class MatmulTypes : public ::testing::TestWithParam<GgmlType> {};

// Every type, n_tokens on both sides of the generation / panel switch, rows that are not a
// multiple of the 16-row chunks or 32-row panels, several blocks per row.
TEST_P(MatmulTypes, MatchesDequantizeAndDoubleDot) {
  const GgmlType type = GetParam();
  const bool k_quant =
      type == GgmlType::kQ4_K || type == GgmlType::kQ5_K || type == GgmlType::kQ6_K;
  const int64_t cols = k_quant ? 3 * 256 : 7 * 32;
  for (int64_t rows : {37, 70}) {
    Weights w = make_weights(type, rows, cols, 11u + static_cast<uint32_t>(rows));
    for (int64_t n_tokens : {1, 3, 4, 64, 200}) {
      SCOPED_TRACE(::testing::Message() << kernels::ggml_type_name(type) << " rows " << rows
                                        << " n_tokens " << n_tokens);
      const auto x = make_x(n_tokens * cols, 5u + static_cast<uint32_t>(n_tokens));
      std::vector<float> y(static_cast<size_t>(n_tokens * rows), NAN);
      Parallel par(3);
      matmul(w.w, x.data(), n_tokens, y.data(), &par);
      std::vector<double> ref, mag;
      reference(w.w, x.data(), n_tokens, ref, mag);
      std::vector<double> qbound(y.size(), 0);
      if (type == GgmlType::kQ8_0) q8_activation_bound(w.w, x.data(), n_tokens, qbound);
      for (size_t i = 0; i < y.size(); ++i) {
        // The kernels multiply the same f32 weights (dequantized exactly as kernels::dequantize
        // does) by the same f32 activations and accumulate in f32: each of the `cols` additions
        // rounds by at most 2^-24 relative to the running partial sum, bounded by the sum of the
        // magnitudes, so |error| <= cols * 2^-24 * sum|w x| (a generous worst case; the chains
        // are at most `cols` long).
        // Q8_0 in generation also quantizes x to 8 bits (q8_activation_bound; applied to every
        // n_tokens, a looser bound for the f32 panel path); its f32 sums run over the products
        // with the quantized x, whose magnitudes exceed mag by at most qbound.
        const double tol =
            static_cast<double>(cols) * 0x1p-24 * (mag[i] + qbound[i]) + qbound[i] + 1e-30;
        ASSERT_NEAR(y[i], ref[i], tol) << "output " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K,
                                           GgmlType::kQ5_K, GgmlType::kQ6_K),
                         [](const auto& info) {
                           return std::string(kernels::ggml_type_name(info.param));
                         });

// F32 weights may have any column count (no blocks): the vector loops' tails.
TEST(Matmul, F32OddColumnCounts) {
  for (int64_t cols : {1, 7, 17, 63, 65}) {
    Weights w = make_weights(GgmlType::kF32, 33, cols, 3);
    for (int64_t n_tokens : {1, 5}) {
      const auto x = make_x(n_tokens * cols, 9);
      std::vector<float> y(static_cast<size_t>(n_tokens * 33));
      matmul(w.w, x.data(), n_tokens, y.data(), nullptr);
      std::vector<double> ref, mag;
      reference(w.w, x.data(), n_tokens, ref, mag);
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_NEAR(y[i], ref[i], static_cast<double>(cols) * 0x1p-24 * mag[i] + 1e-30)
            << "cols " << cols << " n_tokens " << n_tokens << " output " << i;
    }
  }
}

// Large enough to be split over threads (above the single-thread threshold): 1, 2 and 3 threads
// and no team give identical bits.
TEST(Matmul, IdenticalBitsForAnyThreadCount) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_K}) {
    const int64_t rows = 301, cols = 512;
    Weights w = make_weights(type, rows, cols, 21);
    for (int64_t n_tokens : {1, 3, 64, 200}) {
      const auto x = make_x(n_tokens * cols, 4);
      std::vector<float> y0(static_cast<size_t>(n_tokens * rows));
      matmul(w.w, x.data(), n_tokens, y0.data(), nullptr);
      for (size_t threads : {1, 2, 3}) {
        Parallel par(threads);
        std::vector<float> y(y0.size());
        matmul(w.w, x.data(), n_tokens, y.data(), &par);
        ASSERT_EQ(0, std::memcmp(y.data(), y0.data(), y.size() * sizeof(float)))
            << kernels::ggml_type_name(type) << " n_tokens " << n_tokens << " threads " << threads;
      }
    }
  }
}

// A token's output does not depend on the other tokens in the batch (rows of x are independent;
// only the regime, chosen from n_tokens, may change the rounding).
TEST(Matmul, TokensAreIndependentWithinARegime) {
  Weights w = make_weights(GgmlType::kQ6_K, 45, 512, 8);
  const auto x = make_x(200 * 512, 2);
  std::vector<float> all(200 * 45), part(100 * 45);
  matmul(w.w, x.data(), 200, all.data(), nullptr);
  matmul(w.w, x.data() + 100 * 512, 100, part.data(), nullptr);
  ASSERT_EQ(0, std::memcmp(all.data() + 100 * 45, part.data(), part.size() * sizeof(float)));
}

// The matmul kernels' own row dequantizer gives kernels::dequantize's bits, on random bytes (any
// f16 scale: subnormal, infinite, NaN) and on quantized normal data.
TEST(Matmul, DequantRowMatchesKernelsDequantize) {
  std::mt19937 rng(17);
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                        GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    const size_t n = 1024;
    Weights w = make_weights(type, 1, static_cast<int64_t>(n), 6);
    std::vector<uint8_t> random(w.bytes.size());
    for (int rep = 0; rep < 20; ++rep) {
      const bool use_random = rep > 0;
      if (use_random)
        for (auto& b : random) b = static_cast<uint8_t>(rng());
      const void* src = use_random ? random.data() : w.bytes.data();
      std::vector<float> a(n), b(n);
      kernels::dequantize(type, src, b.data(), n);
      // The AVX-512 kernels, then (lowered) the vectorized C++ ones.
      for (MatmulIsa isa : {matmul_best_isa(), MatmulIsa::kAvx2}) {
        set_matmul_isa(isa);
        dequant_row(type, src, a.data(), n);
        set_matmul_isa(matmul_best_isa());
        ASSERT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float)))
            << kernels::ggml_type_name(type) << " rep " << rep << " isa " << static_cast<int>(isa);
      }
    }
  }
}

// The AVX2 and portable kernels (lowered to on this machine): within the same bounds as the
// best ones; the panel path (n_tokens >= 4) computes each output as the same chain of fused
// multiply-adds with AVX-512 and AVX2, so they give the same bits.
TEST(Matmul, EveryInstructionSet) {
  struct Restore {
    ~Restore() { set_matmul_isa(matmul_best_isa()); }
  } restore;
  const int64_t rows = 45, cols = 512;
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                        GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    Weights w = make_weights(type, rows, cols, 31);
    for (int64_t n_tokens : {1, 3, 4, 17}) {
      const auto x = make_x(n_tokens * cols, 12);
      std::vector<double> ref, mag;
      reference(w.w, x.data(), n_tokens, ref, mag);
      std::vector<double> qbound(ref.size(), 0);
      if (type == GgmlType::kQ8_0) q8_activation_bound(w.w, x.data(), n_tokens, qbound);
      set_matmul_isa(matmul_best_isa());
      std::vector<float> best(static_cast<size_t>(n_tokens * rows));
      matmul(w.w, x.data(), n_tokens, best.data(), nullptr);
      for (int level = static_cast<int>(matmul_best_isa()); level >= 0; --level) {
        set_matmul_isa(static_cast<MatmulIsa>(level));
        ASSERT_EQ(static_cast<int>(matmul_isa()), level);
        std::vector<float> y(best.size());
        Parallel par(2);
        matmul(w.w, x.data(), n_tokens, y.data(), &par);
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_NEAR(
              y[i], ref[i],
              static_cast<double>(cols) * 0x1p-24 * (mag[i] + qbound[i]) + qbound[i] + 1e-30)
              << kernels::ggml_type_name(type) << " isa " << level << " n_tokens " << n_tokens;
        // Q8_0's integer path (generation) gives the same bits on every instruction set.
        if ((type == GgmlType::kQ8_0 && n_tokens < 4) ||
            (n_tokens >= 4 && level >= static_cast<int>(MatmulIsa::kAvx2)))
          ASSERT_EQ(0, std::memcmp(y.data(), best.data(), y.size() * sizeof(float)))
              << kernels::ggml_type_name(type) << " isa " << level;
      }
    }
  }
}

// Q8_0 weights times 8-bit activations equals the independent computation (q8_reference) within
// the f32 rounding of combining the blocks: each block's two scales and their product with the
// exact integer sum round once each (<= 2 * 2^-24 relative), and each term then passes through
// at most nb / 8 + 3 additions (8 lane sums, then a 3-level tree), each rounding by 2^-24
// relative to a partial sum bounded by mag: (nb + 8) * 2^-23 * mag is generous. The weights are
// quantized normal data and random bytes (every int8 value, -128 included) with finite scales;
// every instruction set and 1 to 3 threads give the same bits. matmul takes this path for
// generation (n_tokens < 4).
TEST(Matmul, Q8_0IntegerPathMatchesIndependentComputation) {
  struct Restore {
    ~Restore() { set_matmul_isa(matmul_best_isa()); }
  } restore;
  std::mt19937 rng(41);
  for (bool random_bytes : {false, true}) {
    for (int64_t cols : {32, 7 * 32, 1024}) {
      const int64_t rows = 53;
      const int64_t nb = cols / 32;
      Weights w = make_weights(GgmlType::kQ8_0, rows, cols, 9u + static_cast<uint32_t>(cols));
      if (random_bytes) {
        std::uniform_real_distribution<float> ud(-2.0f, 2.0f);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t b = 0; b < nb; ++b) {
            uint8_t* blk = w.bytes.data() + r * w.w.row_bytes() + b * 34;
            const uint16_t h = kernels::ggml_f32_to_f16(ud(rng) * 0.01f);
            std::memcpy(blk, &h, 2);
            for (int i = 0; i < 32; ++i) blk[2 + i] = static_cast<uint8_t>(rng());
          }
      }
      for (int64_t n_tokens : {1, 2, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << "random " << random_bytes << " cols " << cols << " n_tokens " << n_tokens);
        auto x = make_x(n_tokens * cols, 3u + static_cast<uint32_t>(n_tokens));
        // An all-zero block (d = 0) and a block with one large value.
        for (int i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = 0.0f;
        if (cols > 32) x[40] = 1000.0f;
        std::vector<double> ref, mag;
        q8_reference(w.w, x.data(), n_tokens, ref, mag);
        set_matmul_isa(matmul_best_isa());
        std::vector<float> best(static_cast<size_t>(n_tokens * rows));
        matmul(w.w, x.data(), n_tokens, best.data(), nullptr);
        for (size_t i = 0; i < best.size(); ++i)
          ASSERT_NEAR(best[i], ref[i], static_cast<double>(nb + 8) * 0x1p-23 * mag[i] + 1e-30)
              << "output " << i;
        for (int level = static_cast<int>(matmul_best_isa()); level >= 0; --level) {
          set_matmul_isa(static_cast<MatmulIsa>(level));
          for (size_t threads : {1, 2, 3}) {
            Parallel par(threads);
            std::vector<float> y(best.size());
            matmul(w.w, x.data(), n_tokens, y.data(), &par);
            ASSERT_EQ(0, std::memcmp(y.data(), best.data(), y.size() * sizeof(float)))
                << "isa " << level << " threads " << threads;
          }
        }
      }
    }
  }
}

// A NaN activation gives NaN outputs for its token (as f32 activations would), not a finite value
// from a NaN cast to 8 bits; the other tokens are unaffected.
TEST(Matmul, Q8_0NanActivationGivesNan) {
  const int64_t rows = 20, cols = 128;
  Weights w = make_weights(GgmlType::kQ8_0, rows, cols, 3);
  auto x = make_x(2 * cols, 8);
  x[cols + 70] = NAN;
  std::vector<float> y(static_cast<size_t>(2 * rows));
  matmul(w.w, x.data(), 2, y.data(), nullptr);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(std::isfinite(y[r])) << r;
    EXPECT_TRUE(std::isnan(y[rows + r])) << r;
  }
}

// Activations so small that a block's 8-bit scale is below f32's normal range (1/d infinite; a
// fuzzed GGUF found the undefined cast this once made): the block adds nothing, the rest counts.
TEST(Matmul, Q8_0TinyActivationsAddNothing) {
  const int64_t rows = 4, cols = 64;
  Weights w = make_weights(GgmlType::kQ8_0, rows, cols, 5);
  std::vector<float> x(static_cast<size_t>(cols), 0.0f);
  x[1] = 1e-38f;  // block 0: d = 7.9e-41, subnormal
  x[40] = 1.0f;   // block 1: an ordinary scale
  std::vector<float> y(static_cast<size_t>(rows));
  matmul(w.w, x.data(), 1, y.data(), nullptr);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    get_row(w.w, r, row.data());
    // x = 1 quantizes exactly to 127 with d = 1/127 rounded to f16 (relative error 6e-5).
    EXPECT_NEAR(y[r], row[40], 2e-4f * (1 + std::abs(row[40]))) << r;
  }
}

TEST(Matmul, NoColumnsGivesZeros) {
  WeightMatrix w;
  w.rows = 3;
  w.cols = 0;
  std::vector<float> y(3 * 5, NAN);
  float x = 0;
  w.data = &x;
  matmul(w, &x, 5, y.data(), nullptr);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(Matmul, UnsupportedTypeThrows) {
  WeightMatrix w;
  w.type = GgmlType::kQ4_1;
  w.rows = 1;
  w.cols = 32;
  std::vector<uint8_t> data(64);
  w.data = data.data();
  float x[32] = {}, y[1];
  EXPECT_THROW(matmul(w, x, 1, y, nullptr), Error);
}

TEST(Parallel, CoversEveryIndexExactlyOnce) {
  for (size_t threads : {1, 2, 3, 5}) {
    Parallel par(threads);
    EXPECT_EQ(par.threads(), threads);
    for (size_t n : {0, 1, 2, 3, 4, 7, 100, 1001}) {
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<std::atomic<int>> hits(n);
        std::atomic<size_t> max_thread{0};
        par.for_range(n, [&](size_t b, size_t e, size_t t) {
          EXPECT_LE(b, e);
          EXPECT_LT(t, threads);
          size_t m = max_thread.load();
          while (t > m && !max_thread.compare_exchange_weak(m, t)) {
          }
          for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
      }
    }
  }
}

TEST(Parallel, ManyCallsInARow) {
  Parallel par(3);
  std::atomic<int64_t> sum{0};
  for (int k = 0; k < 5000; ++k)
    par.for_range(10, [&](size_t b, size_t e, size_t) {
      for (size_t i = b; i < e; ++i) sum.fetch_add(static_cast<int64_t>(i));
    });
  EXPECT_EQ(sum.load(), 5000 * 45);
}

TEST(Parallel, PropagatesExceptionsAndStaysUsable) {
  Parallel par(3);
  for (size_t bad : {0, 5, 9}) {
    EXPECT_THROW(par.for_range(10,
                               [&](size_t b, size_t e, size_t) {
                                 if (bad >= b && bad < e) throw std::runtime_error("boom");
                               }),
                 std::runtime_error);
  }
  std::atomic<int> count{0};
  par.for_range(10, [&](size_t b, size_t e, size_t) { count += static_cast<int>(e - b); });
  EXPECT_EQ(count.load(), 10);
}

TEST(Parallel, NestedCallRunsInline) {
  Parallel par(2);
  std::atomic<int> count{0};
  par.for_range(4, [&](size_t b, size_t e, size_t) {
    par.for_range(e - b, [&](size_t bb, size_t ee, size_t) { count += static_cast<int>(ee - bb); });
  });
  EXPECT_EQ(count.load(), 4);
}

}  // namespace
}  // namespace smelt::infer
