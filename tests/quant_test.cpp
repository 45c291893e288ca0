// Tests of the ggml type table and block (de)quantization: hand-built blocks, exact expectations,
// error bounds, and golden hashes of ggml's own reference output.
#include "smelt/kernels/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "smelt/error.h"
#include "smelt/kernels/convert.h"

namespace smelt::kernels {
namespace {

// Little-endian f16 bytes of a value exactly representable in f16.
void put_half(std::vector<uint8_t>& b, size_t at, float v) {
  const uint16_t h = f32_to_f16(v);
  ASSERT_EQ(f16_to_f32(h), v) << "test value must be exact in f16";
  b[at] = static_cast<uint8_t>(h & 0xFF);
  b[at + 1] = static_cast<uint8_t>(h >> 8);
}

float get_half(const std::vector<uint8_t>& b, size_t at) {
  return f16_to_f32(static_cast<uint16_t>(b[at] | (b[at + 1] << 8)));
}

std::vector<float> deq(GgmlType t, const std::vector<uint8_t>& blocks, size_t n) {
  std::vector<float> y(n);
  dequantize(t, blocks.data(), y.data(), n);
  return y;
}

std::vector<uint8_t> quant(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(*ggml_type_bytes(t, x.size()));
  quantize(t, x.data(), q.data(), x.size());
  return q;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Type table.

TEST(QuantTypes, TableMatchesGgmlIdsAndBlockSizes) {
  struct Row {
    int id;
    const char* name;
    uint32_t elems, bytes;
  };
  const Row rows[] = {{0, "f32", 1, 4},       {1, "f16", 1, 2},       {2, "q4_0", 32, 18},
                      {3, "q4_1", 32, 20},    {6, "q5_0", 32, 22},    {7, "q5_1", 32, 24},
                      {8, "q8_0", 32, 34},    {10, "q2_K", 256, 84},  {11, "q3_K", 256, 110},
                      {12, "q4_K", 256, 144}, {13, "q5_K", 256, 176}, {14, "q6_K", 256, 210},
                      {24, "i8", 1, 1},       {25, "i16", 1, 2},      {26, "i32", 1, 4},
                      {27, "i64", 1, 8},      {28, "f64", 1, 8},      {30, "bf16", 1, 2},
                      {20, "iq4_nl", 32, 18}, {39, "mxfp4", 32, 17},  {35, "tq2_0", 256, 66}};
  for (const Row& r : rows) {
    const GgmlTypeTraits* t = ggml_type_traits(static_cast<GgmlType>(r.id));
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(t->name, r.name);
    EXPECT_EQ(t->block_elems, r.elems) << r.name;
    EXPECT_EQ(t->block_bytes, r.bytes) << r.name;
    EXPECT_EQ(parse_ggml_type(r.name), static_cast<GgmlType>(r.id));
  }
  EXPECT_EQ(parse_ggml_type("Q4_K"), GgmlType::kQ4_K);
  EXPECT_EQ(parse_ggml_type("q4_k"), GgmlType::kQ4_K);
  EXPECT_FALSE(parse_ggml_type("q4_2").has_value());
}

TEST(QuantTypes, RemovedAndOutOfRangeIdsAreUnknown) {
  for (int id : {-1, 4, 5, 31, 32, 33, 36, 37, 38, 43, 1000}) {
    EXPECT_EQ(ggml_type_traits(static_cast<GgmlType>(id)), nullptr) << id;
    EXPECT_EQ(ggml_type_name(static_cast<GgmlType>(id)), "type " + std::to_string(id));
  }
}

TEST(QuantTypes, ByteSizesNeedWholeBlocksAndDetectOverflow) {
  EXPECT_EQ(ggml_type_bytes(GgmlType::kQ4_K, 512), 288u);
  EXPECT_EQ(ggml_type_bytes(GgmlType::kQ8_0, 64), 68u);
  EXPECT_EQ(ggml_type_bytes(GgmlType::kBF16, 3), 6u);
  EXPECT_FALSE(ggml_type_bytes(GgmlType::kQ4_K, 100).has_value());
  EXPECT_FALSE(ggml_type_bytes(GgmlType::kF64, UINT64_MAX).has_value());
  EXPECT_FALSE(ggml_type_bytes(static_cast<GgmlType>(4), 32).has_value());
}

TEST(QuantTypes, PlainTypesMapToSmeltDtypes) {
  EXPECT_EQ(ggml_type_dtype(GgmlType::kBF16), DType::kBF16);
  EXPECT_EQ(ggml_type_dtype(GgmlType::kI64), DType::kI64);
  EXPECT_FALSE(ggml_type_dtype(GgmlType::kQ8_0).has_value());
  EXPECT_EQ(ggml_type_for_dtype(DType::kF16), GgmlType::kF16);
  EXPECT_FALSE(ggml_type_for_dtype(DType::kU8).has_value());
  EXPECT_TRUE(ggml_type_traits(GgmlType::kQ6_K)->quantized);
  EXPECT_FALSE(ggml_type_traits(GgmlType::kF64)->quantized);
}

// ---------------------------------------------------------------------------------------------
// Dequantization of hand-built blocks; expectations are plain arithmetic on the layout.

TEST(QuantDequantize, PlainFloatTypes) {
  const std::vector<float> x = {1.0f, -2.5f, 65504.0f, 0.0f};
  std::vector<uint8_t> f32(16);
  std::memcpy(f32.data(), x.data(), 16);
  EXPECT_EQ(deq(GgmlType::kF32, f32, 4), x);
  std::vector<uint8_t> f16(8);
  for (size_t i = 0; i < 4; ++i) put_half(f16, 2 * i, x[i]);
  EXPECT_EQ(deq(GgmlType::kF16, f16, 4), x);
  // bf16 is the top half of the f32 bits: 1.0 = 0x3F80, -2.5 = 0xC020.
  const std::vector<uint8_t> bf16 = {0x80, 0x3F, 0x20, 0xC0};
  EXPECT_EQ(deq(GgmlType::kBF16, bf16, 2), (std::vector<float>{1.0f, -2.5f}));
}

TEST(QuantDequantize, Q8_0IsSignedBytesTimesScale) {
  std::vector<uint8_t> b(34);
  put_half(b, 0, 0.5f);
  for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));
  const auto y = deq(GgmlType::kQ8_0, b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (j * 8 - 128) * 0.5f) << j;
}

TEST(QuantDequantize, Q4_0LowNibblesFirstHalfHighNibblesSecondHalf) {
  std::vector<uint8_t> b(18);
  put_half(b, 0, 0.25f);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto y = deq(GgmlType::kQ4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 0.25f) << j;
    EXPECT_EQ(y[16 + j], ((15 - j) - 8) * 0.25f) << j;
  }
}

TEST(QuantDequantize, Q4_1AddsTheMinimum) {
  std::vector<uint8_t> b(20);
  put_half(b, 0, 0.5f);
  put_half(b, 2, -1.0f);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(((j * 3) % 16) | (j << 4));
  const auto y = deq(GgmlType::kQ4_1, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], ((j * 3) % 16) * 0.5f - 1.0f) << j;
    EXPECT_EQ(y[16 + j], j * 0.5f - 1.0f) << j;
  }
}

// The fifth bit of element j lives in bit j of the little-endian u32 qh.
TEST(QuantDequantize, Q5_0AndQ5_1TakeTheFifthBitFromQh) {
  auto fifth = [](int e) { return e % 3 == 0 || e == 31; };
  std::vector<uint8_t> b0(22), b1(24);
  put_half(b0, 0, 1.0f);
  put_half(b1, 0, 0.25f);
  put_half(b1, 2, 0.5f);
  uint32_t qh = 0;
  for (int e = 0; e < 32; ++e) qh |= fifth(e) ? (1u << e) : 0u;
  for (int k = 0; k < 4; ++k) {
    b0[2 + k] = static_cast<uint8_t>(qh >> (8 * k));
    b1[4 + k] = static_cast<uint8_t>(qh >> (8 * k));
  }
  auto nib = [](int e) { return (e * 7 + 3) % 16; };
  for (int j = 0; j < 16; ++j) {
    const auto byte = static_cast<uint8_t>(nib(j) | (nib(j + 16) << 4));
    b0[6 + j] = byte;
    b1[8 + j] = byte;
  }
  const auto y0 = deq(GgmlType::kQ5_0, b0, 32);
  const auto y1 = deq(GgmlType::kQ5_1, b1, 32);
  for (int e = 0; e < 32; ++e) {
    const int q = nib(e) + (fifth(e) ? 16 : 0);
    EXPECT_EQ(y0[e], (q - 16) * 1.0f) << e;
    EXPECT_EQ(y1[e], q * 0.25f + 0.5f) << e;
  }
}

// Q2_K: element e = 128*h + 32*g + p uses bits 2g of qs[32h + p], sub-block e/16.
TEST(QuantDequantize, Q2_KTwoBitQuantsWithNibbleScalesAndMins) {
  std::vector<uint8_t> b(84);
  for (int s = 0; s < 16; ++s) b[s] = static_cast<uint8_t>((s % 16) | (((s * 5) % 16) << 4));
  for (int i = 0; i < 64; ++i) b[16 + i] = static_cast<uint8_t>(i * 37 + 11);
  put_half(b, 80, 0.5f);
  put_half(b, 82, 0.25f);
  const auto y = deq(GgmlType::kQ2_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, g = (e % 128) / 32, p = e % 32;
    const int q = (b[16 + 32 * h + p] >> (2 * g)) & 3;
    const int s = e / 16;
    const float expect = 0.5f * (b[s] & 0xF) * q - 0.25f * (b[s] >> 4);
    EXPECT_EQ(y[e], expect) << e;
  }
}

// Q3_K: 2 low bits as Q2_K, the high bit in hmask[p] bit (4h + g) (clear means -4), and 16
// signed 6-bit scales biased by 32.
TEST(QuantDequantize, Q3_KHmaskAndSixBitScales) {
  std::vector<uint8_t> b(110);
  for (int i = 0; i < 32; ++i) b[i] = static_cast<uint8_t>(i * 53 + 1);       // hmask
  for (int i = 0; i < 64; ++i) b[32 + i] = static_cast<uint8_t>(i * 29 + 5);  // qs
  int scale6[16];
  for (int s = 0; s < 16; ++s) scale6[s] = (s * 13 + 7) % 64;
  // Low nibbles: bytes 0-7 hold scales 0-7 (low) and 8-15 (high nibble); top 2 bits: bytes 8-11.
  for (int s = 0; s < 16; ++s) {
    if (s < 8) {
      b[96 + s] |= static_cast<uint8_t>(scale6[s] & 0xF);
    } else {
      b[96 + s - 8] |= static_cast<uint8_t>((scale6[s] & 0xF) << 4);
    }
    b[96 + 8 + s % 4] |= static_cast<uint8_t>((scale6[s] >> 4) << (2 * (s / 4)));
  }
  put_half(b, 108, 0.125f);
  const auto y = deq(GgmlType::kQ3_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, g = (e % 128) / 32, p = e % 32;
    const int low = (b[32 + 32 * h + p] >> (2 * g)) & 3;
    const bool high = (b[p] >> (4 * h + g)) & 1;
    const int q = low - (high ? 0 : 4);
    EXPECT_EQ(y[e], 0.125f * (scale6[e / 16] - 32) * q) << e;
  }
}

// Q4_K/Q5_K: element e = 64c + w; w < 32 is the low nibble of qs[32c + w] (sub-block 2c), else
// the high nibble of qs[32c + w - 32] (sub-block 2c + 1). Q5_K's fifth bit: qh[w % 32] bit
// (2c + (w >= 32)).
void build_k_scales(std::vector<uint8_t>& b, size_t at, const int sc[8], const int mn[8]) {
  for (int j = 0; j < 4; ++j) {
    b[at + j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    b[at + 4 + j] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    b[at + 8 + j] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}

TEST(QuantDequantize, Q4_KAndQ5_KNibblesSixBitScalesAndFifthBit) {
  const int sc[8] = {1, 63, 17, 32, 48, 5, 60, 33};
  const int mn[8] = {0, 9, 63, 40, 16, 31, 2, 50};
  std::vector<uint8_t> b4(144), b5(176);
  put_half(b4, 0, 0.5f);
  put_half(b4, 2, 0.0625f);
  put_half(b5, 0, 0.5f);
  put_half(b5, 2, 0.0625f);
  build_k_scales(b4, 4, sc, mn);
  build_k_scales(b5, 4, sc, mn);
  for (int i = 0; i < 32; ++i) b5[16 + i] = static_cast<uint8_t>(i * 97 + 13);  // qh
  for (int i = 0; i < 128; ++i) {
    b4[16 + i] = static_cast<uint8_t>(i * 71 + 3);
    b5[48 + i] = static_cast<uint8_t>(i * 71 + 3);
  }
  const auto y4 = deq(GgmlType::kQ4_K, b4, 256);
  const auto y5 = deq(GgmlType::kQ5_K, b5, 256);
  for (int e = 0; e < 256; ++e) {
    const int c = e / 64, w = e % 64;
    const int sub = 2 * c + (w >= 32);
    const uint8_t byte = b4[16 + 32 * c + w % 32];
    const int q = w < 32 ? (byte & 0xF) : (byte >> 4);
    const int hi = (b5[16 + w % 32] >> sub) & 1;
    EXPECT_EQ(y4[e], 0.5f * sc[sub] * q - 0.0625f * mn[sub]) << e;
    EXPECT_EQ(y5[e], 0.5f * sc[sub] * (q + 16 * hi) - 0.0625f * mn[sub]) << e;
  }
}

// Q6_K: element e = 128h + 32g + l: low 4 bits from ql[64h + l + 32*(g%2)] (low nibble for g<2,
// high for g>=2), high 2 bits from qh[32h + l] bits 2g, int8 scale of sub-block e/16.
TEST(QuantDequantize, Q6_KSixBitQuantsWithSignedScales) {
  std::vector<uint8_t> b(210);
  for (int i = 0; i < 128; ++i) b[i] = static_cast<uint8_t>(i * 41 + 7);
  for (int i = 0; i < 64; ++i) b[128 + i] = static_cast<uint8_t>(i * 23 + 19);
  const int scales[16] = {1, -1, 127, -128, 5, -7, 64, 0, 3, -100, 50, 2, -2, 9, 11, -33};
  for (int s = 0; s < 16; ++s) b[192 + s] = static_cast<uint8_t>(static_cast<int8_t>(scales[s]));
  put_half(b, 208, 0.03125f);
  const auto y = deq(GgmlType::kQ6_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, g = (e % 128) / 32, l = e % 32;
    const uint8_t lbyte = b[64 * h + l + 32 * (g % 2)];
    const int low = g < 2 ? (lbyte & 0xF) : (lbyte >> 4);
    const int high = (b[128 + 32 * h + l] >> (2 * g)) & 3;
    const int q = (low | (high << 4)) - 32;
    EXPECT_EQ(y[e], 0.03125f * scales[e / 16] * q) << e;
  }
}

TEST(QuantDequantize, UnsupportedTypeAndPartialBlockAreErrorsNamingTheType) {
  std::vector<uint8_t> b(1024);
  std::vector<float> y(256);
  EXPECT_NE(error_of([&] {
              dequantize(static_cast<GgmlType>(16), b.data(), y.data(), 256);
            }).find("iq2_xxs"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dequantize(GgmlType::kQ4_K, b.data(), y.data(), 100); }).find("q4_K"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { dequantize(static_cast<GgmlType>(99), b.data(), y.data(), 1); }).find("99"),
      std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Quantization: exact expectations.

// With amax = 127 the f32 scale is exactly 1, so quants are C roundf of the inputs: halves
// round away from zero (3 and -3 for +-2.5), unlike rint.
TEST(QuantQuantize, Q8_0RoundsHalfAwayFromZero) {
  std::vector<float> x(32, 0.0f);
  x[0] = -127.0f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.49f;
  x[4] = 100.5f;
  x[5] = 126.6f;
  const auto q = quant(GgmlType::kQ8_0, x);
  EXPECT_EQ(get_half(q, 0), 1.0f);
  const std::vector<int> expect = {-127, 3, -3, 0, 101, 127};
  for (size_t j = 0; j < expect.size(); ++j) EXPECT_EQ(static_cast<int8_t>(q[2 + j]), expect[j]);
}

TEST(QuantQuantize, Q8_0ZeroBlockIsAllZeroBytes) {
  const auto q = quant(GgmlType::kQ8_0, std::vector<float>(64, 0.0f));
  EXPECT_EQ(q, std::vector<uint8_t>(68, 0));
}

// Q4_0: d = (signed value of largest magnitude) / -8, quant = min(15, trunc(x/d + 8.5)).
TEST(QuantQuantize, Q4_0ScaleFromSignedMaxAndTruncatingRounding) {
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;   // d = 1
  x[1] = 3.0f;    // 11.5 -> 11
  x[2] = 2.5f;    // 11.0 -> 11: halves round up...
  x[3] = -2.5f;   // 6.0 -> 6: ...towards +inf, not away from zero
  x[4] = 7.9f;    // 16.4 -> clamped to 15
  x[16] = -7.6f;  // 0.9 -> 0
  x[17] = 0.4f;   // 8.9 -> 8
  const auto q = quant(GgmlType::kQ4_0, x);
  EXPECT_EQ(get_half(q, 0), 1.0f);
  auto level = [&](int e) { return e < 16 ? (q[2 + e] & 0xF) : (q[2 + e - 16] >> 4); };
  EXPECT_EQ(level(0), 0);
  EXPECT_EQ(level(1), 11);
  EXPECT_EQ(level(2), 11);
  EXPECT_EQ(level(3), 6);
  EXPECT_EQ(level(4), 15);
  EXPECT_EQ(level(5), 8);  // zeros map to the middle level
  EXPECT_EQ(level(16), 0);
  EXPECT_EQ(level(17), 8);
}

TEST(QuantQuantize, Q4_0FirstOfEqualMagnitudesPicksTheSign) {
  std::vector<float> x(32, 1.0f);
  x[3] = 8.0f;
  x[9] = -8.0f;
  EXPECT_EQ(get_half(quant(GgmlType::kQ4_0, x), 0), -1.0f);
  std::swap(x[3], x[9]);
  EXPECT_EQ(get_half(quant(GgmlType::kQ4_0, x), 0), 1.0f);
}

// All-zero input: d is -0.0 (0 / -8) and every quant is the middle level 8.
TEST(QuantQuantize, Q4_0ZeroBlockIsNegativeZeroScaleAndMiddleLevels) {
  const auto q = quant(GgmlType::kQ4_0, std::vector<float>(32, 0.0f));
  std::vector<uint8_t> expect(18, 0x88);
  expect[0] = 0x00;
  expect[1] = 0x80;
  EXPECT_EQ(q, expect);
}

TEST(QuantQuantize, KQuantZeroBlocksAreAllZeroBytes) {
  for (GgmlType t : {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    const auto q = quant(t, std::vector<float>(256, 0.0f));
    EXPECT_EQ(q, std::vector<uint8_t>(q.size(), 0)) << ggml_type_name(t);
  }
}

TEST(QuantQuantize, KScalePackingRoundTripsThroughGetScaleMinK4) {
  std::mt19937 rng(7);
  for (int rep = 0; rep < 200; ++rep) {
    uint8_t sc[8], mn[8], packed[12];
    for (int j = 0; j < 8; ++j) {
      sc[j] = static_cast<uint8_t>(rng() % 64);
      mn[j] = static_cast<uint8_t>(rng() % 64);
    }
    pack_scale_min_k4(sc, mn, packed);
    for (int j = 0; j < 8; ++j) {
      uint8_t s, m;
      get_scale_min_k4(j, packed, &s, &m);
      ASSERT_EQ(s, sc[j]);
      ASSERT_EQ(m, mn[j]);
    }
  }
  // Scale 4 = 63: its low nibble goes to byte 8, its top two bits to bits 6-7 of byte 0.
  const uint8_t sc[8] = {0, 0, 0, 0, 63, 0, 0, 0}, mn[8] = {};
  uint8_t packed[12];
  pack_scale_min_k4(sc, mn, packed);
  EXPECT_EQ(packed[0], 0xC0);
  EXPECT_EQ(packed[8], 0x0F);
}

TEST(QuantQuantize, UnsupportedTargetIsAnErrorNamingTheType) {
  std::vector<float> x(256);
  std::vector<uint8_t> q(1024);
  EXPECT_NE(error_of([&] { quantize(GgmlType::kQ4_1, x.data(), q.data(), 256); }).find("q4_1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quantize(GgmlType::kQ2_K, x.data(), q.data(), 256); }).find("q2_K"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quantize(GgmlType::kQ8_0, x.data(), q.data(), 33); }).find("q8_0"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Quantization: properties on varied blocks.

// Blocks of 256 values of several characters: gaussian, all-negative, constant, zeros with one
// huge outlier, mostly tiny with a spike.
std::vector<std::vector<float>> property_blocks() {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> blocks;
  for (float scale : {0.02f, 1.0f, 300.0f}) {
    std::vector<float> g(256), neg(256), outlier(256, 0.0f), spike(256);
    for (int i = 0; i < 256; ++i) {
      g[i] = normal(rng) * scale;
      neg[i] = -std::fabs(normal(rng)) * scale;
      spike[i] = normal(rng) * scale * 0.001f;
    }
    outlier[77] = 1000.0f * scale;
    spike[5] = -50.0f * scale;
    blocks.insert(blocks.end(), {g, neg, outlier, spike, std::vector<float>(256, 1.5f * scale),
                                 std::vector<float>(256, -0.75f * scale)});
  }
  return blocks;
}

// Q8_0: each value is within half a step of the f32 scale, plus what rounding the scale to f16
// moves the largest quant (127 * |d16 - d|).
TEST(QuantQuantize, Q8_0ErrorIsAtMostHalfAStep) {
  for (const auto& x : property_blocks()) {
    const auto q = quant(GgmlType::kQ8_0, x);
    const auto y = deq(GgmlType::kQ8_0, q, x.size());
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
      const float d = amax / 127;
      const float d16 = get_half(q, 34 * b);
      const float bound = d / 2 + 127 * std::fabs(d16 - d) + 1e-6f * amax;
      for (int j = 0; j < 32; ++j) {
        ASSERT_LE(std::fabs(y[32 * b + j] - x[32 * b + j]), bound) << b << " " << j;
      }
    }
  }
}

// Q4_0: half a step, except values beyond +7.5 steps (opposite sign to the extreme), which are
// clamped to level 15 and so err by up to a whole step.
TEST(QuantQuantize, Q4_0ErrorIsHalfAStepOrOneStepWhenClamped) {
  for (const auto& x : property_blocks()) {
    const auto q = quant(GgmlType::kQ4_0, x);
    const auto y = deq(GgmlType::kQ4_0, q, x.size());
    for (size_t b = 0; b < x.size() / 32; ++b) {
      const float d16 = std::fabs(get_half(q, 18 * b));
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
      const float d = amax / 8;
      for (int j = 0; j < 32; ++j) {
        const float v = x[32 * b + j];
        const bool clamped = std::fabs(v) > 7.5f * d;
        const float bound = (clamped ? d : d / 2) + 8 * std::fabs(d16 - d) + 1e-6f * amax;
        ASSERT_LE(std::fabs(y[32 * b + j] - v), bound) << b << " " << j;
      }
    }
  }
}

// K-quants: the search fits each sub-block (32 values for Q4_K/Q5_K, 16 for Q6_K) with its own
// scale (and min), themselves quantized to 6 (Q6_K: 8) bits relative to the block's largest. So
// an element errs by at most one level of its sub-block's range (taken to include 0, as the
// mins are never positive) plus one 63rd of the whole block's range. Random trials show at most
// 0.86 of this bound.
TEST(QuantQuantize, KQuantErrorStaysWithinOneLevelOfSubBlockPlusScaleResolution) {
  struct Case {
    GgmlType t;
    int levels;
    int sub;
  };
  for (const Case c : {Case{GgmlType::kQ4_K, 15, 32}, Case{GgmlType::kQ5_K, 31, 32},
                       Case{GgmlType::kQ6_K, 63, 16}}) {
    for (const auto& x : property_blocks()) {
      const auto y = deq(c.t, quant(c.t, x), x.size());
      float block_lo = 0, block_hi = 0;
      for (float v : x) {
        block_lo = std::min(block_lo, v);
        block_hi = std::max(block_hi, v);
      }
      for (size_t s = 0; s < x.size() / c.sub; ++s) {
        float lo = 0, hi = 0;
        for (int j = 0; j < c.sub; ++j) {
          lo = std::min(lo, x[c.sub * s + j]);
          hi = std::max(hi, x[c.sub * s + j]);
        }
        const float bound = (hi - lo) / c.levels + (block_hi - block_lo) / 63.0f;
        for (int j = 0; j < c.sub; ++j) {
          ASSERT_LE(std::fabs(y[c.sub * s + j] - x[c.sub * s + j]), bound)
              << ggml_type_name(c.t) << " sub-block " << s << " element " << j;
        }
      }
    }
  }
}

TEST(QuantQuantize, KQuantRelativeRmsErrorOnGaussianWeights) {
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(256 * 64);
  for (float& v : x) v = normal(rng);
  double sum2 = 0;
  for (float v : x) sum2 += double(v) * v;
  // Typical relative RMS errors of these formats are about 0.09, 0.045 and 0.022.
  for (auto [t, limit] : {std::pair{GgmlType::kQ4_K, 0.11}, std::pair{GgmlType::kQ5_K, 0.055},
                          std::pair{GgmlType::kQ6_K, 0.028}, std::pair{GgmlType::kQ8_0, 0.008},
                          std::pair{GgmlType::kQ4_0, 0.13}}) {
    const auto y = deq(t, quant(t, x), x.size());
    double err2 = 0;
    for (size_t i = 0; i < x.size(); ++i) err2 += double(y[i] - x[i]) * (y[i] - x[i]);
    EXPECT_LT(std::sqrt(err2 / sum2), limit) << ggml_type_name(t);
  }
}

// Requantizing dequantized Q8_0/Q4_0 data reproduces the blocks: the extreme value is exactly
// -8*d16 (Q4_0) or 127*d16 (Q8_0), so the recomputed f32 scale equals the stored f16 one and
// every level maps back to itself. (Not true when the f16 scale underflows to zero.)
TEST(QuantQuantize, Q8_0AndQ4_0RequantizeTheirOwnOutputIdentically) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float scale : {0.01f, 1.0f, 1000.0f}) {
    std::vector<float> x(32 * 512);
    for (float& v : x) v = normal(rng) * scale;
    for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0}) {
      const auto q1 = quant(t, x);
      const auto q2 = quant(t, deq(t, q1, x.size()));
      EXPECT_EQ(q1, q2) << ggml_type_name(t) << " scale " << scale;
    }
  }
}

TEST(QuantQuantize, PlainTypesConvertWithRoundToNearestEven) {
  // f16 has 10 fraction bits: 1 + 2^-11 is a tie that goes to the even 1.0, and 1 + 3*2^-11 a
  // tie that goes to the even 1 + 2^-9.
  const std::vector<float> x = {1.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, -3.0f};
  const auto f16 = quant(GgmlType::kF16, x);
  EXPECT_EQ(get_half(f16, 2), 1.0f);
  EXPECT_EQ(get_half(f16, 4), 1.0f + 0x1p-9f);
  EXPECT_EQ(deq(GgmlType::kF32, quant(GgmlType::kF32, x), 4), x);
  const auto bf = quant(GgmlType::kBF16, x);
  EXPECT_EQ(bf[6], 0x40);  // -3.0 = 0xC040
  EXPECT_EQ(bf[7], 0xC0);
}

// ---------------------------------------------------------------------------------------------
// Golden outputs: FNV-1a hashes of what ggml's reference functions (ggml-org/ggml commit d99724f,
// ggml-base built for plain x86-64 by its CMake) produce for the same deterministic inputs.
// tests/reference/quant_golden.sh builds that ggml and prints these constants.

uint64_t lcg_state;
uint32_t lcg() {
  lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<uint32_t>(lcg_state >> 33);
}

uint64_t fnv1a(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<const uint8_t*>(p)[i];
    h *= 1099511628211ULL;
  }
  return h;
}

// 64 blocks of 256 values: uniform at scales 2^-9..2^3, some all-positive, all-negative, with
// outliers, zero runs, constant halves, or on a coarse grid (many rounding ties).
std::vector<float> golden_inputs() {
  lcg_state = 12345;
  std::vector<float> x(256 * 64);
  for (size_t b = 0; b < 64; ++b) {
    const float scale = std::ldexp(1.0f, static_cast<int>(b % 13) - 9);
    for (size_t i = 0; i < 256; ++i) {
      const float u = static_cast<float>(lcg() >> 8) / 16777216.0f - 0.5f;
      float v = u * scale;
      switch (b % 8) {
        case 1:
          v = std::fabs(v);
          break;
        case 2:
          v = -std::fabs(v);
          break;
        case 3:
          if (i % 61 == 7) v *= 200.0f;
          break;
        case 4:
          if (i % 32 < 8) v = 0.0f;
          break;
        case 5:
          v = i < 128 ? scale * 0.25f : v;
          break;
        case 6:
          v = std::round(u * 16.0f) * scale;
          break;
        default:
          break;
      }
      x[b * 256 + i] = v;
    }
  }
  return x;
}

TEST(QuantGolden, QuantizeMatchesGgmlReferenceBitForBit) {
  const std::vector<float> x = golden_inputs();
  const std::pair<GgmlType, uint64_t> expect[] = {{GgmlType::kQ8_0, 0xe990acb5a2fa494bULL},
                                                  {GgmlType::kQ4_0, 0xe4e4784ddff19c47ULL},
                                                  {GgmlType::kQ4_K, 0x8fed47ecbaf3f628ULL},
                                                  {GgmlType::kQ5_K, 0x990787dfdc4eb985ULL},
                                                  {GgmlType::kQ6_K, 0xcbe5f1dfc589e8bcULL}};
  for (const auto& [t, hash] : expect) {
    const auto q = quant(t, x);
    EXPECT_EQ(fnv1a(q.data(), q.size()), hash) << ggml_type_name(t);
  }
}

TEST(QuantGolden, DequantizeMatchesGgmlReferenceBitForBit) {
  const std::pair<GgmlType, uint64_t> expect[] = {
      {GgmlType::kQ8_0, 0x75c46b8e24a8ba3dULL}, {GgmlType::kQ4_0, 0x40ffd4342e586e73ULL},
      {GgmlType::kQ4_1, 0xa1e015a3f116237fULL}, {GgmlType::kQ5_0, 0x8da4224d8a876d0aULL},
      {GgmlType::kQ5_1, 0xe8bedecf427ce3b1ULL}, {GgmlType::kQ2_K, 0x9ddab73ad7a8264fULL},
      {GgmlType::kQ3_K, 0xf270dca4d9e33986ULL}, {GgmlType::kQ4_K, 0x593ce163d614e95cULL},
      {GgmlType::kQ5_K, 0x2c0c108b5d03ed43ULL}, {GgmlType::kQ6_K, 0xf270ab0b43ded0d5ULL}};
  const size_t n = 256 * 64;
  for (const auto& [t, hash] : expect) {
    lcg_state = 777;
    std::vector<uint8_t> bytes(*ggml_type_bytes(t, n));
    for (auto& c : bytes) c = static_cast<uint8_t>(lcg() >> 5);
    // Clearing bit 6 of every odd byte keeps every f16 field finite wherever it lies.
    for (size_t i = 1; i < bytes.size(); i += 2) bytes[i] &= 0xBF;
    const auto y = deq(t, bytes, n);
    EXPECT_EQ(fnv1a(y.data(), y.size() * sizeof(float)), hash) << ggml_type_name(t);
  }
}

}  // namespace
}  // namespace smelt::kernels
