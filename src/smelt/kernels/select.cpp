// Exact streaming top-k magnitude selection (radix histograms on float bits) and the elementwise
// loops merge methods run over chunks.
#include "smelt/kernels/select.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "smelt/kernels/random.h"

// Release builds are -O2, where GCC 12 vectorizes only trivially profitable loops; these need O3's
// cost model. fp-contract=off keeps the AVX-512 clone (which has FMA) bit-identical to the others.
// ThreadSanitizer crashes in target_clones' ifunc resolvers (they run before it starts), so its
// builds use the default clone only.
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SMELT_ELEMENTWISE \
  __attribute__((target_clones("avx512f", "avx2", "default"), optimize("O3", "fp-contract=off")))
#else
#define SMELT_ELEMENTWISE __attribute__((optimize("O3", "fp-contract=off")))
#endif

namespace smelt::kernels {
namespace {

constexpr size_t kBins = 65536;
// Below this many elements a chunk adds straight into the shared histogram: clearing and
// scanning a private one would cost more than the atomic increments.
constexpr size_t kPrivateHistogramMin = 65536;
// Private counts are 32-bit; longer chunks are counted in blocks of this size.
constexpr size_t kMaxBlock = size_t{1} << 31;

// Zeroes every x[j] with magnitude_bits(x[j]) < bits (written as a select so it vectorizes).
SMELT_ELEMENTWISE void zero_below(uint32_t bits, float* x, size_t n) {
  for (size_t j = 0; j < n; ++j) x[j] = magnitude_bits(x[j]) < bits ? 0.0f : x[j];
}

}  // namespace

TopKMagnitude::TopKMagnitude(uint64_t numel, uint64_t k) : numel_(numel), k_(k) {
  if (k_ == 0 || k_ >= numel_) return;  // nothing or everything is kept: no pass needed
  pass_ = Pass::kHigh;
  histogram_ = std::make_unique<std::atomic<uint64_t>[]>(kBins);
  for (size_t b = 0; b < kBins; ++b) histogram_[b].store(0, std::memory_order_relaxed);
}

void TopKMagnitude::add_to_histogram(const float* x, size_t n) {
  const bool low = pass_ == Pass::kLow;
  const uint32_t high_bin = high_bin_;
  if (n < kPrivateHistogramMin) {
    for (size_t j = 0; j < n; ++j) {
      const uint32_t bits = magnitude_bits(x[j]);
      if (!low) {
        histogram_[bits >> 16].fetch_add(1, std::memory_order_relaxed);
      } else if ((bits >> 16) == high_bin) {
        histogram_[bits & 0xFFFFu].fetch_add(1, std::memory_order_relaxed);
      }
    }
    return;
  }
  thread_local std::vector<uint32_t> counts;
  counts.assign(kBins, 0);
  for (size_t start = 0; start < n; start += kMaxBlock) {
    const size_t end = std::min(n, start + kMaxBlock);
    if (!low) {
      for (size_t j = start; j < end; ++j) ++counts[magnitude_bits(x[j]) >> 16];
    } else {
      for (size_t j = start; j < end; ++j) {
        const uint32_t bits = magnitude_bits(x[j]);
        if ((bits >> 16) == high_bin) ++counts[bits & 0xFFFFu];
      }
    }
    for (size_t b = 0; b < kBins; ++b) {
      if (counts[b] != 0) {
        histogram_[b].fetch_add(counts[b], std::memory_order_relaxed);
        counts[b] = 0;
      }
    }
  }
}

void TopKMagnitude::add(uint64_t offset, const float* x, size_t n) {
  switch (pass_) {
    case Pass::kHigh:
    case Pass::kLow:
      add_to_histogram(x, n);
      return;
    case Pass::kTies: {
      const uint32_t threshold = threshold_;
      uint64_t equal = 0;
      for (size_t j = 0; j < n; ++j) equal += magnitude_bits(x[j]) == threshold;
      std::lock_guard lock(ties_mutex_);
      ties_.push_back({offset, equal, 0});
      return;
    }
    case Pass::kDone:
      throw std::logic_error("TopKMagnitude::add called after the last pass");
  }
}

uint32_t TopKMagnitude::find_bin(uint64_t& above) const {
  for (uint32_t b = kBins; b-- > 0;) {
    const uint64_t count = histogram_[b].load(std::memory_order_relaxed);
    if (above + count >= k_) return b;
    above += count;
  }
  // Unreachable when the passes saw all numel_ > k_ elements.
  throw std::logic_error("TopKMagnitude: the passes saw fewer elements than numel");
}

void TopKMagnitude::end_pass() {
  switch (pass_) {
    case Pass::kHigh: {
      greater_high_ = 0;
      high_bin_ = find_bin(greater_high_);
      for (size_t b = 0; b < kBins; ++b) histogram_[b].store(0, std::memory_order_relaxed);
      pass_ = Pass::kLow;
      return;
    }
    case Pass::kLow: {
      uint64_t greater = greater_high_;
      const uint32_t low_bin = find_bin(greater);
      const uint64_t equal = histogram_[low_bin].load(std::memory_order_relaxed);
      threshold_ = (high_bin_ << 16) | low_bin;
      greater_ = greater;
      tied_to_keep_ = k_ - greater_;
      split_ties_ = greater_ + equal > k_;
      histogram_.reset();
      pass_ = split_ties_ ? Pass::kTies : Pass::kDone;
      return;
    }
    case Pass::kTies: {
      std::sort(ties_.begin(), ties_.end(),
                [](const TieCount& a, const TieCount& b) { return a.offset < b.offset; });
      uint64_t before = 0;
      for (TieCount& t : ties_) {
        t.equal_before = before;
        before += t.equal;
      }
      pass_ = Pass::kDone;
      return;
    }
    case Pass::kDone:
      throw std::logic_error("TopKMagnitude::end_pass called after the last pass");
  }
}

void TopKMagnitude::keep_top(uint64_t offset, float* x, size_t n) const {
  if (pass_ != Pass::kDone) throw std::logic_error("TopKMagnitude::keep_top before the passes");
  if (k_ >= numel_) return;
  if (k_ == 0) {
    std::fill(x, x + n, 0.0f);
    return;
  }
  const uint32_t threshold = threshold_;
  // How many of this chunk's elements equal to the threshold are kept (all unless split_ties_).
  uint64_t keep_equal = UINT64_MAX;
  if (split_ties_) {
    const auto it =
        std::lower_bound(ties_.begin(), ties_.end(), offset,
                         [](const TieCount& t, uint64_t value) { return t.offset < value; });
    if (it == ties_.end() || it->offset != offset) {
      throw std::logic_error("TopKMagnitude::keep_top: chunk not seen by the ties pass");
    }
    keep_equal = tied_to_keep_ > it->equal_before
                     ? std::min(tied_to_keep_ - it->equal_before, it->equal)
                     : 0;
    if (keep_equal == it->equal) keep_equal = UINT64_MAX;
  }
  if (keep_equal == UINT64_MAX) {  // keep |x| >= T
    zero_below(threshold, x, n);
  } else if (keep_equal == 0) {  // keep |x| > T
    zero_below(threshold + 1, x, n);
  } else {  // keep |x| > T and the first keep_equal elements equal to T
    uint64_t kept_equal = 0;
    for (size_t j = 0; j < n; ++j) {
      const uint32_t bits = magnitude_bits(x[j]);
      if (bits > threshold) continue;
      if (bits == threshold && kept_equal < keep_equal) {
        ++kept_equal;
        continue;
      }
      x[j] = 0.0f;
    }
  }
}

SMELT_ELEMENTWISE void subtract(const float* a, const float* b, float* out, size_t n) {
  for (size_t j = 0; j < n; ++j) out[j] = a[j] - b[j];
}

SMELT_ELEMENTWISE void scale(float w, const float* x, float* out, size_t n) {
  for (size_t j = 0; j < n; ++j) out[j] = w * x[j];
}

SMELT_ELEMENTWISE void scale_add(float w, const float* x, float* acc, size_t n) {
  for (size_t j = 0; j < n; ++j) acc[j] += w * x[j];
}

SMELT_ELEMENTWISE void weighted_pair(float a, const float* x, float b, const float* y, float* out,
                                     size_t n) {
  for (size_t j = 0; j < n; ++j) out[j] = a * x[j] + b * y[j];
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
  for (size_t j = 0; j < n; ++j) x[j] = random_uniform(key, first_counter + j) < p ? x[j] : 0.0f;
}

#if defined(__x86_64__)
// The generator's 64-bit multiplies vectorize well only with AVX-512DQ (vpmullq); emulating them
// on AVX2 or SSE is slower than scalar code, so the other path stays scalar. Both give the same
// bits: the arithmetic is integer, and the 24-bit value converts to float exactly.
[[gnu::target("avx512f,avx512dq"), gnu::optimize("O3")]] void keep_random_avx512(
    uint64_t key, uint64_t first_counter, float p, float* x, size_t n) {
  keep_random_loop(key, first_counter, p, x, n);
}
#endif

[[gnu::optimize("no-tree-vectorize")]] void keep_random_scalar(uint64_t key, uint64_t first_counter,
                                                               float p, float* x, size_t n) {
  keep_random_loop(key, first_counter, p, x, n);
}

}  // namespace

void keep_random(uint64_t key, uint64_t first_counter, float p, float* x, size_t n) {
#if defined(__x86_64__)
  static const bool has_avx512dq = __builtin_cpu_supports("avx512dq");
  if (has_avx512dq) return keep_random_avx512(key, first_counter, p, x, n);
#endif
  keep_random_scalar(key, first_counter, p, x, n);
}

SMELT_ELEMENTWISE void elect_sign(const float* const* d, const float* w, size_t count, size_t n,
                                  float* majority, float* mixed, float* divisor) {
  std::fill(majority, majority + n, 0.0f);
  for (size_t i = 0; i < count; ++i) {
    const float* di = d[i];
    for (size_t j = 0; j < n; ++j) majority[j] += di[j];
  }
  for (size_t j = 0; j < n; ++j) majority[j] = majority[j] >= 0.0f ? 1.0f : -1.0f;
  std::fill(mixed, mixed + n, 0.0f);
  std::fill(divisor, divisor + n, 0.0f);
  for (size_t i = 0; i < count; ++i) {
    const float* di = d[i];
    const float wi = w[i];
    for (size_t j = 0; j < n; ++j) {
      // majority is exactly ±1, so the product is positive iff the signs match and d is nonzero
      // (NaN never matches, as in mergekit).
      const bool match = di[j] * majority[j] > 0.0f;
      mixed[j] += match ? di[j] : 0.0f;
      divisor[j] += match ? wi : 0.0f;
    }
  }
  for (size_t j = 0; j < n; ++j) divisor[j] = divisor[j] == 0.0f ? 1.0f : divisor[j];
}

// Four interleaved accumulators, combined in a fixed order: faster than one serial chain and
// still a pure function of the chunk's values.
double dot(const float* a, const float* b, size_t n) {
  double s[4] = {0, 0, 0, 0};
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (size_t l = 0; l < 4; ++l) s[l] += double{a[j + l]} * double{b[j + l]};
  }
  for (; j < n; ++j) s[0] += double{a[j]} * double{b[j]};
  return (s[0] + s[1]) + (s[2] + s[3]);
}

double abs_sum(const float* x, size_t n) {
  double s[4] = {0, 0, 0, 0};
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (size_t l = 0; l < 4; ++l) s[l] += std::fabs(double{x[j + l]});
  }
  for (; j < n; ++j) s[0] += std::fabs(double{x[j]});
  return (s[0] + s[1]) + (s[2] + s[3]);
}

}  // namespace smelt::kernels
