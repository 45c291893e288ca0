// The elementwise loops and reductions merge methods run over chunks (differences, weighted sums,
// random masks, TIES sign election, dot products, norms), vectorized and bit-identical on every
// instruction set.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace smelt::kernels {

// Elementwise loops. They vectorize (with runtime dispatch to AVX2/AVX-512) and never fuse a
// multiply and an add, so every instruction set gives the same bits.

// out[j] = a[j] - b[j].
void subtract(const float* a, const float* b, float* out, size_t n);
// out[j] = w * x[j].
void scale(float w, const float* x, float* out, size_t n);
// acc[j] += w * x[j] (the product rounded to f32, then the sum).
void scale_add(float w, const float* x, float* acc, size_t n);
// out[j] = ((w[0] * x[0][j] + w[1] * x[1][j]) + ... + w[k-1] * x[k-1][j]), then divided by
// `divisor` when `divide`: in one loop the roundings of scale, scale_add for each further input and
// divide (k >= 1).
void weighted_sum(const float* const* x, const float* w, size_t k, bool divide, float divisor,
                  float* out, size_t n);
// out[j] = a * x[j] + b * y[j].
void weighted_pair(float a, const float* x, float b, const float* y, float* out, size_t n);
// out[j] = (a * (x[j] − b[j]) + c * (y[j] − b[j])) + 1 * b[j]: weighted_pair of the two
// differences from b, then scale_add(1, b), in one loop with the same roundings.
void weighted_pair_of_differences(float a, const float* x, float c, const float* y, const float* b,
                                  float* out, size_t n);
// model_stock of two models: out[j] = t * m + (1 − t) * b[j] with m = (x[j] + 1 * y[j]) / count
// (f32 roundings as copy, scale_add(1, y), divide(count) and weighted_pair(t, m, 1 − t, b)).
void blend_mean_pair(const float* x, const float* y, float count, float t, const float* b,
                     float* out, size_t n);
// x[j] = 0 where mask[j] != 0 (a NaN mask value counts as nonzero).
void zero_where_nonzero(const float* mask, float* x, size_t n);
// Bit j of the mask (as random_mask's) = x[j] is not +0 (its bits are not all zero: −0 and NaN
// count).
void not_positive_zero(const float* x, uint8_t* bits, size_t n);
// x[j] /= d.
void divide(float* x, float d, size_t n);
// x[j] /= d[j].
void divide(float* x, const float* d, size_t n);
// Zeroes x[j] unless draw_uniform(key, first_counter + j) < p (random.h): a Bernoulli(p) mask
// that depends only on the key and each element's position.
void keep_random(uint64_t key, uint64_t first_counter, float p, float* x, size_t n);
// delta[j] = a[j] - b[j] where draw_uniform(key, first_counter + j) < p, else 0: keep_random
// applied to a − b without storing the difference first.
void keep_random_difference(uint64_t key, uint64_t first_counter, float p, const float* a,
                            const float* b, float* delta, size_t n);
// {abs_sum(a − b), abs_sum(keep_random(a − b))} for that mask, in one pass and with abs_sum's
// summation order (so both equal the two-step results bit for bit).
std::array<double, 2> random_kept_abs_sums(uint64_t key, uint64_t first_counter, float p,
                                           const float* a, const float* b, size_t n);
// Element masks are one bit per element, bit j % 8 of byte j / 8 (ceil(n / 8) bytes; the unused
// high bits of a last partial byte are written as 0).
// Bit j = draw_uniform(key, first_counter + j) < p: keep_random's mask.
void random_mask(uint64_t key, uint64_t first_counter, float p, uint8_t* bits, size_t n);
// delta[j] = bit j ? a[j] - b[j] : +0 (with random_mask's bits, equal to keep_random_difference).
void masked_difference(const uint8_t* bits, const float* a, const float* b, float* delta, size_t n);
// {abs_sum(a − b), abs_sum(masked_difference(bits, a, b))}, in one pass with abs_sum's order.
std::array<double, 2> masked_abs_sums(const uint8_t* bits, const float* a, const float* b,
                                      size_t n);
// TIES sign election over count weighted task vectors d[i] (n values each) with weights w[i]:
// majority[j] = +1 if the sum over i of d[i][j] >= 0, else -1; mixed[j] = sum of the d[i][j]
// whose sign equals majority[j] (zeros never match); divisor[j] = sum of the matching w[i], or 1
// where that is 0. Sums run in i order. majority is scratch of n values.
void elect_sign(const float* const* d, const float* w, size_t count, size_t n, float* majority,
                float* mixed, float* divisor);

// The end of a task-arithmetic-family merge of two task vectors d0, d1 (n values each, after
// sparsification) in one loop, with the roundings of the separate steps (docs/performance.md,
// "Round 6"): D_i = w_i · d_i; with `elect`, elect_sign of (D0, D1) and, where `normalize`,
// mixed / divisor; without, D0 + D1 and, where `normalize`, that / weight_sum; then times lambda
// unless lambda is 1; then out[j] = that + base[j].
void merge_task_pair(const float* d0, const float* d1, float w0, float w1, bool elect,
                     bool normalize, float weight_sum, float lambda, const float* base, float* out,
                     size_t n);

// sce (docs/methods.md). var[j] = the population variance over i < count of the f32 differences
// x[i][j] − b[j], summed (from 0.0, in i order) and squared in double, rounded to f32. count ≥ 1
// (count 0 gives NaN).
void variance_of_differences(const float* const* x, size_t count, const float* b, size_t n,
                             float* var);
// x[j] = key[j] != 0 ? x[j] : +0.
void keep_where_nonzero(const float* key, float* x, size_t n);
// sce's selection keys, in place: v[j] becomes the float whose bits are min(magnitude_bits(v[j]),
// 2³¹ − 2) + 1 (ordered as |v[j]| and never +0). Returns how many v[j] != 0 (NaN counts) there
// were before.
uint64_t selection_keys(float* v, size_t n);
// out[j] = base[j] + mixed / max(divisor, floor), where over i < count in order, with the
// majority sign s = (Σ tau[i][j] >= 0 in f32 from 0) ? 1 : −1, mixed = Σ tau[i][j]·w[i] and
// divisor = Σ w[i] over the i with tau[i][j]·s > 0 (both from +0; the w[i] are >= 0).
void sign_weighted_merge(const float* const* tau, const float* w, size_t count, const float* base,
                         float floor, size_t n, float* out);

// Reductions in double with a fixed summation order, so a chunk's result depends only on its
// values (callers combine chunk results in chunk order).
double dot(const float* a, const float* b, size_t n);  // sum of a[j] * b[j]
// Every dot(v[i], v[j], n) for i <= j, row by row, into upper (m(m+1)/2 values) in one pass over
// L1-sized blocks; each value equals dot()'s bit for bit.
void gram_upper(const float* const* v, size_t m, size_t n, double* upper);
// gram_upper of the two differences x − b and y − b (in f32), without storing them: upper gets
// {dot(d, d), dot(d, e), dot(e, e)} for d = x − b, e = y − b, bit for bit.
void gram2_of_differences(const float* x, const float* y, const float* b, size_t n, double* upper);
double abs_sum(const float* x, size_t n);  // sum of |x[j]|

}  // namespace smelt::kernels
