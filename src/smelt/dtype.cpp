// Element type tables.
#include "smelt/dtype.h"

#include <array>

namespace smelt {
namespace {

struct DTypeInfo {
  std::string_view name;
  int bits;
};

constexpr std::array<DTypeInfo, kDTypeCount> kInfo = {{
    {"BOOL", 8},        {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
    {"I8", 8},          {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16},    {"U16", 16},    {"F16", 16},    {"BF16", 16},
    {"I32", 32},        {"U32", 32},    {"F32", 32},    {"C64", 64},    {"F64", 64},
    {"I64", 64},        {"U64", 64},
}};

}  // namespace

std::string_view dtype_name(DType t) { return kInfo[static_cast<int>(t)].name; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (int i = 0; i < kDTypeCount; ++i) {
    if (kInfo[i].name == name) return static_cast<DType>(i);
  }
  return std::nullopt;
}

int dtype_bits(DType t) { return kInfo[static_cast<int>(t)].bits; }

bool dtype_is_convertible_float(DType t) {
  switch (t) {
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
    case DType::kF64:
    case DType::kF8_E4M3:
    case DType::kF8_E5M2:
      return true;
    default:
      return false;
  }
}

std::optional<uint64_t> dtype_bytes(DType t, uint64_t n) {
  const uint64_t bits = static_cast<uint64_t>(dtype_bits(t));
  if (n != 0 && bits > UINT64_MAX / n) return std::nullopt;
  const uint64_t total = n * bits;
  if (total % 8 != 0) return std::nullopt;
  return total / 8;
}

std::optional<DType> parse_torch_dtype(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16") return DType::kF16;
  if (name == "float32") return DType::kF32;
  if (name == "int64") return DType::kI64;
  return std::nullopt;
}

std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    case DType::kF32:
      return "float32";
    case DType::kF64:
      return "float64";
    case DType::kI64:
      return "int64";
    case DType::kF8_E4M3:
      return "float8_e4m3fn";
    case DType::kF8_E5M2:
      return "float8_e5m2";
    default:
      return dtype_name(t);
  }
}

}  // namespace smelt
