// Element types of tensors (the safetensors dtype set) and their properties.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace smelt {

// Declared in safetensors' "increasing alignment" order; the writer sorts by it.
enum class DType : uint8_t {
  kBool,
  kF4,
  kF6_E2M3,
  kF6_E3M2,
  kU8,
  kI8,
  kF8_E5M2,
  kF8_E4M3,
  kF8_E8M0,
  kF8_E4M3FNUZ,
  kF8_E5M2FNUZ,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};
inline constexpr int kDTypeCount = 22;

// The safetensors name ("BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType t);
// Parses a safetensors dtype name; nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name);
// Bits per element (4, 6, 8, 16, 32, 64).
int dtype_bits(DType t);
// True for the floating-point types smelt can convert to and from f32 (F16, BF16, F32, F64,
// F8_E4M3, F8_E5M2). Other types (integers, bool, packed 4/6-bit floats) are copied unchanged.
bool dtype_is_convertible_float(DType t);
// Bytes for n elements; nullopt on overflow or when n*bits is not a whole number of bytes.
std::optional<uint64_t> dtype_bytes(DType t, uint64_t n);

// mergekit/torch dtype names in configs ("bfloat16", "float16", "float32", "torch.float16").
// Returns nullopt for a name mergekit does not accept.
std::optional<DType> parse_torch_dtype(std::string_view name);
// The torch name written to config.json ("bfloat16").
std::string_view torch_dtype_name(DType t);

}  // namespace smelt
