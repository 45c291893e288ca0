// Rows for tokens the model never had (docs/tokensurgeon.md, "Approximation methods"): orthogonal
// matching pursuit in the donor's embedding space, subword combinations, the mean, zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace smelt::surgery {

// A row-major f32 matrix (one row per token).
struct Matrix {
  size_t rows = 0, cols = 0;
  std::vector<float> data;
  Matrix() = default;
  Matrix(size_t r, size_t c) : rows(r), cols(c), data(r * c, 0.0f) {}
  float* row(size_t i) { return data.data() + i * cols; }
  const float* row(size_t i) const { return data.data() + i * cols; }
};

// The sparse code of one target vector found by orthogonal matching pursuit.
struct OmpCode {
  std::vector<size_t> atoms;     // selected rows of the dictionary, in selection order
  std::vector<double> coeffs;    // least-squares coefficients, one per atom
  double relative_residual = 0;  // |target - sum coeffs * atoms| / |target|
};

// Orthogonal matching pursuit (f64): greedily selects up to `k` rows of `dictionary` (the one
// with the largest |<residual, row>| / |row|, lowest index on ties; zero rows never), each time
// re-solving the least-squares coefficients of all selected rows by a QR (Gram-Schmidt,
// orthogonalised twice) of them, and stops early once the residual is at most `tolerance` times
// |target|. A row that is a linear combination of those already selected is skipped. `target` has
// dictionary.cols values.
OmpCode omp(const float* target, const Matrix& dictionary, size_t k, double tolerance = 1e-9);

// How subword rows are combined (mergekit's --subword-method).
enum class SubwordMethod : uint8_t { kMean, kSum, kWeightedMean, kFirstLast };
// "mean", "sum", "weighted_mean", "first_last"; throws smelt::Error otherwise.
SubwordMethod parse_subword_method(const std::string& name);

// Combines rows `ids` of `rows` into `out` (rows.cols values): mean, sum, weighted mean (weights
// 1..n so the last piece weighs most for the input embedding; n..1 for the LM head) or the last
// piece (input embedding) / first piece (LM head). No ids: zeros.
void subword_row(const Matrix& rows, const std::vector<int32_t>& ids, SubwordMethod method,
                 bool lm_head, float* out);

// The mean of all rows, in f64, rounded to f32.
std::vector<float> mean_row(const Matrix& rows);

}  // namespace smelt::surgery
