// Exact streaming top-k magnitude selection: radix histograms on float bits.
#include "smelt/kernels/topk.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "smelt/kernels/compress_avx2.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/cpu_features.h"
#include "smelt/kernels/elementwise.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace smelt::kernels {
namespace {

constexpr size_t kBins = 65536;
// magnitude_bits has no sign bit, so its high 16 bits take 32768 values.
constexpr size_t kHighBins = 32768;
// Tensors below this many elements add straight into the shared histogram: flushing a private
// one would cost more than the atomic increments.
constexpr uint64_t kPrivateHistogramMin = 65536;
// A private histogram is kSub interleaved sub-histograms, so that runs of elements falling into
// the same bin (zeros, bf16 ties) do not serialize on one counter.
constexpr size_t kSub = 4;
// Elements are turned into magnitude bits this many at a time (on the stack, in L1).
constexpr size_t kBitsBlock = 2048;

// bits[j] = magnitude_bits(a[j] - b[j]), or of a[j] when b is null.
SMELT_ELEMENTWISE void magnitudes(const float* a, const float* b, uint32_t* bits, size_t n) {
  if (b == nullptr) {
    for (size_t j = 0; j < n; ++j) bits[j] = std::bit_cast<uint32_t>(a[j]) & 0x7FFFFFFFu;
  } else {
    for (size_t j = 0; j < n; ++j) bits[j] = std::bit_cast<uint32_t>(a[j] - b[j]) & 0x7FFFFFFFu;
  }
}

// x[j] = v or 0 where v = a[j] − b[j] (a[j] when b is null): 0 when magnitude_bits(v) < bits
// (written as a select so it vectorizes). x may be a.
SMELT_ELEMENTWISE void zero_below(uint32_t bits, const float* a, const float* b, float* x,
                                  size_t n) {
  if (b == nullptr) {
    for (size_t j = 0; j < n; ++j) x[j] = magnitude_bits(a[j]) < bits ? 0.0f : a[j];
  } else {
    for (size_t j = 0; j < n; ++j) {
      const float v = a[j] - b[j];
      x[j] = magnitude_bits(v) < bits ? 0.0f : v;
    }
  }
}

// Pass kLow's filter: writes to lows the low 16 bits of the elements (of a − b, or of a when b is
// null) whose high 16 bits equal high_bin, except exact zeros when high_bin is 0, which it only
// counts (adds to *zeros): runs of zeros would serialize the per-value counting. Returns how
// many it wrote (at most n).
size_t filter_lows_scalar(const float* a, const float* b, size_t n, uint32_t high_bin,
                          uint32_t* lows, uint64_t* zeros) {
  alignas(64) uint32_t bits[kBitsBlock];
  size_t matched = 0;
  uint64_t zero_count = 0;
  for (size_t start = 0; start < n; start += kBitsBlock) {
    const size_t m = std::min(kBitsBlock, n - start);
    magnitudes(a + start, b ? b + start : nullptr, bits, m);
    for (size_t j = 0; j < m; ++j) {
      const uint32_t v = bits[j];
      lows[matched] = v & 0xFFFFu;
      const bool zero = high_bin == 0 && v == 0;
      zero_count += zero;
      matched += (v >> 16) == high_bin && !zero;
    }
  }
  *zeros += zero_count;
  return matched;
}

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SMELT_HAVE_AVX512_FILTER 1
__attribute__((target("avx512f,popcnt"))) size_t filter_lows_avx512(const float* a, const float* b,
                                                                    size_t n, uint32_t high_bin,
                                                                    uint32_t* lows,
                                                                    uint64_t* zeros) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i low_mask = _mm512_set1_epi32(0xFFFF);
  const __m512i high_mask = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512i want = _mm512_set1_epi32(static_cast<int>(high_bin << 16));
  const __m512i zero = _mm512_setzero_si512();
  const bool skip_zero = high_bin == 0;
  size_t matched = 0;
  uint64_t zero_count = 0;
  size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 x = _mm512_loadu_ps(a + j);
    if (b != nullptr) x = _mm512_sub_ps(x, _mm512_loadu_ps(b + j));
    const __m512i v = _mm512_and_si512(_mm512_castps_si512(x), abs_mask);
    __mmask16 m = _mm512_cmpeq_epi32_mask(_mm512_and_si512(v, high_mask), want);
    if (skip_zero) {
      const __mmask16 z = _mm512_cmpeq_epi32_mask(v, zero);
      zero_count += static_cast<uint64_t>(__builtin_popcount(z));
      m = static_cast<__mmask16>(m & ~z);
    }
    const __m512i packed = _mm512_maskz_compress_epi32(m, _mm512_and_si512(v, low_mask));
    _mm512_storeu_si512(lows + matched, packed);  // lows has room for 16 past n
    matched += static_cast<size_t>(__builtin_popcount(m));
  }
  *zeros += zero_count;
  if (j < n) {
    matched +=
        filter_lows_scalar(a + j, b ? b + j : nullptr, n - j, high_bin, lows + matched, zeros);
  }
  return matched;
}
#endif

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SMELT_HAVE_AVX2_FILTER 1
using avx2::compress_table;
using avx2::CompressTable;

// filter_lows_scalar with 8 lanes: most blocks of 8 have no element in the high bin and cost a
// compare and a mask test.
__attribute__((target("avx2,popcnt"))) size_t filter_lows_avx2(const float* a, const float* b,
                                                               size_t n, uint32_t high_bin,
                                                               uint32_t* lows, uint64_t* zeros) {
  const CompressTable& table = compress_table();
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i low_mask = _mm256_set1_epi32(0xFFFF);
  const __m256i high_mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i want = _mm256_set1_epi32(static_cast<int>(high_bin << 16));
  const __m256i zero = _mm256_setzero_si256();
  const bool skip_zero = high_bin == 0;
  size_t matched = 0;
  uint64_t zero_count = 0;
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 x = _mm256_loadu_ps(a + j);
    if (b != nullptr) x = _mm256_sub_ps(x, _mm256_loadu_ps(b + j));
    const __m256i v = _mm256_and_si256(_mm256_castps_si256(x), abs_mask);
    const __m256i in_bin = _mm256_cmpeq_epi32(_mm256_and_si256(v, high_mask), want);
    auto m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(in_bin)));
    if (skip_zero) {
      const auto z = static_cast<uint32_t>(
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero))));
      zero_count += static_cast<uint64_t>(__builtin_popcount(z));
      m &= ~z;
    }
    if (m == 0) continue;
    const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.index[m]));
    const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_and_si256(v, low_mask), order);
    // lows has room for 16 past n
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lows + matched), packed);
    matched += static_cast<size_t>(__builtin_popcount(m));
  }
  *zeros += zero_count;
  if (j < n) {
    matched +=
        filter_lows_scalar(a + j, b ? b + j : nullptr, n - j, high_bin, lows + matched, zeros);
  }
  return matched;
}

#endif

// bits[0, r) = the nonzero magnitude_bits of a[j] − b[j] (of a[j] when b is null), j < n, in
// order; returns r. The high histogram counts zeros with one addition, not a serial chain of
// increments of bin 0; computing the magnitudes and dropping the zeros in one loop reads a and b
// once and writes only what is counted (docs/performance.md, "Round 6"). bits has room for n.
size_t nonzero_magnitudes_scalar(const float* a, const float* b, uint32_t* bits, size_t n) {
  size_t kept = 0;
  for (size_t j = 0; j < n; ++j) {
    const float x = b != nullptr ? a[j] - b[j] : a[j];
    const uint32_t v = std::bit_cast<uint32_t>(x) & 0x7FFFFFFFu;
    bits[kept] = v;
    kept += v != 0;
  }
  return kept;
}

#ifdef SMELT_HAVE_AVX2_FILTER
// Stores the nonzero lanes of v, in order, at bits + kept (8 lanes written); returns kept plus
// their count.
__attribute__((target("avx2,popcnt"), always_inline)) inline size_t append_nonzero(
    const CompressTable& table, __m256i v, uint32_t* bits, size_t kept) {
  const uint32_t m = ~static_cast<uint32_t>(_mm256_movemask_ps(
                         _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, _mm256_setzero_si256())))) &
                     0xFFu;
  const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.index[m]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits + kept),
                      _mm256_permutevar8x32_epi32(v, order));
  return kept + static_cast<size_t>(__builtin_popcount(m));
}

__attribute__((target("avx2,popcnt"))) size_t nonzero_magnitudes_avx2(const float* a,
                                                                      const float* b,
                                                                      uint32_t* bits, size_t n) {
  const CompressTable& table = compress_table();
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  size_t kept = 0;
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 x = _mm256_loadu_ps(a + j);
    if (b != nullptr) x = _mm256_sub_ps(x, _mm256_loadu_ps(b + j));
    const __m256i v = _mm256_and_si256(_mm256_castps_si256(x), abs_mask);
    // kept <= j: the store covers [kept, kept + 8), inside bits[0, n).
    kept = append_nonzero(table, v, bits, kept);
  }
  return kept + nonzero_magnitudes_scalar(a + j, b ? b + j : nullptr, bits + kept, n - j);
}
#endif

#ifdef SMELT_HAVE_AVX512_FILTER
__attribute__((target("avx512f,popcnt"))) size_t nonzero_magnitudes_avx512(const float* a,
                                                                           const float* b,
                                                                           uint32_t* bits,
                                                                           size_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i zero = _mm512_setzero_si512();
  size_t kept = 0;
  size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 x = _mm512_loadu_ps(a + j);
    if (b != nullptr) x = _mm512_sub_ps(x, _mm512_loadu_ps(b + j));
    const __m512i v = _mm512_and_si512(_mm512_castps_si512(x), abs_mask);
    const __mmask16 m = _mm512_cmpneq_epi32_mask(v, zero);
    // A compress in a register, then a plain store (kept <= j: inside bits[0, n)).
    _mm512_storeu_si512(bits + kept, _mm512_maskz_compress_epi32(m, v));
    kept += static_cast<size_t>(__builtin_popcount(m));
  }
  return kept + nonzero_magnitudes_scalar(a + j, b ? b + j : nullptr, bits + kept, n - j);
}
#endif

size_t nonzero_magnitudes(const float* a, const float* b, uint32_t* bits, size_t n) {
#ifdef SMELT_HAVE_AVX512_FILTER
  if (cpu_has_avx512f()) return nonzero_magnitudes_avx512(a, b, bits, n);
#endif
#ifdef SMELT_HAVE_AVX2_FILTER
  if (cpu_has_avx2()) return nonzero_magnitudes_avx2(a, b, bits, n);
#endif
  return nonzero_magnitudes_scalar(a, b, bits, n);
}

// nonzero_magnitudes of a − b given as bf16 values (exact in f32, so the same bits). With AVX2 the
// values are widened in registers; otherwise each array is converted into fa and fb (room for n)
// first.
#ifdef SMELT_HAVE_AVX2_FILTER
__attribute__((target("avx2,popcnt"))) size_t nonzero_magnitudes_bf16_avx2(const uint16_t* a,
                                                                           const uint16_t* b,
                                                                           uint32_t* bits,
                                                                           size_t n) {
  const CompressTable& table = compress_table();
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  size_t kept = 0;
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i wa = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + j))), 16);
    const __m256i wb = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + j))), 16);
    const __m256 x = _mm256_sub_ps(_mm256_castsi256_ps(wa), _mm256_castsi256_ps(wb));
    const __m256i v = _mm256_and_si256(_mm256_castps_si256(x), abs_mask);
    kept = append_nonzero(table, v, bits, kept);
  }
  for (; j < n; ++j) {
    const uint32_t v = std::bit_cast<uint32_t>(bf16_to_f32(a[j]) - bf16_to_f32(b[j])) & 0x7FFFFFFFu;
    bits[kept] = v;
    kept += v != 0;
  }
  return kept;
}
#endif

size_t nonzero_magnitudes_bf16(const uint16_t* a, const uint16_t* b, uint32_t* bits, size_t n,
                               float* fa, float* fb) {
#ifdef SMELT_HAVE_AVX2_FILTER
  if (cpu_has_avx2()) return nonzero_magnitudes_bf16_avx2(a, b, bits, n);
#endif
  to_f32(DType::kBF16, a, fa, n);
  to_f32(DType::kBF16, b, fb, n);
  return nonzero_magnitudes(fa, fb, bits, n);
}

// lows must have room for n + 16 values.
size_t filter_lows(const float* a, const float* b, size_t n, uint32_t high_bin, uint32_t* lows,
                   uint64_t* zeros) {
#ifdef SMELT_HAVE_AVX512_FILTER
  if (cpu_has_avx512f()) return filter_lows_avx512(a, b, n, high_bin, lows, zeros);
#endif
#ifdef SMELT_HAVE_AVX2_FILTER
  if (cpu_has_avx2()) return filter_lows_avx2(a, b, n, high_bin, lows, zeros);
#endif
  return filter_lows_scalar(a, b, n, high_bin, lows, zeros);
}

// The window's filter: writes bits[j] − first to keys for the bits[j] in [first, first + span)
// and returns how many it wrote. keys must have room for n + 8 values.
size_t filter_window_scalar(const uint32_t* bits, size_t n, uint32_t first, uint32_t span,
                            uint32_t* keys) {
  size_t matched = 0;
  for (size_t j = 0; j < n; ++j) {
    const uint32_t d = bits[j] - first;  // wraps around below first
    keys[matched] = d;
    matched += d < span;
  }
  return matched;
}

#ifdef SMELT_HAVE_AVX2_FILTER
// filter_window_scalar with 8 lanes; magnitude bits are below 2^31, so signed compares order
// them. Most blocks of 8 have no element in the window and cost two compares and a mask test.
__attribute__((target("avx2,popcnt"))) size_t filter_window_avx2(const uint32_t* bits, size_t n,
                                                                 uint32_t first, uint32_t span,
                                                                 uint32_t* keys) {
  const CompressTable& table = compress_table();
  const __m256i below = _mm256_set1_epi32(static_cast<int>(first) - 1);
  const __m256i after = _mm256_set1_epi32(static_cast<int>(first + span));
  const __m256i shift = _mm256_set1_epi32(static_cast<int>(first));
  size_t matched = 0;
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + j));
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(v, below), _mm256_cmpgt_epi32(after, v));
    const auto m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(in)));
    if (m == 0) continue;
    const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.index[m]));
    const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_sub_epi32(v, shift), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + matched), packed);  // room for n + 8
    matched += static_cast<size_t>(__builtin_popcount(m));
  }
  return matched + filter_window_scalar(bits + j, n - j, first, span, keys + matched);
}
#endif

size_t filter_window(const uint32_t* bits, size_t n, uint32_t first, uint32_t span,
                     uint32_t* keys) {
#ifdef SMELT_HAVE_AVX2_FILTER
  if (cpu_has_avx2()) return filter_window_avx2(bits, n, first, span, keys);
#endif
  return filter_window_scalar(bits, n, first, span, keys);
}

SMELT_ELEMENTWISE uint64_t count_equal(const uint32_t* bits, uint32_t value, size_t n) {
  uint64_t equal = 0;
  for (size_t j = 0; j < n; ++j) equal += bits[j] == value;
  return equal;
}

}  // namespace

namespace {
// One count per low 16-bit value, all zero between uses: pass kLow's and the window's per-chunk
// table (one per thread).
std::vector<uint32_t>& low_counts() {
  thread_local std::vector<uint32_t> counts(kBins, 0);
  return counts;
}
}  // namespace

// kSub x kHighBins 32-bit counts, all zero when the slot is free.
struct TopKMagnitude::Slot {
  std::unique_ptr<uint32_t[]> counts{new uint32_t[kSub * kHighBins]()};
  uint64_t total = 0;  // elements counted since the last flush (keeps counts below 2^32)
};

namespace {

// Private histograms are large (512 KiB) and first-touch page faults are expensive, so freed
// ones (zeroed) are kept for the next selection.
std::mutex slot_pool_mutex;
std::vector<std::unique_ptr<TopKMagnitude::Slot>>& slot_pool() {
  static std::vector<std::unique_ptr<TopKMagnitude::Slot>> pool;
  return pool;
}

}  // namespace

TopKMagnitude::TopKMagnitude(uint64_t numel, uint64_t k, uint64_t max_tie_entries)
    : numel_(numel), k_(k), max_tie_entries_(max_tie_entries) {
  if (k_ == 0 || k_ >= numel_) return;  // nothing or everything is kept: no pass needed
  pass_ = Pass::kHigh;
  histogram_ = std::make_unique<std::atomic<uint64_t>[]>(kBins);
  for (size_t b = 0; b < kBins; ++b) histogram_[b].store(0, std::memory_order_relaxed);
}

std::unique_ptr<TopKMagnitude> TopKMagnitude::with_k_later(uint64_t numel,
                                                           uint64_t max_tie_entries) {
  // Constructed as a selection that needs passes (k = 1 of at least 2), then k is unknown.
  auto t = std::make_unique<TopKMagnitude>(std::max<uint64_t>(numel, 2), 1, max_tie_entries);
  t->numel_ = numel;
  t->k_ = UINT64_MAX;
  return t;
}

void TopKMagnitude::set_k(uint64_t k) {
  if (pass_ != Pass::kHigh || k_ != UINT64_MAX) {
    throw std::logic_error("TopKMagnitude::set_k: only during pass kHigh of with_k_later");
  }
  k_ = k;
  if (k_ == 0 || k_ >= numel_) {
    // Decided without the passes: drop the counts (the private histograms go back zeroed).
    for (Slot* s : slots_) {
      std::fill(s->counts.get(), s->counts.get() + kSub * kHighBins, 0u);
      s->total = 0;
    }
    histogram_.reset();
    lows_ = {};
    pass_ = Pass::kDone;
  }
}

TopKMagnitude::~TopKMagnitude() {
  std::lock_guard pool_lock(slot_pool_mutex);
  for (Slot* s : all_slots_) {
    if (pass_ == Pass::kHigh || pass_ == Pass::kSample) {  // stopped mid-pass: counts not flushed
      std::fill(s->counts.get(), s->counts.get() + kSub * kHighBins, 0u);
      s->total = 0;
    }
    slot_pool().emplace_back(s);
  }
}

void TopKMagnitude::flush(Slot& slot) {
  uint32_t* c = slot.counts.get();
  for (size_t b = 0; b < kHighBins; ++b) {
    uint64_t sum = 0;
    for (size_t s = 0; s < kSub; ++s) {
      sum += c[s * kHighBins + b];
      c[s * kHighBins + b] = 0;
    }
    if (sum != 0) histogram_[b].fetch_add(sum, std::memory_order_relaxed);
  }
  slot.total = 0;
}

void TopKMagnitude::count_high(const uint32_t* bits, size_t n, Slot* slot) {
  if (slot == nullptr) {
    for (size_t j = 0; j < n; ++j) {
      histogram_[bits[j] >> 16].fetch_add(1, std::memory_order_relaxed);
    }
    return;
  }
  uint32_t* h0 = slot->counts.get();
  uint32_t* h1 = h0 + kHighBins;
  uint32_t* h2 = h1 + kHighBins;
  uint32_t* h3 = h2 + kHighBins;
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    ++h0[bits[j] >> 16];
    ++h1[bits[j + 1] >> 16];
    ++h2[bits[j + 2] >> 16];
    ++h3[bits[j + 3] >> 16];
  }
  for (; j < n; ++j) ++h0[bits[j] >> 16];
}

void TopKMagnitude::add_bits(uint64_t offset, const float* a, const float* b, const uint16_t* a16,
                             const uint16_t* b16, size_t n, TopKMagnitude* also) {
  alignas(64) uint32_t bits[kBitsBlock];
  if (a16 != nullptr && !takes_bf16(pass_)) {
    throw std::logic_error("TopKMagnitude::add_difference_bf16: only in passes kSample and kHigh");
  }
  if (also != nullptr && (also->pass_ != pass_ || also->numel_ != numel_ ||
                          (pass_ != Pass::kSample && pass_ != Pass::kHigh))) {
    throw std::logic_error("TopKMagnitude::add_difference: `also` must be in the same pass");
  }
  switch (pass_) {
    case Pass::kSample:
    case Pass::kHigh: {
      // The window records of this selection and of `also` (pass kHigh after a sample): keys
      // gathered block by block, then counted per chunk.
      TopKMagnitude* const owners[2] = {
          pass_ == Pass::kHigh && window_span_ != 0 ? this : nullptr,
          also != nullptr && pass_ == Pass::kHigh && also->window_span_ != 0 ? also : nullptr};
      thread_local std::vector<uint32_t> keys[2];
      for (int o = 0; o < 2; ++o) {
        if (owners[o] != nullptr) keys[o].resize(n + 8);
      }
      size_t matched[2] = {0, 0};
      Slot* slot = nullptr;
      if (numel_ >= kPrivateHistogramMin) {
        std::lock_guard lock(mutex_);
        if (!slots_.empty()) {
          slot = slots_.back();
          slots_.pop_back();
        } else {
          {
            std::lock_guard pool_lock(slot_pool_mutex);
            if (!slot_pool().empty()) {
              slot = slot_pool().back().release();
              slot_pool().pop_back();
            }
          }
          if (slot == nullptr) slot = new Slot;
          all_slots_.push_back(slot);
        }
      }
      uint64_t zeros = 0;  // elements of magnitude 0 in this chunk
      for (size_t start = 0; start < n; start += kBitsBlock) {
        const size_t m = std::min(kBitsBlock, n - start);
        if (slot != nullptr && slot->total + m > UINT32_MAX) flush(*slot);
        size_t counted = m;  // bits[0, counted) are counted (zeros dropped with a slot)
        // bf16 inputs: converted block by block into these where a kernel needs f32.
        alignas(64) float fa[kBitsBlock], fb[kBitsBlock];
        const float* pa = a16 != nullptr ? fa : a + start;
        const float* pb = a16 != nullptr ? fb : b ? b + start : nullptr;
        if (slot != nullptr) {
          counted = a16 != nullptr
                        ? nonzero_magnitudes_bf16(a16 + start, b16 + start, bits, m, fa, fb)
                        : nonzero_magnitudes(pa, pb, bits, m);
          slot->counts[0] += static_cast<uint32_t>(m - counted);
          zeros += m - counted;
          count_high(bits, counted, slot);
          slot->total += m;
        } else {
          if (a16 != nullptr) {
            to_f32(DType::kBF16, a16 + start, fa, m);
            to_f32(DType::kBF16, b16 + start, fb, m);
          }
          magnitudes(pa, pb, bits, m);
          zeros += count_equal(bits, 0, m);
          count_high(bits, m, slot);
        }
        // Windows start above high bin 0, so zeros are never in one.
        for (int o = 0; o < 2; ++o) {
          if (owners[o] == nullptr) continue;
          matched[o] += filter_window(bits, counted, owners[o]->window_first_,
                                      owners[o]->window_span_, keys[o].data() + matched[o]);
        }
      }
      for (int o = 0; o < 2; ++o) {
        if (owners[o] != nullptr) owners[o]->record_keys(offset, keys[o].data(), matched[o]);
      }
      std::lock_guard lock(mutex_);
      if (slot != nullptr) slots_.push_back(slot);
      zeros_.push_back({offset, zeros, 0});
      return;
    }
    case Pass::kLow: {
      // The low 16 bits of the elements in the high bin, counted per chunk in `counts` (all
      // zero between calls) with the distinct values listed in `seen`.
      std::vector<uint32_t>& counts = low_counts();
      thread_local std::vector<uint16_t> seen;
      seen.clear();
      alignas(64) uint32_t lows[kBitsBlock + 16];
      uint64_t zeros = 0;
      for (size_t start = 0; start < n; start += kBitsBlock) {
        const size_t m = std::min(kBitsBlock, n - start);
        const size_t matched =
            filter_lows(a + start, b ? b + start : nullptr, m, high_bin_, lows, &zeros);
        for (size_t j = 0; j < matched; ++j) {
          if (counts[lows[j]]++ == 0) seen.push_back(static_cast<uint16_t>(lows[j]));
        }
      }
      if (zeros != 0) {  // zeros are only counted when high_bin_ is 0, where they are low value 0
        if (counts[0] == 0) seen.push_back(0);
        counts[0] += static_cast<uint32_t>(zeros);
      }
      ChunkLows record{offset, {}};
      record.entries.reserve(seen.size());
      for (uint16_t low : seen) {
        const uint32_t c = counts[low];
        counts[low] = 0;
        histogram_[low].fetch_add(c, std::memory_order_relaxed);
        record.entries.emplace_back(low, c);
      }
      keep_record(std::move(record));
      return;
    }
    case Pass::kTies: {
      uint64_t equal = 0;
      for (size_t start = 0; start < n; start += kBitsBlock) {
        const size_t m = std::min(kBitsBlock, n - start);
        magnitudes(a + start, b ? b + start : nullptr, bits, m);
        equal += count_equal(bits, threshold_, m);
      }
      std::lock_guard lock(mutex_);
      ties_.push_back({offset, equal, 0});
      return;
    }
    case Pass::kDone:
      throw std::logic_error("TopKMagnitude::add called after the last pass");
  }
}

void TopKMagnitude::keep_record(ChunkLows record) {
  std::lock_guard lock(mutex_);
  if (lows_overflow_) return;
  low_entries_ += record.entries.size() + 1;
  if (low_entries_ > max_tie_entries_) {
    lows_overflow_ = true;
    lows_ = {};
    return;
  }
  lows_.push_back(std::move(record));
}

void TopKMagnitude::record_keys(uint64_t offset, const uint32_t* keys, size_t n) {
  // Bin by bin (a chunk's keys are few), the low 16 bits counted in `counts` (all zero between
  // calls; the size of pass kLow's table) with the distinct values listed in `seen`.
  static_assert(kMaxWindowBins <= 32, "bins present are a 32-bit mask");
  std::vector<uint32_t>& counts = low_counts();
  thread_local std::vector<uint16_t> seen;
  uint32_t bins = 0;  // bit b: some key lies in the window's bin b
  for (size_t j = 0; j < n; ++j) bins |= 1u << (keys[j] >> 16);
  ChunkLows record{offset, {}};
  for (uint32_t bin = 0; bin < kMaxWindowBins; ++bin) {
    if ((bins >> bin & 1u) == 0) continue;
    seen.clear();
    for (size_t j = 0; j < n; ++j) {
      if (keys[j] >> 16 != bin) continue;
      const uint32_t low = keys[j] & 0xFFFFu;
      if (counts[low]++ == 0) seen.push_back(static_cast<uint16_t>(low));
    }
    for (uint16_t low : seen) {
      record.entries.emplace_back(bin << 16 | low, counts[low]);
      counts[low] = 0;
    }
  }
  keep_record(std::move(record));
}

void TopKMagnitude::add(uint64_t offset, const float* x, size_t n) {
  add_bits(offset, x, nullptr, nullptr, nullptr, n, nullptr);
}

void TopKMagnitude::add_difference(uint64_t offset, const float* a, const float* b, size_t n,
                                   TopKMagnitude* also) {
  add_bits(offset, a, b, nullptr, nullptr, n, also);
}

void TopKMagnitude::add_difference_bf16(uint64_t offset, const uint16_t* a, const uint16_t* b,
                                        size_t n, TopKMagnitude* also) {
  add_bits(offset, nullptr, nullptr, a, b, n, also);
}

void TopKMagnitude::sample_first() {
  if (pass_ == Pass::kDone && (k_ == 0 || k_ >= numel_)) return;  // decided without passes
  if (pass_ != Pass::kHigh || !zeros_.empty()) {
    throw std::logic_error("TopKMagnitude::sample_first: only before pass kHigh starts");
  }
  pass_ = Pass::kSample;
}

void TopKMagnitude::choose_window() {
  for (Slot* s : slots_) flush(*s);
  window_first_ = 0;
  window_span_ = 0;
  const uint64_t k = k_ != UINT64_MAX ? k_ : k_estimate_;
  uint64_t sampled = 0;
  for (size_t b = 0; b < kHighBins; ++b) sampled += histogram_[b].load(std::memory_order_relaxed);
  if (k != UINT64_MAX && k > 0 && k < numel_ && sampled > 0) {
    // The k-th largest of numel is near rank r of the sample; the window covers ranks r ± m, m
    // six binomial standard deviations plus 0.2 % of the sample (chunks are clustered samples).
    const double s = static_cast<double>(sampled);
    const double r = static_cast<double>(k) * s / static_cast<double>(numel_);
    const double m = 6.0 * std::sqrt(r * std::max(0.0, 1.0 - r / s)) + 0.002 * s + 4.0;
    const double rank_high = std::max(1.0, r - m), rank_low = std::min(s, r + m);
    const double rank_mid = std::clamp(r, 1.0, s);
    uint64_t zeros = 0;
    for (const TieCount& z : zeros_) zeros += z.equal;
    // Rank r falls among the sample's zeros: the threshold is most likely 0, which pass kHigh
    // decides alone (its zero counts), so no window is recorded (when it is not 0 after all,
    // pass kLow runs).
    const bool zero_threshold = static_cast<double>(sampled - zeros) < rank_mid;
    // Bins holding ranks rank_high, r and rank_low, counted from the top.
    uint32_t high = 0, mid = 0, low = 0;
    bool found_high = false, found_mid = false;
    double above = 0.0;
    for (uint32_t b = kHighBins; b-- > 0;) {
      above += static_cast<double>(histogram_[b].load(std::memory_order_relaxed));
      if (!found_high && above >= rank_high) high = b, found_high = true;
      if (!found_mid && above >= rank_mid) mid = b, found_mid = true;
      if (above >= rank_low) {
        low = b;
        break;
      }
    }
    if (high - low + 1 > kMaxWindowBins) {  // too wide: the bins around rank r
      low = mid >= kMaxWindowBins / 2 ? mid - kMaxWindowBins / 2 : 0;
      high = low + kMaxWindowBins - 1;
    }
    // Bin 0 (zeros, subnormals) has its own one-pass path, and bin 32767 (infinities, NaNs) is
    // left out so that bits below first + span stay below 2^31.
    low = std::max<uint32_t>(low, 1);
    high = std::min<uint32_t>(high, kHighBins - 2);
    if (low <= high && !zero_threshold) {
      window_first_ = low << 16;
      window_span_ = (high - low + 1) << 16;
    }
  }
  for (size_t b = 0; b < kBins; ++b) histogram_[b].store(0, std::memory_order_relaxed);
  zeros_.clear();
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

void TopKMagnitude::finish_low(uint32_t part, bool from_records) {
  if (from_records) {
    // The low-bit histogram of the high bin, from the window's records (pass kLow counts it as
    // it goes, and its records may have overflowed).
    for (size_t b = 0; b < kBins; ++b) histogram_[b].store(0, std::memory_order_relaxed);
    for (const ChunkLows& c : lows_) {
      for (const auto& [key, count] : c.entries) {
        if (key >> 16 == part) {
          histogram_[key & 0xFFFFu].fetch_add(count, std::memory_order_relaxed);
        }
      }
    }
  }
  uint64_t greater = greater_high_;
  const uint32_t low_bin = find_bin(greater);
  const uint64_t equal = histogram_[low_bin].load(std::memory_order_relaxed);
  threshold_ = (high_bin_ << 16) | low_bin;
  greater_ = greater;
  tied_to_keep_ = k_ - greater_;
  split_ties_ = greater_ + equal > k_;
  histogram_.reset();
  if (split_ties_ && !lows_overflow_) {
    // Every chunk's count of elements equal to the threshold, from its record.
    const uint32_t tied = (part << 16) | low_bin;
    ties_.reserve(lows_.size());
    for (const ChunkLows& c : lows_) {
      uint64_t eq = 0;
      for (const auto& [key, count] : c.entries) {
        if (key == tied) eq = count;
      }
      ties_.push_back({c.offset, eq, 0});
    }
  }
  lows_ = {};
}

void TopKMagnitude::end_pass() {
  switch (pass_) {
    case Pass::kSample:
      choose_window();
      pass_ = Pass::kHigh;
      return;
    case Pass::kHigh: {
      if (k_ == UINT64_MAX)
        throw std::logic_error("TopKMagnitude: set_k before the kHigh pass ends");
      for (Slot* s : slots_) flush(*s);
      greater_high_ = 0;
      high_bin_ = find_bin(greater_high_);
      uint64_t zeros = 0;
      for (const TieCount& z : zeros_) zeros += z.equal;
      const uint64_t lowest_bin = histogram_[0].load(std::memory_order_relaxed);
      for (size_t b = 0; b < kBins; ++b) histogram_[b].store(0, std::memory_order_relaxed);
      if (high_bin_ == 0 && lowest_bin == zeros && zeros_.size() <= max_tie_entries_) {
        // The k-th largest is in the lowest bin, and that bin holds only zeros: the threshold is
        // 0, and pass kHigh counted each chunk's zeros, the elements tied with it. Pass kLow
        // would find exactly this.
        threshold_ = 0;
        greater_ = greater_high_;
        tied_to_keep_ = k_ - greater_;
        split_ties_ = greater_ + zeros > k_;
        histogram_.reset();
        if (split_ties_) ties_ = std::move(zeros_);
        zeros_ = {};
        lows_ = {};
        pass_ = Pass::kTies;
        end_pass();
        return;
      }
      zeros_ = {};
      const uint32_t first_bin = window_first_ >> 16;
      if (window_span_ != 0 && !lows_overflow_ && high_bin_ >= first_bin &&
          high_bin_ < first_bin + (window_span_ >> 16)) {
        // The k-th largest fell in the window: its records are pass kLow's (with every chunk's
        // record, so ties never need pass kTies).
        finish_low(high_bin_ - first_bin, true);
        pass_ = Pass::kTies;
        end_pass();
        return;
      }
      lows_ = {};
      lows_overflow_ = false;
      low_entries_ = 0;
      pass_ = Pass::kLow;
      return;
    }
    case Pass::kLow: {
      finish_low(0, false);
      if (split_ties_ && lows_overflow_) {
        pass_ = Pass::kTies;
        return;
      }
      [[fallthrough]];
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

void TopKMagnitude::end_pass_from(TopKMagnitude& other) {
  if ((pass_ != Pass::kHigh && pass_ != Pass::kSample) || other.pass_ != pass_ ||
      other.numel_ != numel_) {
    throw std::logic_error("TopKMagnitude::end_pass_from: both must be in pass kSample or kHigh");
  }
  {
    std::lock_guard lock(other.mutex_);
    for (Slot* s : other.slots_) other.flush(*s);  // flushing again later adds zeros
  }
  for (size_t b = 0; b < kBins; ++b) {
    histogram_[b].store(other.histogram_[b].load(std::memory_order_relaxed),
                        std::memory_order_relaxed);
  }
  {
    std::lock_guard lock(other.mutex_);
    zeros_ = other.zeros_;  // the chunks' zero counts come with the histogram
  }
  end_pass();
}

uint64_t TopKMagnitude::kept_ties(uint64_t offset) const {
  if (!split_ties_) return UINT64_MAX;
  const auto it =
      std::lower_bound(ties_.begin(), ties_.end(), offset,
                       [](const TieCount& t, uint64_t value) { return t.offset < value; });
  if (it == ties_.end() || it->offset != offset) {
    throw std::logic_error("TopKMagnitude::keep_top: chunk not seen by the ties pass");
  }
  const uint64_t keep =
      tied_to_keep_ > it->equal_before ? std::min(tied_to_keep_ - it->equal_before, it->equal) : 0;
  return keep == it->equal ? UINT64_MAX : keep;
}

bool TopKMagnitude::pure_cut(uint64_t offset, uint32_t* cut) const {
  if (pass_ != Pass::kDone) throw std::logic_error("TopKMagnitude::pure_cut before the passes");
  if (k_ == 0 || k_ >= numel_) {
    *cut = k_ == 0 ? UINT32_MAX : 0;
    return true;
  }
  const uint64_t keep_equal = kept_ties(offset);
  if (keep_equal != UINT64_MAX && keep_equal != 0) return false;
  *cut = keep_equal == 0 ? threshold_ + 1 : threshold_;
  return true;
}

SMELT_ELEMENTWISE void keep_band_difference(uint32_t lo, uint32_t hi, const float* a,
                                            const float* b, float* x, size_t n) {
  for (size_t j = 0; j < n; ++j) {
    const float v = a[j] - b[j];
    const uint32_t bits = magnitude_bits(v);
    x[j] = bits >= lo && (bits < hi || bits == 0) ? v : 0.0f;
  }
}

void TopKMagnitude::keep_top(uint64_t offset, float* x, size_t n) const {
  keep_top_difference(offset, x, nullptr, x, n);
}

void TopKMagnitude::keep_top_difference(uint64_t offset, const float* a, const float* b, float* x,
                                        size_t n) const {
  if (pass_ != Pass::kDone) throw std::logic_error("TopKMagnitude::keep_top before the passes");
  if (k_ == 0) {
    std::fill(x, x + n, 0.0f);
    return;
  }
  if (k_ >= numel_) {
    if (b != nullptr) subtract(a, b, x, n);
    return;
  }
  const uint32_t threshold = threshold_;
  const uint64_t keep_equal = kept_ties(offset);
  if (keep_equal == UINT64_MAX) {  // keep |x| >= T
    zero_below(threshold, a, b, x, n);
  } else if (keep_equal == 0) {  // keep |x| > T
    zero_below(threshold + 1, a, b, x, n);
  } else {  // keep |x| > T and the first keep_equal elements equal to T
    if (b != nullptr) subtract(a, b, x, n);
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

}  // namespace smelt::kernels
