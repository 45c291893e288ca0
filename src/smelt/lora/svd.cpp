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

// Overwrites the column-major rows×cols matrix y (rows >= cols, leading dimension rows; the
// same bytes are the row-major cols×rows transpose) with an orthonormal basis of its columns.
// Column-major, so LAPACKE calls LAPACK on y directly instead of transposing it twice.
void orthonormalize(std::vector<float>& y, size_t rows, size_t cols) {
  std::vector<float> tau(cols);
  const int ri = as_int(rows, "rows"), ci = as_int(cols, "columns");
  int info = LAPACKE_sgeqrf(LAPACK_COL_MAJOR, ri, ci, y.data(), ri, tau.data());
  if (info == 0) info = LAPACKE_sorgqr(LAPACK_COL_MAJOR, ri, ci, ci, y.data(), ri, tau.data());
  if (info != 0) fail("LAPACK QR failed (info {}): the matrix holds NaN or infinity?", info);
}

// C (m×n) = op(A) · op(B), row-major, with op a transposition where asked; lda/ldb are the
// stored row lengths.
void gemm_op(bool ta, bool tb, const float* a, size_t lda, const float* b, size_t ldb, float* c,
             size_t m, size_t k, size_t n) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              as_int(m, "rows"), as_int(n, "columns"), as_int(k, "inner"), 1.0f, a,
              as_int(lda, "lda"), b, as_int(ldb, "ldb"), 0.0f, c, as_int(n, "ldc"));
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
  // Transposed factors throughout (Ωᵀ l×n, Qᵀ l×m, Zᵀ l×n, all row-major): every product reads
  // A as stored and every QR is column-major. Ω's element (j, i) is draw j·l + i.
  std::vector<float> omega_t(l * n);
  for (size_t j = 0; j < n; ++j) {
    for (size_t i = 0; i < l; ++i)
      omega_t[i * n + j] = kernels::random_normal(options.key, j * l + i);
  }
  std::vector<float> qt(l * m), zt(l * n);
  gemm_op(false, true, omega_t.data(), n, a, n, qt.data(), l, n, m);  // Yᵀ = Ωᵀ Aᵀ
  orthonormalize(qt, m, l);
  for (size_t it = 0; it < options.power_iters; ++it) {
    gemm_op(false, false, qt.data(), m, a, n, zt.data(), l, m, n);  // Zᵀ = Qᵀ A
    orthonormalize(zt, n, l);
    gemm_op(false, true, zt.data(), n, a, n, qt.data(), l, n, m);  // Yᵀ = Zᵀ Aᵀ
    orthonormalize(qt, m, l);
  }
  std::vector<float> b(l * n);
  gemm_op(false, false, qt.data(), m, a, n, b.data(), l, m, n);  // B = Qᵀ A
  TruncatedSvd small = exact_svd(b.data(), l, n, k);
  TruncatedSvd r;
  r.m = m, r.n = n, r.k = small.k;
  r.s = std::move(small.s);
  r.vt = std::move(small.vt);
  r.u.resize(m * r.k);
  gemm_op(true, false, qt.data(), m, small.u.data(), r.k, r.u.data(), m, l, r.k);  // U = Q U_B
  return r;
}

}  // namespace smelt::lora
