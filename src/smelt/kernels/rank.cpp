// Ranking by magnitude with a stable LSD radix sort, and della's rank-dependent keep decision
// from coarse magnitude buckets.
#include "smelt/kernels/rank.h"

#include <algorithm>
#include <bit>
#include <vector>

#include "smelt/kernels/compress_avx2.h"
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

// ---------------------------------------------------------------------------------------------
// keep_random_by_rank

using avx2::compress_table;
using avx2::CompressTable;

// A group of n elements gets 2^(bit_width(n) − kBucketDivisorBits) magnitude buckets (between
// n/8 and n/4), at most 2^kMaxBucketBits (plus one for the zeros): more buckets leave fewer
// elements undecided but cost more per group (n/4 to n/2 measured slower on the bench's rows).
constexpr int kBucketDivisorBits = 3;
constexpr int kMaxBucketBits = 11;
// Groups up to this size read p from a table of every rank, built once per (n, low, epsilon) and
// thread; larger ones compute it where needed.
constexpr size_t kMaxProbabilityTable = size_t{1} << 20;
// Up to this many undecided elements are ranked one by one (a counting pass over the group each);
// more rank the whole group with rank_by_magnitude.
constexpr size_t kMaxCountedRanks = 16;

// The magnitude bucket of key k: 0 for the zeros, else 1 + the key's bits [shift, shift + width).
// Among the nonzero keys of a group the bits above shift + width are all the same (shift comes
// from varying_bits), so the bucket is monotone in the key.
struct BucketMap {
  int shift = 0;
  uint32_t mask = 0;
  uint32_t operator()(uint32_t k) const { return ((k >> shift) & mask) + (k != 0); }
};

struct DellaScratch {
  std::vector<float> probability;  // della_probability of every rank, for table_* below
  size_t table_n = 0;
  uint32_t table_low = 0;
  uint32_t table_epsilon = 0;
  std::vector<uint32_t> first_rank;  // per bucket: its count, then the rank of its lowest element
  std::vector<float> p_min, p_max;   // per bucket: the bounds of p over its ranks
  std::vector<uint32_t> keep;        // per element: all ones (kept) or zero (dropped)
  std::vector<uint32_t> open;        // the elements their bucket leaves undecided
  std::vector<uint32_t> index;       // count_buckets' counter of each element
  std::vector<float> u;              // decide_avx2's draws
  std::vector<uint32_t> candidates;  // decide_avx2's elements to compare with their bucket
  std::vector<uint32_t> ranks;       // every element's rank, when many are undecided
};

// Counts the nonzero magnitudes into count[1, buckets). Consecutive elements count into two
// copies of the histogram (the second at count + `copy`, summed into the first at the end), and
// zeros (often half a task vector) into eight sink counters past each copy's buckets instead of
// count[0]: a counter incremented by neighbouring elements makes each increment wait for the
// previous one. count needs 2 · copy entries, copy ≥ buckets + 8. With AVX2 (stride 1) the
// counter indices are computed eight at a time into `index` first: the scalar loop was bound by
// its instruction count.
uint32_t counter_index(uint32_t k, size_t b, BucketMap map, size_t buckets, size_t copy) {
  // map(0) = 0; the sink is added with a mask, as a select becomes a branch that mispredicts.
  const size_t sink = (buckets + (b & 7)) & (size_t{0} - static_cast<size_t>(k == 0));
  return static_cast<uint32_t>(map(k) + sink + (b & 1) * copy);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) size_t counter_indices_avx2(const float* x, size_t n, BucketMap map,
                                                            size_t buckets, size_t copy,
                                                            uint32_t* index) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i bucket_mask = _mm256_set1_epi32(static_cast<int>(map.mask));
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i zero = _mm256_setzero_si256();
  const __m128i shift = _mm_cvtsi32_si128(map.shift);
  // Lane j of a block starting at a multiple of 8: sink buckets + j, copy (j & 1) · copy.
  const __m256i sink = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(buckets)),
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const int c = static_cast<int>(copy);
  const __m256i half = _mm256_setr_epi32(0, c, 0, c, 0, c, 0, c);
  size_t b = 0;
  for (; b + 8 <= n; b += 8) {
    const __m256i k =
        _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + b)), abs_mask);
    const __m256i is_zero = _mm256_cmpeq_epi32(k, zero);
    // Nonzero: 1 + the bucket bits. Zero: the sink (the bucket bits of 0 are 0).
    const __m256i bucket =
        _mm256_add_epi32(_mm256_and_si256(_mm256_srl_epi32(k, shift), bucket_mask),
                         _mm256_blendv_epi8(one, sink, is_zero));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + b), _mm256_add_epi32(bucket, half));
  }
  return b;
}
#endif

void count_buckets(const float* x, size_t n, size_t stride, BucketMap map, size_t buckets,
                   size_t copy, uint32_t* count, std::vector<uint32_t>& index) {
  size_t b = 0;
#if defined(__x86_64__)
  if (stride == 1 && cpu_has_avx2()) {
    index.resize(n);
    b = counter_indices_avx2(x, n, map, buckets, copy, index.data());
    for (size_t i = 0; i < b; ++i) ++count[index[i]];
  }
#endif
  for (; b < n; ++b) ++count[counter_index(magnitude_bits(x[b * stride]), b, map, buckets, copy)];
  for (size_t v = 0; v < buckets; ++v) count[v] += count[copy + v];
}

// The exact rank of element b: the elements of lower magnitude, and those of equal magnitude at a
// higher index. For the few elements their bucket leaves undecided.
[[gnu::optimize("O3")]] uint32_t exact_rank(const float* x, size_t n, size_t stride, size_t b) {
  const uint32_t kb = magnitude_bits(x[b * stride]);
  uint32_t rank = 0;
  if (stride == 1) {
    for (size_t j = 0; j < n; ++j) rank += magnitude_bits(x[j]) < kb;
    for (size_t j = b + 1; j < n; ++j) rank += magnitude_bits(x[j]) == kb;
  } else {
    for (size_t j = 0; j < n; ++j) rank += magnitude_bits(x[j * stride]) < kb;
    for (size_t j = b + 1; j < n; ++j) rank += magnitude_bits(x[j * stride]) == kb;
  }
  return rank;
}

// The draw of element b against its bucket's bounds: keep[b] is all ones when u < p_min (kept
// whatever its rank), zero otherwise; b is appended to open when p_min ≤ u < p_max and x[b] is not
// +0 (a +0 is +0 whether kept or dropped). Elements from b0 on; returns the new count of open.
[[gnu::optimize("no-tree-vectorize")]] size_t decide_scalar(uint64_t key, uint64_t first_counter,
                                                            const float* x, size_t n, size_t stride,
                                                            BucketMap map, const float* p_min,
                                                            const float* p_max, uint32_t* keep,
                                                            uint32_t* open, size_t b0, size_t m) {
  Draws draws(key);
  for (size_t b = b0; b < n; ++b) {
    const uint64_t offset = b * stride;
    const uint32_t bits = std::bit_cast<uint32_t>(x[offset]);
    const uint32_t v = map(bits & 0x7FFFFFFFu);
    const float u = draws.uniform(first_counter + offset);
    const bool kept = u < p_min[v];
    const bool undecided = !kept && u < p_max[v] && bits != 0;
    keep[b] = 0u - static_cast<uint32_t>(kept);
    open[m] = static_cast<uint32_t>(b);
    m += undecided;
  }
  return m;
}

#if defined(__x86_64__)
// decide_scalar for stride 1 in two steps. Eight lanes at a time with the AVX2 generator
// (random_avx2.h; the counters in one block of 2^32): the draws are stored, a draw below every p
// keeps its element, and the lanes whose draw is below some p (and not +0) are listed as
// candidates, packed by the lane table (compress_avx2.h). Then each candidate, 2·|epsilon| of the
// nonzero elements, is compared with its bucket's bounds. u and candidates need room for n + 8.
__attribute__((target("avx2,popcnt"))) size_t decide_avx2(uint64_t key, uint64_t first_counter,
                                                          const float* x, size_t n, BucketMap map,
                                                          const float* p_min, const float* p_max,
                                                          float p_lowest, float p_highest,
                                                          uint32_t* keep, float* u,
                                                          uint32_t* candidates, uint32_t* open) {
  const CompressTable& table = compress_table();
  avx2::DrawsX8 gen = avx2::draws_x8_start(key, first_counter);
  const __m256i zero = _mm256_setzero_si256();
  const __m256 lowest = _mm256_set1_ps(p_lowest);
  const __m256 highest = _mm256_set1_ps(p_highest);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  size_t listed = 0;
  size_t b = 0;
  for (; b + 8 <= n; b += 8) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + b));
    const __m256 r = avx2::draws_x8_uniform(gen);
    _mm256_storeu_ps(u + b, r);
    const __m256 kept = _mm256_cmp_ps(r, lowest, _CMP_LT_OQ);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keep + b), _mm256_castps_si256(kept));
    const __m256 is_zero = _mm256_castsi256_ps(_mm256_cmpeq_epi32(bits, zero));
    const __m256 maybe = _mm256_cmp_ps(r, highest, _CMP_LT_OQ);
    const auto m = static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_andnot_ps(_mm256_or_ps(kept, is_zero), maybe)));
    const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.index[m]));
    const __m256i index = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(b)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(candidates + listed),
                        _mm256_permutevar8x32_epi32(index, order));
    listed += static_cast<size_t>(__builtin_popcount(m));
  }
  size_t open_count = 0;
  for (size_t i = 0; i < listed; ++i) {
    const uint32_t c = candidates[i];
    const uint32_t v = map(magnitude_bits(x[c]));
    const bool kept = u[c] < p_min[v];
    keep[c] = 0u - static_cast<uint32_t>(kept);
    open[open_count] = c;
    open_count += !kept && u[c] < p_max[v];
  }
  return decide_scalar(key, first_counter, x, n, 1, map, p_min, p_max, keep, open, b, open_count);
}
#endif

[[gnu::optimize("O3")]] void apply_keep(const uint32_t* keep, float* x, size_t n, size_t stride) {
  if (stride == 1) {
    for (size_t b = 0; b < n; ++b) {
      x[b] = std::bit_cast<float>(std::bit_cast<uint32_t>(x[b]) & keep[b]);
    }
  } else {
    for (size_t b = 0; b < n; ++b) {
      float& e = x[b * stride];
      e = std::bit_cast<float>(std::bit_cast<uint32_t>(e) & keep[b]);
    }
  }
}

}  // namespace

[[gnu::optimize("fp-contract=off")]] float della_probability(uint64_t q, float low, float epsilon,
                                                             float denom) {
  const float rank_norm = static_cast<float>(q) / denom;
  return low + (rank_norm * 2.0f) * epsilon;
}

void keep_random_by_rank(uint64_t key, uint64_t first_counter, float low, float epsilon, float* x,
                         size_t n, size_t stride) {
  thread_local DellaScratch s;
  const float denom = static_cast<float>(n - 1);
  const uint32_t last = static_cast<uint32_t>(n - 1);
  const bool table = n <= kMaxProbabilityTable;
  if (table && !(s.table_n == n && s.table_low == std::bit_cast<uint32_t>(low) &&
                 s.table_epsilon == std::bit_cast<uint32_t>(epsilon))) {
    s.probability.resize(n);
    for (uint32_t q = 0; q <= last; ++q) {
      s.probability[q] = della_probability(q, low, epsilon, denom);
    }
    s.table_n = n;
    s.table_low = std::bit_cast<uint32_t>(low);
    s.table_epsilon = std::bit_cast<uint32_t>(epsilon);
  }
  const auto p_of = [&](uint32_t q) {
    return table ? s.probability[q] : della_probability(q, low, epsilon, denom);
  };

  // The buckets: the top `width` of the bits that vary between the nonzero magnitudes.
  size_t zeros = 0;
  const uint32_t varying = varying_bits(x, n, stride, zeros);
  const int width =
      std::clamp(static_cast<int>(std::bit_width(n)) - kBucketDivisorBits, 1, kMaxBucketBits);
  BucketMap map;
  map.mask = (uint32_t{1} << width) - 1;
  map.shift = std::max(0, static_cast<int>(std::bit_width(varying)) - width);
  const size_t buckets = (size_t{1} << width) + 1;

  // Bucket v holds the ranks [first_rank[v], first_rank[v] + count): p lies between p_min[v] and
  // p_max[v] (p is monotone in the rank, increasing or decreasing with the sign of epsilon).
  const size_t copy = buckets + 8;
  s.first_rank.assign(2 * copy, 0);
  count_buckets(x, n, stride, map, buckets, copy, s.first_rank.data(), s.index);
  s.first_rank[0] = static_cast<uint32_t>(zeros);
  s.p_min.resize(buckets);
  s.p_max.resize(buckets);
  const auto bound = [&](auto&& p) {
    uint32_t rank = 0;
    for (size_t v = 0; v < buckets; ++v) {
      const uint32_t count = s.first_rank[v];
      s.first_rank[v] = rank;
      // An empty bucket's bounds are never read; its ranks are clamped into [0, n).
      const float a = p(std::min(rank, last));
      const float b = p(std::min(rank + count - (count != 0), last));
      s.p_min[v] = std::min(a, b);
      s.p_max[v] = std::max(a, b);
      rank += count;
    }
  };
  if (table) {
    const float* probability = s.probability.data();
    bound([probability](uint32_t q) { return probability[q]; });
  } else {
    bound([&](uint32_t q) { return della_probability(q, low, epsilon, denom); });
  }

  s.keep.resize(n);
  s.open.resize(n);
  size_t open = 0;
#if defined(__x86_64__)
  if (stride == 1 && draws_in_one_block(first_counter, n) && cpu_has_avx2()) {
    s.u.resize(n + 8);
    s.candidates.resize(n + 8);
    const float p_first = p_of(0), p_last = p_of(last);
    open = decide_avx2(key, first_counter, x, n, map, s.p_min.data(), s.p_max.data(),
                       std::min(p_first, p_last), std::max(p_first, p_last), s.keep.data(),
                       s.u.data(), s.candidates.data(), s.open.data());
  } else
#endif
  {
    open = decide_scalar(key, first_counter, x, n, stride, map, s.p_min.data(), s.p_max.data(),
                         s.keep.data(), s.open.data(), 0, 0);
  }

  // The undecided elements are few (0 to 3 per row of the benchmark's bf16 task vectors at n =
  // 2048): each is ranked by counting over the group, or, when crowded buckets leave many
  // undecided, the whole group is ranked.
  const bool rank_all = open > kMaxCountedRanks;
  if (rank_all) {
    s.ranks.resize(n);
    rank_by_magnitude(x, n, stride, s.ranks.data());
  }
  Draws draws(key);
  for (size_t i = 0; i < open; ++i) {
    const uint32_t b = s.open[i];
    const uint32_t q = rank_all ? s.ranks[b] : exact_rank(x, n, stride, b);
    const float u = draws.uniform(first_counter + uint64_t{b} * stride);
    s.keep[b] = 0u - static_cast<uint32_t>(u < p_of(q));
  }
  apply_keep(s.keep.data(), x, n, stride);
}

}  // namespace smelt::kernels
