// Conversion of tensor elements between storage dtypes and f32, bit-exact with torch's
// round-to-nearest-even casts, vectorized with runtime CPU dispatch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "smelt/dtype.h"

namespace smelt::kernels {

// Widens n elements of type `from` at src into f32 at dst. `from` must satisfy
// dtype_is_convertible_float. Exact for every source type except F64 (rounded to nearest even).
void to_f32(DType from, const void* src, float* dst, size_t n);

// Narrows n f32 values into type `to` at dst with round-to-nearest-even, as torch's .to(dtype):
// NaN stays NaN; F16/BF16/F8_E5M2 overflow to ±inf; F8_E4M3 (e4m3fn, no inf) gives NaN for
// |x| >= 480 as torch does, and 448 is its largest finite value.
void from_f32(DType to, const float* src, void* dst, size_t n);

// Instruction sets the bulk conversions have kernels for. kGeneric is portable code (vectorized
// by the compiler for the baseline target where it can); kAvx2 needs AVX2 and F16C; kAvx512
// needs those and AVX-512F. Every set gives the same bits.
enum class ConvertIsa : uint8_t { kGeneric, kAvx2, kAvx512 };

// The widest set this CPU supports; to_f32/from_f32 use it unless set_convert_isa says otherwise.
ConvertIsa best_convert_isa();
// Makes to_f32/from_f32 (in every thread) use `isa`, so tests can cover each kernel on one
// machine. Returns false, changing nothing, when the CPU lacks it.
bool set_convert_isa(ConvertIsa isa);

// Scalar reference conversions (also used by tests and tail loops).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e5m2(float f);

}  // namespace smelt::kernels
