// Conversion of ggml blocks to and from f32, bit-identical with ggml's reference (de)quantizers
// (the type table itself is in ggml_type.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "smelt/dtype.h"
#include "smelt/kernels/ggml_type.h"

namespace smelt::kernels {

// Expands `n` elements stored as `type` at `blocks` into f32 at dst, computing exactly what ggml's
// dequantize_row_* (or its f16/bf16 widening) computes. Supported: F32, F16, BF16, F64, Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Throws smelt::Error naming the type when
// it is unsupported or `n` is not a whole number of blocks.
void dequantize(GgmlType type, const void* blocks, float* dst, size_t n);

// Encodes `n` f32 values at src as `type` at `blocks` (ggml_type_bytes(type, n) bytes), giving the
// same bytes as ggml's quantize_row_*_ref without an importance matrix, as ggml-base is built for
// x86-64 (no fused multiply-add). Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K. Throws
// smelt::Error naming the type when it is unsupported or `n` is not a whole number of blocks.
void quantize(GgmlType type, const float* src, void* blocks, size_t n);

// Q4_K/Q5_K keep eight 6-bit (scale, min) pairs in 12 bytes. Unpacks pair j (0..7) of `packed`.
void get_scale_min_k4(int j, const uint8_t* packed, uint8_t* scale, uint8_t* min);
// Packs eight (scale, min) pairs, each value below 64, into 12 bytes as quantize_row_q4_K_ref
// does; get_scale_min_k4 reads them back.
void pack_scale_min_k4(const uint8_t scales[8], const uint8_t mins[8], uint8_t packed[12]);

// ggml's f32 -> f16 rounding (round to nearest even; every NaN becomes the quiet NaN 0x7E00 with
// the sign kept, as ggml's software conversion gives). Used for block scales.
uint16_t ggml_f32_to_f16(float f);

}  // namespace smelt::kernels
