// ggml's tensor type table and the lookups built on it.
#include "smelt/kernels/ggml_type.h"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <cstdint>

namespace smelt::kernels {
namespace {

// ggml's type table (ggml.c type_traits). Removed ids have no entry.
constexpr GgmlTypeTraits kTypes[] = {
    {0, "f32", 1, 4, true, true, false},          {1, "f16", 1, 2, true, true, false},
    {2, "q4_0", 32, 18, true, true, true},        {3, "q4_1", 32, 20, true, false, true},
    {6, "q5_0", 32, 22, true, false, true},       {7, "q5_1", 32, 24, true, false, true},
    {8, "q8_0", 32, 34, true, true, true},        {9, "q8_1", 32, 36, false, false, true},
    {10, "q2_K", 256, 84, true, false, true},     {11, "q3_K", 256, 110, true, false, true},
    {12, "q4_K", 256, 144, true, true, true},     {13, "q5_K", 256, 176, true, true, true},
    {14, "q6_K", 256, 210, true, true, true},     {15, "q8_K", 256, 292, false, false, true},
    {16, "iq2_xxs", 256, 66, false, false, true}, {17, "iq2_xs", 256, 74, false, false, true},
    {18, "iq3_xxs", 256, 98, false, false, true}, {19, "iq1_s", 256, 50, false, false, true},
    {20, "iq4_nl", 32, 18, false, false, true},   {21, "iq3_s", 256, 110, false, false, true},
    {22, "iq2_s", 256, 82, false, false, true},   {23, "iq4_xs", 256, 136, false, false, true},
    {24, "i8", 1, 1, false, false, false},        {25, "i16", 1, 2, false, false, false},
    {26, "i32", 1, 4, false, false, false},       {27, "i64", 1, 8, false, false, false},
    {28, "f64", 1, 8, true, false, false},        {29, "iq1_m", 256, 56, false, false, true},
    {30, "bf16", 1, 2, true, true, false},        {34, "tq1_0", 256, 54, false, false, true},
    {35, "tq2_0", 256, 66, false, false, true},   {39, "mxfp4", 32, 17, false, false, true},
    {40, "nvfp4", 64, 36, false, false, true},    {41, "q1_0", 128, 18, false, false, true},
    {42, "q2_0", 64, 18, false, false, true},
};
constexpr int kTypeIdLimit = 43;  // GGML_TYPE_COUNT

constexpr std::array<int8_t, kTypeIdLimit> make_type_index() {
  std::array<int8_t, kTypeIdLimit> index{};
  for (auto& i : index) i = -1;
  for (size_t i = 0; i < std::size(kTypes); ++i) index[kTypes[i].id] = static_cast<int8_t>(i);
  return index;
}
constexpr std::array<int8_t, kTypeIdLimit> kTypeIndex = make_type_index();

}  // namespace

const GgmlTypeTraits* ggml_type_traits(GgmlType type) {
  const auto id = static_cast<int32_t>(type);
  if (id < 0 || id >= kTypeIdLimit || kTypeIndex[id] < 0) return nullptr;
  return &kTypes[kTypeIndex[id]];
}

std::string ggml_type_name(GgmlType type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  return t ? std::string(t->name) : fmt::format("type {}", static_cast<int32_t>(type));
}

std::optional<GgmlType> parse_ggml_type(std::string_view name) {
  for (const GgmlTypeTraits& t : kTypes) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(name[i])) ==
             std::tolower(static_cast<unsigned char>(t.name[i]));
    }
    if (same) return static_cast<GgmlType>(t.id);
  }
  return std::nullopt;
}

std::optional<uint64_t> ggml_type_bytes(GgmlType type, uint64_t n) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  if (t == nullptr || n % t->block_elems != 0) return std::nullopt;
  const uint64_t blocks = n / t->block_elems;
  if (blocks > UINT64_MAX / t->block_bytes) return std::nullopt;
  return blocks * t->block_bytes;
}

std::optional<DType> ggml_type_dtype(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return DType::kF32;
    case GgmlType::kF16:
      return DType::kF16;
    case GgmlType::kBF16:
      return DType::kBF16;
    case GgmlType::kF64:
      return DType::kF64;
    case GgmlType::kI8:
      return DType::kI8;
    case GgmlType::kI16:
      return DType::kI16;
    case GgmlType::kI32:
      return DType::kI32;
    case GgmlType::kI64:
      return DType::kI64;
    default:
      return std::nullopt;
  }
}

std::optional<GgmlType> ggml_type_for_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return GgmlType::kF32;
    case DType::kF16:
      return GgmlType::kF16;
    case DType::kBF16:
      return GgmlType::kBF16;
    case DType::kF64:
      return GgmlType::kF64;
    case DType::kI8:
      return GgmlType::kI8;
    case DType::kI16:
      return GgmlType::kI16;
    case DType::kI32:
      return GgmlType::kI32;
    case DType::kI64:
      return GgmlType::kI64;
    default:
      return std::nullopt;
  }
}

}  // namespace smelt::kernels
