// Truncated singular value decompositions of row-major f32 matrices for LoRA extraction and
// combination (docs/lora_extract.md): LAPACK's exact SVD, and Halko et al.'s randomized range
// finder with power iterations, seeded and deterministic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace smelt::lora {

// M ≈ U diag(s) Vᵀ with the k largest singular values, s descending. u is m×k and vt is k×n,
// both row-major.
struct TruncatedSvd {
  size_t m = 0, n = 0, k = 0;
  std::vector<float> u;   // m×k
  std::vector<float> s;   // k
  std::vector<float> vt;  // k×n
};

// Options of the randomized range finder (Halko, Martinsson, Tropp 2011, algorithm 4.4).
struct RandomizedSvdOptions {
  size_t oversample = 10;  // extra sample columns beyond the rank
  size_t power_iters = 2;  // subspace iterations, each re-orthonormalized
  uint64_t key = 0;        // the Gaussian test matrix's random stream (kernels/random.h)
};

// The k = min(rank, m, n) leading singular triplets of the row-major m×n matrix `a` (f32 LAPACK
// gesdd). `a` is overwritten. Throws smelt::Error when LAPACK reports a failure (e.g. NaN in a).
TruncatedSvd exact_svd(float* a, size_t m, size_t n, size_t rank);

// The same by the randomized range finder: a sample of rank + oversample columns, power
// iterations, then an exact SVD of the small projected matrix. `a` is left unchanged. Falls back
// to exact_svd (on a copy) when the sample would not be smaller than min(m, n). Same inputs and
// key give bit-identical results.
TruncatedSvd randomized_svd(const float* a, size_t m, size_t n, size_t rank,
                            const RandomizedSvdOptions& options);

// BLAS threads per call, so that callers who run several decompositions at once get results
// independent of how many run: smelt always uses 1 and parallelizes over matrices instead.
void use_single_threaded_blas();

// C (m×n) = A (m×k) · B (k×n), row-major, f32 accumulation by BLAS.
void gemm(const float* a, const float* b, float* c, size_t m, size_t k, size_t n);

}  // namespace smelt::lora
