// Ranking by magnitude inside small groups (a row of a matrix) with a stable LSD radix sort, and
// della's rank-dependent random keep decision.
#pragma once

#include <cstddef>
#include <cstdint>

namespace smelt::kernels {

// The largest group rank_by_magnitude accepts (ranks and counts are 32-bit).
inline constexpr uint64_t kMaxRankedGroup = UINT32_MAX;

// Ranks the n elements x[b * stride] (b < n) in ascending order of magnitude_bits (topk.h: −0 =
// +0, every NaN above +inf); among equal magnitudes the higher index comes first. Writes
// ranks[b] = the position of element b in that order (0 for the lowest), so for 0 < n ≤
// kMaxRankedGroup the ranks are a permutation of [0, n). It is the order of std::sort on the
// 64-bit keys (magnitude_bits << 32 | (2³² − 1 − b)), computed with at most three counting passes
// over the bits that differ between elements; scratch is thread-local and reused.
void rank_by_magnitude(const float* x, size_t n, size_t stride, uint32_t* ranks);

// della's keep probability (methods/sparsify_ranked.h) of the element of rank q (0 for the
// lowest) in a group of n: low + ((float(q) / denom) · 2) · epsilon with denom = float(n − 1),
// each operation rounded in f32 (no fused multiply-add).
float della_probability(uint64_t q, float low, float epsilon, float denom);

// della's decision (methods/sparsify_ranked.h) for a group of 2 ≤ n ≤ kMaxRankedGroup elements
// x[b * stride] with ranks r[b] in rank_by_magnitude's order: element b is kept when
// draw_uniform(key, first_counter + b * stride) < p, with, in f32 without fused operations,
// p = low + ((float(r[b]) / float(n − 1)) · 2) · epsilon; otherwise it is set to +0.
// It does not rank every element: counts in coarse magnitude buckets bound each element's rank,
// so its p lies between the p of its bucket's lowest and highest rank (p is monotone in the
// rank), and the draw decides every element whose draw falls outside that interval. Only the few
// others are ranked exactly (docs/performance.md, "Round 3").
void keep_random_by_rank(uint64_t key, uint64_t first_counter, float low, float epsilon, float* x,
                         size_t n, size_t stride);

}  // namespace smelt::kernels
