// The matrix products of the forward pass (docs/inference.md): weights stay in their stored type
// (F32, F16, BF16 or a ggml block type) and are converted per tile while multiplying.
#pragma once

#include <cstddef>
#include <cstdint>

#include "smelt/kernels/ggml_type.h"

namespace smelt::infer {

class Parallel;

// A row-major weight matrix [rows x cols] in its stored type: row r starts at
// data + r * row_bytes(). For block types, cols is a whole number of blocks.
struct WeightMatrix {
  kernels::GgmlType type = kernels::GgmlType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  size_t row_bytes() const;
};

// True when matmul and get_row accept `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).
bool matmul_supports(kernels::GgmlType type);

// y[t*rows + r] = sum_c W[r][c] * x[t*cols + c] for t < n_tokens (x: n_tokens x cols f32,
// y: n_tokens x rows f32). Work is split over rows (never over c), so the result does not depend
// on the thread count. `par` may be nullptr (one thread).
void matmul(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, Parallel* par);

// Row r of W as f32 (an embedding lookup).
void get_row(const WeightMatrix& w, int64_t r, float* dst);

}  // namespace smelt::infer
