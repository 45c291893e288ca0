// Approximation methods for new token rows.
#include "smelt/surgery/approximate.h"

#include <cmath>

#include "smelt/error.h"
#include "smelt/kernels/elementwise.h"

namespace smelt::surgery {

OmpCode omp(const float* target, const Matrix& dictionary, size_t k, double tolerance) {
  const size_t d = dictionary.cols, n = dictionary.rows;
  std::vector<double> t(target, target + d);
  double t_norm = 0;
  for (double x : t) t_norm += x * x;
  t_norm = std::sqrt(t_norm);
  OmpCode code;
  if (t_norm == 0 || n == 0 || k == 0) return code;
  std::vector<std::vector<double>> q;  // orthonormal basis of the selected atoms
  std::vector<std::vector<double>> r;  // r[j][i]: column j of the upper-triangular factor
  std::vector<char> used(n, 0);
  std::vector<double> residual = t;
  double res_norm = t_norm;
  std::vector<double> atom(d);
  std::vector<float> residual_f(d);
  // Selection compares |<residual, row>| / |row|: each row as a unit vector, as OMP is defined.
  std::vector<double> inv_norm(n, 0.0);
  for (size_t j = 0; j < n; ++j) {
    const float* a = dictionary.row(j);
    double s = 0;
    for (size_t i = 0; i < d; ++i) s += static_cast<double>(a[i]) * a[i];
    if (s > 0) inv_norm[j] = 1.0 / std::sqrt(s);
  }
  while (code.atoms.size() < k) {
    size_t best = n;
    double best_score = -1;
    // The selection scan is the hot loop (k * rows * cols per token): the residual rounded to f32
    // and the vectorized dot kernel. Coefficients and residuals stay in f64.
    for (size_t i = 0; i < d; ++i) residual_f[i] = static_cast<float>(residual[i]);
    for (size_t j = 0; j < n; ++j) {
      if (used[j] || inv_norm[j] == 0) continue;
      const double score =
          std::abs(kernels::dot(residual_f.data(), dictionary.row(j), d)) * inv_norm[j];
      if (score > best_score) best_score = score, best = j;
    }
    if (best == n || best_score <= 0) break;
    used[best] = 1;
    const float* a = dictionary.row(best);
    double a_norm = 0;
    for (size_t i = 0; i < d; ++i) atom[i] = a[i], a_norm += atom[i] * atom[i];
    a_norm = std::sqrt(a_norm);
    std::vector<double> proj(q.size(), 0.0);
    for (int pass = 0; pass < 2; ++pass) {  // classical Gram-Schmidt, twice
      for (size_t c = 0; c < q.size(); ++c) {
        double p = 0;
        for (size_t i = 0; i < d; ++i) p += q[c][i] * atom[i];
        for (size_t i = 0; i < d; ++i) atom[i] -= p * q[c][i];
        proj[c] += p;
      }
    }
    double norm = 0;
    for (double x : atom) norm += x * x;
    norm = std::sqrt(norm);
    if (norm <= 1e-10 * a_norm) continue;  // dependent on the atoms already chosen
    for (double& x : atom) x /= norm;
    proj.push_back(norm);
    q.push_back(atom);
    r.push_back(std::move(proj));
    code.atoms.push_back(best);
    // residual = t - Q Q^T t
    residual = t;
    for (const auto& qc : q) {
      double p = 0;
      for (size_t i = 0; i < d; ++i) p += qc[i] * t[i];
      for (size_t i = 0; i < d; ++i) residual[i] -= p * qc[i];
    }
    res_norm = 0;
    for (double x : residual) res_norm += x * x;
    res_norm = std::sqrt(res_norm);
    if (res_norm <= tolerance * t_norm) break;
  }
  // Solve R c = Q^T t by back substitution.
  const size_t m = code.atoms.size();
  std::vector<double> qt(m, 0.0);
  for (size_t c = 0; c < m; ++c) {
    for (size_t i = 0; i < d; ++i) qt[c] += q[c][i] * t[i];
  }
  code.coeffs.assign(m, 0.0);
  for (size_t c = m; c-- > 0;) {
    double s = qt[c];
    for (size_t j = c + 1; j < m; ++j) s -= r[j][c] * code.coeffs[j];
    code.coeffs[c] = s / r[c][c];
  }
  code.relative_residual = res_norm / t_norm;
  return code;
}

SubwordMethod parse_subword_method(const std::string& name) {
  if (name == "mean") return SubwordMethod::kMean;
  if (name == "sum") return SubwordMethod::kSum;
  if (name == "weighted_mean") return SubwordMethod::kWeightedMean;
  if (name == "first_last") return SubwordMethod::kFirstLast;
  fail("--subword-method '{}': expected mean, sum, weighted_mean or first_last", name);
}

void subword_row(const Matrix& rows, const std::vector<int32_t>& ids, SubwordMethod method,
                 bool lm_head, float* out) {
  const size_t h = rows.cols, n = ids.size();
  std::vector<double> acc(h, 0.0);
  if (n > 0) {
    if (method == SubwordMethod::kFirstLast) {
      const float* src = rows.row(static_cast<size_t>(lm_head ? ids.front() : ids.back()));
      for (size_t i = 0; i < h; ++i) acc[i] = src[i];
    } else {
      double total = 0;
      for (size_t p = 0; p < n; ++p) {
        double w = 1;
        if (method == SubwordMethod::kWeightedMean) {
          w = lm_head ? static_cast<double>(n - p) : static_cast<double>(p + 1);
        }
        total += w;
        const float* src = rows.row(static_cast<size_t>(ids[p]));
        for (size_t i = 0; i < h; ++i) acc[i] += w * src[i];
      }
      if (method != SubwordMethod::kSum) {
        for (double& x : acc) x /= total;
      }
    }
  }
  for (size_t i = 0; i < h; ++i) out[i] = static_cast<float>(acc[i]);
}

std::vector<float> mean_row(const Matrix& rows) {
  std::vector<double> acc(rows.cols, 0.0);
  for (size_t r = 0; r < rows.rows; ++r) {
    const float* src = rows.row(r);
    for (size_t i = 0; i < rows.cols; ++i) acc[i] += src[i];
  }
  std::vector<float> out(rows.cols, 0.0f);
  if (rows.rows == 0) return out;
  for (size_t i = 0; i < rows.cols; ++i) out[i] = static_cast<float>(acc[i] / rows.rows);
  return out;
}

}  // namespace smelt::surgery
