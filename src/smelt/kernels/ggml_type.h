// ggml tensor types: the ids GGUF tensor infos store and ggml's table of block sizes and names,
// the one table both the GGUF reader/writer (io/) and the (de)quantizers (kernels/) use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "smelt/dtype.h"

namespace smelt::kernels {

// ggml type ids as stored in GGUF tensor infos (include/ggml.h). Only the ids smelt names are
// listed; a GgmlType may hold any other int32 value (read from a file), which is then unknown.
enum class GgmlType : int32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

// What ggml's type table says about one type, plus what smelt can do with it.
struct GgmlTypeTraits {
  int32_t id = 0;
  std::string_view name;     // ggml's spelling: "f32", "q8_0", "q4_K", "iq2_xxs"
  uint32_t block_elems = 0;  // elements per block (1 for plain element types)
  uint32_t block_bytes = 0;  // bytes per block
  bool can_dequantize = false;
  bool can_quantize = false;
  // True for types stored as blocks with shared scales (everything but F32/F16/BF16/F64/I*).
  bool quantized = false;
};

// Traits of `type`; nullptr when the id is not a valid GGUF tensor type (negative, removed ids
// 4, 5, 31-33, 36-38, or beyond ggml's GGML_TYPE_COUNT of 43).
const GgmlTypeTraits* ggml_type_traits(GgmlType type);
// ggml's name of `type`, or "type N" for an unknown id (for messages).
std::string ggml_type_name(GgmlType type);
// Parses a ggml type name, case-insensitively ("Q4_K", "q8_0", "bf16"); nullopt when unknown.
std::optional<GgmlType> parse_ggml_type(std::string_view name);
// Bytes of `n` elements of `type`; nullopt when the type is unknown, n is not a whole number of
// blocks, or the size overflows.
std::optional<uint64_t> ggml_type_bytes(GgmlType type, uint64_t n);
// The smelt element type of a plain ggml type (F32, F16, BF16, F64, I8, I16, I32, I64); nullopt
// for block-quantized and unknown types.
std::optional<DType> ggml_type_dtype(GgmlType type);
// The ggml type storing elements of `dtype` unchanged; nullopt when GGUF has none (U8, F8, ...).
std::optional<GgmlType> ggml_type_for_dtype(DType dtype);

}  // namespace smelt::kernels
