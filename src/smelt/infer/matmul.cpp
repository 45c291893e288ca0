// Reference implementation (dequantize a row, dot in f32); the kernels of docs/inference.md
// replace it.
#include "smelt/infer/matmul.h"

#include <vector>

#include "smelt/error.h"
#include "smelt/infer/parallel.h"
#include "smelt/kernels/quant.h"

namespace smelt::infer {

size_t WeightMatrix::row_bytes() const {
  auto b = kernels::ggml_type_bytes(type, static_cast<uint64_t>(cols));
  if (!b)
    fail("weight matrix of type {} cannot hold rows of {} elements", kernels::ggml_type_name(type),
         cols);
  return static_cast<size_t>(*b);
}

bool matmul_supports(kernels::GgmlType type) {
  using kernels::GgmlType;
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void get_row(const WeightMatrix& w, int64_t r, float* dst) {
  const auto* row = static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r) * w.row_bytes();
  kernels::dequantize(w.type, row, dst, static_cast<size_t>(w.cols));
}

void matmul(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, Parallel* par) {
  auto body = [&](size_t begin, size_t end, size_t) {
    std::vector<float> row(static_cast<size_t>(w.cols));
    for (size_t r = begin; r < end; ++r) {
      get_row(w, static_cast<int64_t>(r), row.data());
      for (int64_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * w.cols;
        float s = 0;
        for (int64_t c = 0; c < w.cols; ++c) s += row[c] * xt[c];
        y[t * w.rows + static_cast<int64_t>(r)] = s;
      }
    }
  };
  if (par)
    par->for_range(static_cast<size_t>(w.rows), body);
  else
    body(0, static_cast<size_t>(w.rows), 0);
}

}  // namespace smelt::infer
