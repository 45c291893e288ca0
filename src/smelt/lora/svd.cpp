// LAPACKE/CBLAS calls behind the truncated SVDs of svd.h.
#include "smelt/lora/svd.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "smelt/error.h"
#include "smelt/kernels/random.h"

namespace smelt::lora {
namespace {

int as_int(size_t v, const char* what) {
  if (v > static_cast<size_t>(INT32_MAX))
    fail("matrix dimension {} ({}) exceeds LAPACK's int", v, what);
  return static_cast<int>(v);
}

// Overwrites the row-major m×l matrix y (m >= l) with an orthonormal basis of its columns.
void orthonormalize(std::vector<float>& y, size_t m, size_t l) {
  std::vector<float> tau(l);
  const int mi = as_int(m, "rows"), li = as_int(l, "columns");
  int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, mi, li, y.data(), li, tau.data());
  if (info == 0) info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, mi, li, li, y.data(), li, tau.data());
  if (info != 0) fail("LAPACK QR failed (info {}): the matrix holds NaN or infinity?", info);
}

// C (m×n) = Aᵀ (m×k, A stored k×m) · B (k×n).
void gemm_tn(const float* a, const float* b, float* c, size_t m, size_t k, size_t n) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, as_int(m, "rows"), as_int(n, "columns"),
              as_int(k, "inner"), 1.0f, a, as_int(m, "lda"), b, as_int(n, "ldb"), 0.0f, c,
              as_int(n, "ldc"));
}

}  // namespace

void use_single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void gemm(const float* a, const float* b, float* c, size_t m, size_t k, size_t n) {
  use_single_threaded_blas();
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(c, c + m * n, 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, as_int(m, "rows"), as_int(n, "columns"),
              as_int(k, "inner"), 1.0f, a, as_int(k, "lda"), b, as_int(n, "ldb"), 0.0f, c,
              as_int(n, "ldc"));
}

TruncatedSvd exact_svd(float* a, size_t m, size_t n, size_t rank) {
  use_single_threaded_blas();
  const size_t full = std::min(m, n);
  TruncatedSvd r;
  r.m = m, r.n = n, r.k = std::min(rank, full);
  if (full == 0) return r;
  // The row-major m×n matrix is the column-major n×m matrix aᵀ = V S Uᵀ: LAPACK's "U" of aᵀ
  // (n×full, column-major) is Vᵀ row-major, and its "Vᵀ" (full×m, column-major) is U row-major.
  std::vector<float> s(full), vt_rows(full * n), u_rows(m * full);
  const int ni = as_int(n, "columns"), mi = as_int(m, "rows"), fi = as_int(full, "rank");
  const int info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', ni, mi, a, ni, s.data(), vt_rows.data(),
                                  ni, u_rows.data(), fi);
  if (info != 0) {
    fail(
        "LAPACK SVD failed (sgesdd info {}): the matrix holds NaN or infinity, or did not "
        "converge",
        info);
  }
  r.s.assign(s.begin(), s.begin() + static_cast<ptrdiff_t>(r.k));
  r.vt.assign(vt_rows.begin(), vt_rows.begin() + static_cast<ptrdiff_t>(r.k * n));
  r.u.resize(m * r.k);
  for (size_t i = 0; i < m; ++i) {
    std::memcpy(&r.u[i * r.k], &u_rows[i * full], r.k * sizeof(float));
  }
  return r;
}

TruncatedSvd randomized_svd(const float* a, size_t m, size_t n, size_t rank,
                            const RandomizedSvdOptions& options) {
  use_single_threaded_blas();
  const size_t full = std::min(m, n);
  const size_t k = std::min(rank, full);
  const size_t l = k + options.oversample;
  if (l >= full) {
    std::vector<float> copy(a, a + m * n);
    return exact_svd(copy.data(), m, n, k);
  }
  // Ω: n×l standard normal, element (i, j) from counter i·l + j of the key's stream.
  std::vector<float> omega(n * l);
  for (size_t i = 0; i < n * l; ++i) omega[i] = kernels::random_normal(options.key, i);
  std::vector<float> q(m * l), z(n * l);
  gemm(a, omega.data(), q.data(), m, n, l);  // Y = A Ω
  orthonormalize(q, m, l);
  for (size_t it = 0; it < options.power_iters; ++it) {
    gemm_tn(a, q.data(), z.data(), n, m, l);  // Z = Aᵀ Q
    orthonormalize(z, n, l);
    gemm(a, z.data(), q.data(), m, n, l);  // Y = A Z
    orthonormalize(q, m, l);
  }
  std::vector<float> b(l * n);
  gemm_tn(q.data(), a, b.data(), l, m, n);  // B = Qᵀ A
  TruncatedSvd small = exact_svd(b.data(), l, n, k);
  TruncatedSvd r;
  r.m = m, r.n = n, r.k = small.k;
  r.s = std::move(small.s);
  r.vt = std::move(small.vt);
  r.u.resize(m * r.k);
  gemm(q.data(), small.u.data(), r.u.data(), m, l, r.k);  // U = Q U_B
  return r;
}

}  // namespace smelt::lora
