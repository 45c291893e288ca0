// Row dequantization for the matrix products (docs/inference.md, "Matrix products and threads"):
// the same values as kernels::dequantize, bit for bit, from loops written for the vectorizer and
// compiled per instruction set (kernels::dequantize's K-quant loops are built at -O2 and stay
// mostly scalar).
#pragma once

#include <cstddef>

#include "smelt/kernels/ggml_type.h"

namespace smelt::infer {

// Expands `n` elements (a whole number of blocks) of `type` at src into f32 at dst. Types: those
// of matmul_supports (F32, F16, BF16 go through kernels::dequantize).
void dequant_row(kernels::GgmlType type, const void* src, float* dst, size_t n);

}  // namespace smelt::infer
