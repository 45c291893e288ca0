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

// della's decision (methods/sparsify_ranked.h) for a group of n elements x[b * stride] with ranks
// ranks[b]: element b is kept when random_uniform(key, first_counter + b * stride) < p, with, in
// f32 without fused operations, p = low + ((float(ranks[b]) / denom) · 2) · epsilon; otherwise it
// is set to +0. Vectorized with AVX-512DQ where available, with the same bits as scalar code.
void keep_random_ranked(uint64_t key, uint64_t first_counter, const uint32_t* ranks, float low,
                        float epsilon, float denom, float* x, size_t n, size_t stride);

}  // namespace smelt::kernels
