// Tests of the dtype conversion kernels against an independent nearest-value search oracle.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/kernels/convert.h"

namespace {

using smelt::DType;
using smelt::kernels::ConvertIsa;
namespace k = smelt::kernels;

// A small float format, described only by its field widths, so the oracle shares no code or
// constants with the kernels.
struct Format {
  const char* name;
  DType dtype;
  int exp_bits;
  int man_bits;
  bool has_inf;  // false for e4m3fn: the all-ones exponent is finite except for the NaN code
  float (*scalar_decode)(uint32_t);
  uint32_t (*scalar_encode)(float);

  int bits() const { return 1 + exp_bits + man_bits; }
  uint32_t codes() const { return 1u << bits(); }
  uint32_t sign_bit() const { return 1u << (bits() - 1); }
};

const Format kBf16{"BF16",
                   DType::kBF16,
                   8,
                   7,
                   true,
                   [](uint32_t c) { return k::bf16_to_f32(static_cast<uint16_t>(c)); },
                   [](float f) -> uint32_t { return k::f32_to_bf16(f); }};
const Format kF16{"F16",
                  DType::kF16,
                  5,
                  10,
                  true,
                  [](uint32_t c) { return k::f16_to_f32(static_cast<uint16_t>(c)); },
                  [](float f) -> uint32_t { return k::f32_to_f16(f); }};
const Format kE4m3{"F8_E4M3",
                   DType::kF8_E4M3,
                   4,
                   3,
                   false,
                   [](uint32_t c) { return k::f8e4m3_to_f32(static_cast<uint8_t>(c)); },
                   [](float f) -> uint32_t { return k::f32_to_f8e4m3(f); }};
const Format kE5m2{"F8_E5M2",
                   DType::kF8_E5M2,
                   5,
                   2,
                   true,
                   [](uint32_t c) { return k::f8e5m2_to_f32(static_cast<uint8_t>(c)); },
                   [](float f) -> uint32_t { return k::f32_to_f8e5m2(f); }};
const Format* const kFormats[] = {&kBf16, &kF16, &kE4m3, &kE5m2};

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
float float_of(uint32_t u) { return std::bit_cast<float>(u); }

// The value of a code from first principles (NaN for NaN codes).
double oracle_decode(const Format& f, uint32_t code) {
  const bool negative = (code & f.sign_bit()) != 0;
  const uint32_t exp_max = (1u << f.exp_bits) - 1;
  const uint32_t man_max = (1u << f.man_bits) - 1;
  const uint32_t exp = (code >> f.man_bits) & exp_max;
  const uint32_t man = code & man_max;
  const int bias = (1 << (f.exp_bits - 1)) - 1;
  double v;
  if (f.has_inf && exp == exp_max) {
    v = man == 0 ? std::numeric_limits<double>::infinity()
                 : std::numeric_limits<double>::quiet_NaN();
  } else if (!f.has_inf && exp == exp_max && man == man_max) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(man), 1 - bias - f.man_bits);
  } else {
    v = std::ldexp(static_cast<double>(man + (1u << f.man_bits)),
                   static_cast<int>(exp) - bias - f.man_bits);
  }
  return negative ? -v : v;
}

// The non-negative finite values of a format in increasing order, plus one virtual step above
// the largest: a value at or past the midpoint to that step rounds to it. For IEEE-like formats
// the step is the infinity code; for e4m3fn torch rounds to the NaN code 0x7F (odd, so the tie
// at 464 goes down to 448) and saturates there.
struct Ladder {
  std::vector<double> values;
  std::vector<uint32_t> codes;
};

Ladder make_ladder(const Format& f) {
  Ladder l;
  for (uint32_t c = 0; c < f.sign_bit(); ++c) {
    const double v = oracle_decode(f, c);
    if (!std::isfinite(v)) continue;
    if (!l.values.empty()) {
      EXPECT_GT(v, l.values.back()) << f.name << " code " << c;
    }
    l.values.push_back(v);
    l.codes.push_back(c);
  }
  const size_t n = l.values.size();
  l.values.push_back(l.values[n - 1] + (l.values[n - 1] - l.values[n - 2]));
  l.codes.push_back(f.has_inf ? ((1u << f.exp_bits) - 1) << f.man_bits : f.sign_bit() - 1);
  return l;
}

const Ladder& ladder(const Format& f) {
  static const Ladder ladders[] = {make_ladder(kBf16), make_ladder(kF16), make_ladder(kE4m3),
                                   make_ladder(kE5m2)};
  for (int i = 0; i < 4; ++i) {
    if (kFormats[i] == &f) return ladders[i];
  }
  std::abort();
}

// The code nearest to x with ties to the even code, by search; nullopt means "some NaN".
std::optional<uint32_t> oracle_encode(const Format& f, float x) {
  if (std::isnan(x)) return std::nullopt;
  const Ladder& l = ladder(f);
  const uint32_t sign = std::signbit(x) ? f.sign_bit() : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= l.values.back()) return l.codes.back() | sign;
  const size_t hi = std::upper_bound(l.values.begin(), l.values.end(), a) - l.values.begin();
  const size_t lo = hi - 1;
  const double below = a - l.values[lo];
  const double above = l.values[hi] - a;
  uint32_t code;
  if (below < above) {
    code = l.codes[lo];
  } else if (above < below) {
    code = l.codes[hi];
  } else {
    code = (l.codes[lo] & 1) == 0 ? l.codes[lo] : l.codes[hi];
  }
  return code | sign;
}

bool code_is_nan(const Format& f, uint32_t code) { return std::isnan(oracle_decode(f, code)); }

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// f32 inputs that stress rounding for format f: every representable value, the midpoints
// between neighbours and the floats one ulp either side of both, specials, f32 subnormals,
// random bit patterns and random values spread over the format's range.
std::vector<float> stress_inputs(const Format& f, size_t random_count) {
  std::vector<float> in;
  auto add_around = [&](double v) {
    const auto x = static_cast<float>(v);
    if (static_cast<double>(x) != v) return;  // not an f32: never an input
    for (float y : {x, std::nextafter(x, 0.0f), std::nextafter(x, INFINITY)}) {
      in.push_back(y);
      in.push_back(-y);
    }
  };
  const Ladder& l = ladder(f);
  for (size_t i = 0; i < l.values.size(); ++i) {
    add_around(l.values[i]);
    if (i + 1 < l.values.size()) add_around((l.values[i] + l.values[i + 1]) / 2);
  }
  for (uint32_t u :
       {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u, 0x7F800001u,
        0xFF800001u, 0x7FA00000u, 0x7FFFFFFFu, 0xFFFFFFFFu, 0x00000001u, 0x80000001u, 0x007FFFFFu,
        0x00400000u, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu}) {
    in.push_back(float_of(u));
  }
  std::mt19937_64 rng(12345 + f.bits());
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  const double top = l.values.back();
  const double tiny = l.values[1];
  std::uniform_real_distribution<double> log_mag(std::log2(tiny) - 4, std::log2(top) + 2);
  for (size_t i = 0; i < random_count; ++i) {
    in.push_back(float_of(static_cast<uint32_t>(rng())));
    in.push_back(static_cast<float>(unit(rng) * top * 1.1));
    in.push_back(static_cast<float>(std::copysign(std::exp2(log_mag(rng)), unit(rng))));
  }
  return in;
}

// Bulk conversions through the public entry points, returning codes as uint32.
std::vector<uint32_t> bulk_encode(const Format& f, const std::vector<float>& in) {
  const size_t bytes = static_cast<size_t>(f.bits() / 8);
  std::vector<unsigned char> raw(in.size() * bytes);
  k::from_f32(f.dtype, in.data(), raw.data(), in.size());
  std::vector<uint32_t> out(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    uint32_t c = 0;
    std::memcpy(&c, raw.data() + i * bytes, bytes);  // little-endian host
    out[i] = c;
  }
  return out;
}

std::vector<float> bulk_decode(const Format& f, const std::vector<uint32_t>& codes) {
  const size_t bytes = static_cast<size_t>(f.bits() / 8);
  std::vector<unsigned char> raw(codes.size() * bytes);
  for (size_t i = 0; i < codes.size(); ++i) std::memcpy(raw.data() + i * bytes, &codes[i], bytes);
  std::vector<float> out(codes.size());
  k::to_f32(f.dtype, raw.data(), out.data(), codes.size());
  return out;
}

std::vector<ConvertIsa> available_isas() {
  std::vector<ConvertIsa> isas;
  for (ConvertIsa isa : {ConvertIsa::kGeneric, ConvertIsa::kAvx2, ConvertIsa::kAvx512}) {
    if (k::set_convert_isa(isa)) isas.push_back(isa);
  }
  k::set_convert_isa(k::best_convert_isa());
  return isas;
}

const char* isa_name(ConvertIsa isa) {
  switch (isa) {
    case ConvertIsa::kGeneric:
      return "generic";
    case ConvertIsa::kAvx2:
      return "avx2";
    case ConvertIsa::kAvx512:
      return "avx512";
  }
  return "?";
}

// Restores the default kernels when a test that switches them ends, even on failure.
struct IsaReset {
  ~IsaReset() { k::set_convert_isa(k::best_convert_isa()); }
};

// Checks the scalar encoder and every ISA's bulk encoder against the oracle on stress inputs.
void check_rounding(const Format& f) {
  const std::vector<float> in = stress_inputs(f, 100000);
  int failures = 0;
  for (float x : in) {
    const std::optional<uint32_t> want = oracle_encode(f, x);
    const uint32_t got = f.scalar_encode(x);
    const bool ok =
        want ? got == *want
             : code_is_nan(f, got) && (got & f.sign_bit()) == (bits_of(x) >> 31 ? f.sign_bit() : 0);
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << f.name << " scalar encode of " << hex(bits_of(x)) << " (" << x << ") gave "
                    << hex(got) << ", oracle " << (want ? hex(*want) : "NaN");
    }
  }
  IsaReset reset;
  for (ConvertIsa isa : available_isas()) {
    ASSERT_TRUE(k::set_convert_isa(isa));
    const std::vector<uint32_t> got = bulk_encode(f, in);
    for (size_t i = 0; i < in.size(); ++i) {
      const uint32_t want = f.scalar_encode(in[i]);
      if (got[i] != want && ++failures <= 10) {
        ADD_FAILURE() << f.name << " " << isa_name(isa) << " bulk encode of " << hex(bits_of(in[i]))
                      << " gave " << hex(got[i]) << ", scalar " << hex(want);
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

// Checks that every code decodes to the oracle's value (bit-identical across ISAs) and that
// encoding the decoded value gives the code back.
void check_every_code(const Format& f) {
  std::vector<uint32_t> codes(f.codes());
  for (uint32_t c = 0; c < f.codes(); ++c) codes[c] = c;
  int failures = 0;
  auto fail = [&](const std::string& what) {
    if (++failures <= 10) ADD_FAILURE() << f.name << ": " << what;
  };
  for (uint32_t c : codes) {
    const double want = oracle_decode(f, c);
    const float got = f.scalar_decode(c);
    if (std::isnan(want)
            ? !std::isnan(got) || std::signbit(got) != std::signbit(want)
            : static_cast<double>(got) != want || std::signbit(got) != std::signbit(want)) {
      fail("scalar decode of " + hex(c) + " gave " + std::to_string(got));
    }
  }
  IsaReset reset;
  for (ConvertIsa isa : available_isas()) {
    ASSERT_TRUE(k::set_convert_isa(isa));
    const std::vector<float> decoded = bulk_decode(f, codes);
    const std::vector<uint32_t> again = bulk_encode(f, decoded);
    for (uint32_t c : codes) {
      if (bits_of(decoded[c]) != bits_of(f.scalar_decode(c))) {
        fail(std::string(isa_name(isa)) + " bulk decode of " + hex(c) + " gave " +
             hex(bits_of(decoded[c])) + ", scalar " + hex(bits_of(f.scalar_decode(c))));
      }
      const bool ok = code_is_nan(f, c) ? code_is_nan(f, again[c]) &&
                                              (again[c] & f.sign_bit()) == (c & f.sign_bit())
                                        : again[c] == c;
      if (!ok)
        fail(std::string(isa_name(isa)) + " round trip of " + hex(c) + " gave " + hex(again[c]));
    }
  }
  EXPECT_EQ(failures, 0);
}

// Random inputs of the kinds real tensors hold, plus some of everything else.
std::vector<float> mixed_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> weight(0.0f, 0.02f);
  std::uniform_real_distribution<float> wide(-70000.0f, 70000.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    switch (rng() % 4) {
      case 0:
        v[i] = weight(rng);
        break;
      case 1:
        v[i] = wide(rng);
        break;
      case 2:
        v[i] = float_of(static_cast<uint32_t>(rng()));
        break;
      default:
        v[i] = std::ldexp(weight(rng), static_cast<int>(rng() % 40) - 30);
        break;
    }
  }
  return v;
}

}  // namespace

TEST(Convert, Bf16DecodesEveryCodeAndRoundTrips) { check_every_code(kBf16); }
TEST(Convert, F16DecodesEveryCodeAndRoundTrips) { check_every_code(kF16); }
TEST(Convert, F8E4M3DecodesEveryCodeAndRoundTrips) { check_every_code(kE4m3); }
TEST(Convert, F8E5M2DecodesEveryCodeAndRoundTrips) { check_every_code(kE5m2); }

TEST(Convert, Bf16RoundsToNearestEven) { check_rounding(kBf16); }
TEST(Convert, F16RoundsToNearestEven) { check_rounding(kF16); }
TEST(Convert, F8E4M3RoundsToNearestEven) { check_rounding(kE4m3); }
TEST(Convert, F8E5M2RoundsToNearestEven) { check_rounding(kE5m2); }

TEST(Convert, Bf16NanStaysQuietNanWithSignAndPayload) {
  EXPECT_EQ(k::f32_to_bf16(float_of(0x7F800001u)), 0x7FC0);
  EXPECT_EQ(k::f32_to_bf16(float_of(0xFFC00001u)), 0xFFC0);
  EXPECT_EQ(k::f32_to_bf16(float_of(0x7FA00000u)), 0x7FE0);
  EXPECT_EQ(k::f32_to_bf16(float_of(0x7FFFFFFFu)), 0x7FFF);  // no carry into the sign
  EXPECT_EQ(k::f32_to_bf16(float_of(0x7F7FFFFFu)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_EQ(bits_of(k::bf16_to_f32(0x7FC1)), 0x7FC10000u);   // widening keeps every bit
  EXPECT_EQ(bits_of(k::bf16_to_f32(0xFF81)), 0xFF810000u);   // even a signalling NaN
}

// NaN payloads are not values, but torch's exact bits are cheap to match and make outputs
// byte-identical to a torch export; these pin the patterns c10's decoders produce.
TEST(Convert, NanBitsMatchTorchAndF16c) {
  EXPECT_EQ(bits_of(k::f8e4m3_to_f32(0x7F)), 0x7FF00000u);
  EXPECT_EQ(bits_of(k::f8e4m3_to_f32(0xFF)), 0xFFF00000u);
  EXPECT_EQ(bits_of(k::f8e5m2_to_f32(0x7D)), 0x7FE00000u);
  EXPECT_EQ(bits_of(k::f8e5m2_to_f32(0x7E)), 0x7FC00000u);
  EXPECT_EQ(bits_of(k::f8e5m2_to_f32(0xFF)), 0xFFE00000u);
  EXPECT_EQ(bits_of(k::f16_to_f32(0x7C01)), 0x7FC02000u);  // quieted, payload kept
  EXPECT_EQ(bits_of(k::f16_to_f32(0xFE00)), 0xFFC00000u);
  EXPECT_EQ(k::f32_to_f16(float_of(0x7F800001u)), 0x7E00);
  EXPECT_EQ(k::f32_to_f16(float_of(0x7FA00000u)), 0x7F00);
  EXPECT_EQ(k::f32_to_f16(float_of(0xFFFFFFFFu)), 0xFFFF);
}

TEST(Convert, F16OverflowAndSubnormalEdges) {
  EXPECT_EQ(k::f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(k::f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(k::f32_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(k::f32_to_f16(-65520.0f), 0xFC00);
  EXPECT_EQ(k::f32_to_f16(INFINITY), 0x7C00);
  EXPECT_EQ(k::f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(k::f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even zero
  EXPECT_EQ(k::f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(k::f32_to_f16(std::ldexp(1.5f, -24)), 0x0002);  // tie to even 2
  EXPECT_EQ(k::f32_to_f16(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(k::f32_to_f16(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);
  EXPECT_EQ(k::f32_to_f16(float_of(0xFFC00000u)) & 0xFE00, 0xFE00);
}

TEST(Convert, F8E4M3OverflowMatchesTorch) {
  EXPECT_EQ(k::f32_to_f8e4m3(448.0f), 0x7E);
  EXPECT_EQ(k::f32_to_f8e4m3(464.0f), 0x7E);  // tie between 448 and the NaN code: even wins
  EXPECT_EQ(k::f32_to_f8e4m3(std::nextafter(464.0f, 1000.0f)), 0x7F);
  EXPECT_EQ(k::f32_to_f8e4m3(std::nextafter(480.0f, 0.0f)), 0x7F);
  EXPECT_EQ(k::f32_to_f8e4m3(480.0f), 0x7F);
  EXPECT_EQ(k::f32_to_f8e4m3(1e30f), 0x7F);
  EXPECT_EQ(k::f32_to_f8e4m3(INFINITY), 0x7F);
  EXPECT_EQ(k::f32_to_f8e4m3(-INFINITY), 0xFF);
  EXPECT_EQ(k::f32_to_f8e4m3(-448.0f), 0xFE);
  EXPECT_EQ(k::f32_to_f8e4m3(NAN), 0x7F);
  EXPECT_EQ(k::f32_to_f8e4m3(-NAN), 0xFF);
  EXPECT_EQ(k::f32_to_f8e4m3(std::ldexp(1.0f, -9)), 0x01);
  EXPECT_EQ(k::f32_to_f8e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(k::f32_to_f8e4m3(std::ldexp(3.0f, -10)), 0x02);
  EXPECT_EQ(k::f32_to_f8e4m3(std::nextafter(std::ldexp(1.0f, -6), 0.0f)), 0x08);
  EXPECT_TRUE(std::isnan(k::f8e4m3_to_f32(0x7F)));
  EXPECT_EQ(k::f8e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(k::f8e4m3_to_f32(0x78), 256.0f);  // the all-ones exponent is finite in e4m3fn
}

TEST(Convert, F8E5M2OverflowMatchesTorch) {
  EXPECT_EQ(k::f32_to_f8e5m2(57344.0f), 0x7B);
  EXPECT_EQ(k::f32_to_f8e5m2(std::nextafter(61440.0f, 0.0f)), 0x7B);
  EXPECT_EQ(k::f32_to_f8e5m2(61440.0f), 0x7C);
  EXPECT_EQ(k::f32_to_f8e5m2(65536.0f), 0x7C);
  EXPECT_EQ(k::f32_to_f8e5m2(-1e30f), 0xFC);
  EXPECT_EQ(k::f32_to_f8e5m2(INFINITY), 0x7C);
  EXPECT_EQ(k::f32_to_f8e5m2(NAN), 0x7F);
  EXPECT_EQ(k::f32_to_f8e5m2(-NAN), 0xFF);
  EXPECT_EQ(k::f32_to_f8e5m2(std::ldexp(1.0f, -16)), 0x01);
  EXPECT_EQ(k::f32_to_f8e5m2(std::ldexp(1.0f, -17)), 0x00);
  EXPECT_EQ(k::f8e5m2_to_f32(0x7C), INFINITY);
  EXPECT_TRUE(std::isnan(k::f8e5m2_to_f32(0x7D)));
}

TEST(Convert, BulkMatchesScalarOnLongArrays) {
  constexpr size_t kN = 1000003;  // not a multiple of any vector width
  const std::vector<float> floats = mixed_floats(kN + 1, 7);
  std::mt19937_64 rng(99);
  IsaReset reset;
  for (const Format* f : kFormats) {
    const size_t bytes = static_cast<size_t>(f->bits() / 8);
    std::vector<uint32_t> codes(kN + 1);
    for (uint32_t& c : codes) c = static_cast<uint32_t>(rng()) & (f->codes() - 1);
    std::vector<unsigned char> code_bytes((kN + 1) * bytes + 1);
    for (size_t i = 0; i <= kN; ++i) std::memcpy(&code_bytes[i * bytes], &codes[i], bytes);
    for (ConvertIsa isa : available_isas()) {
      ASSERT_TRUE(k::set_convert_isa(isa));
      // Offsets of one element shift the vector loops off any alignment; the odd byte offset
      // gives misaligned 16-bit elements.
      for (size_t offset : {size_t{0}, size_t{1}}) {
        std::vector<unsigned char> raw((kN + 1) * bytes + 1);
        for (size_t byte_shift : {size_t{0}, size_t{1}}) {
          if (byte_shift != 0 && (bytes == 1 || offset != 0)) continue;
          unsigned char* dst = raw.data() + offset * bytes + byte_shift;
          k::from_f32(f->dtype, floats.data() + offset, dst, kN);
          size_t bad = 0;
          for (size_t i = 0; i < kN; ++i) {
            uint32_t c = 0;
            std::memcpy(&c, dst + i * bytes, bytes);
            bad += c != f->scalar_encode(floats[offset + i]);
          }
          EXPECT_EQ(bad, 0u) << f->name << " encode " << isa_name(isa) << " offset " << offset
                             << " byte shift " << byte_shift;

          std::vector<unsigned char> src_bytes(code_bytes.size() + 1);
          std::memcpy(src_bytes.data() + byte_shift, code_bytes.data(), code_bytes.size());
          std::vector<float> out(kN + 1);
          k::to_f32(f->dtype, src_bytes.data() + byte_shift + offset * bytes, out.data() + offset,
                    kN);
          bad = 0;
          for (size_t i = 0; i < kN; ++i) {
            bad += bits_of(out[offset + i]) != bits_of(f->scalar_decode(codes[offset + i]));
          }
          EXPECT_EQ(bad, 0u) << f->name << " decode " << isa_name(isa) << " offset " << offset
                             << " byte shift " << byte_shift;
        }
      }
    }
  }
}

TEST(Convert, BulkHandlesEveryShortLength) {
  const std::vector<float> floats = mixed_floats(80, 3);
  IsaReset reset;
  for (ConvertIsa isa : available_isas()) {
    ASSERT_TRUE(k::set_convert_isa(isa));
    for (const Format* f : kFormats) {
      const size_t bytes = static_cast<size_t>(f->bits() / 8);
      for (size_t n = 0; n <= 70; ++n) {
        // Guard bytes after the end catch a vector store past n.
        std::vector<unsigned char> raw((n + 16) * bytes, 0xA5);
        k::from_f32(f->dtype, floats.data(), raw.data(), n);
        for (size_t i = 0; i < n; ++i) {
          uint32_t c = 0;
          std::memcpy(&c, &raw[i * bytes], bytes);
          ASSERT_EQ(c, f->scalar_encode(floats[i])) << f->name << " n=" << n << " i=" << i;
        }
        for (size_t i = n * bytes; i < raw.size(); ++i) ASSERT_EQ(raw[i], 0xA5) << f->name;
        std::vector<float> out(n + 16, 1.25f);
        k::to_f32(f->dtype, raw.data(), out.data(), n);
        for (size_t i = 0; i < n; ++i) {
          uint32_t c = 0;
          std::memcpy(&c, &raw[i * bytes], bytes);
          ASSERT_EQ(bits_of(out[i]), bits_of(f->scalar_decode(c))) << f->name << " n=" << n;
        }
        for (size_t i = n; i < out.size(); ++i) ASSERT_EQ(out[i], 1.25f) << f->name;
      }
    }
  }
}

TEST(Convert, F64RoundsToNearestEven) {
  std::mt19937_64 rng(5);
  std::vector<double> in;
  for (int i = 0; i < 200000; ++i) {
    in.push_back(std::bit_cast<double>(rng()));
    in.push_back(std::ldexp(static_cast<double>(rng() >> 11), static_cast<int>(rng() % 300) - 200));
    // The exact midpoint between two neighbouring floats, and doubles a hair either side.
    const float f = float_of(static_cast<uint32_t>(rng()) & 0x7F7FFFFFu);
    const double mid =
        (static_cast<double>(f) + static_cast<double>(std::nextafter(f, INFINITY))) / 2;
    in.push_back(mid);
    in.push_back(std::nextafter(mid, 0.0));
    in.push_back(-std::nextafter(mid, INFINITY));
  }
  const double inf = std::numeric_limits<double>::infinity();
  for (double d :
       {0.0, -0.0, inf, -inf, std::numeric_limits<double>::quiet_NaN(), 1e300, -1e300, 1e-300,
        DBL_MIN, static_cast<double>(FLT_MAX), 0x1.ffffffp127, 0x1.fffffefffffffp127}) {
    in.push_back(d);
  }
  std::vector<float> out(in.size() + 1);
  IsaReset reset;
  for (ConvertIsa isa : available_isas()) {
    ASSERT_TRUE(k::set_convert_isa(isa));
    k::to_f32(DType::kF64, in.data(), out.data(), in.size());
    int failures = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const double d = in[i];
      const float r = out[i];
      bool ok;
      if (std::isnan(d)) {
        ok = std::isnan(r);
      } else if (std::isinf(r)) {
        // Overflow: d must be at or past the midpoint between FLT_MAX and 2^128.
        ok = std::signbit(r) == std::signbit(d) && std::fabs(d) >= 0x1.ffffffp127;
      } else {
        // r is nearest: no neighbour of r is strictly closer, and a tie picks the even one.
        const double err = std::fabs(d - r);
        const double err_up = std::fabs(d - std::nextafter(r, INFINITY));
        const double err_down = std::fabs(d - std::nextafter(r, -INFINITY));
        ok = err <= err_up && err <= err_down &&
             ((err != err_up && err != err_down) || (bits_of(r) & 1) == 0) &&
             std::signbit(r) == std::signbit(d);
      }
      if (!ok && ++failures <= 10) {
        ADD_FAILURE() << isa_name(isa) << ": " << std::hexfloat << d << " gave " << r;
      }
    }
    EXPECT_EQ(failures, 0);

    const std::vector<float> floats = mixed_floats(100001, 11);
    std::vector<double> wide(floats.size());
    k::from_f32(DType::kF64, floats.data(), wide.data(), floats.size());
    for (size_t i = 0; i < floats.size(); ++i) {
      if (std::isnan(floats[i])) {
        ASSERT_TRUE(std::isnan(wide[i]));
      } else {
        ASSERT_EQ(static_cast<float>(wide[i]), floats[i]) << isa_name(isa);
        ASSERT_EQ(std::signbit(wide[i]), std::signbit(floats[i]));
      }
    }
  }
}

TEST(Convert, F32IsCopiedBitForBit) {
  std::vector<float> in = mixed_floats(1001, 13);
  in.push_back(float_of(0x7F800001u));  // signalling NaN: must not be quieted
  std::vector<float> out(in.size());
  k::to_f32(DType::kF32, in.data(), out.data(), in.size());
  EXPECT_EQ(std::memcmp(in.data(), out.data(), in.size() * sizeof(float)), 0);
  std::fill(out.begin(), out.end(), 0.0f);
  k::from_f32(DType::kF32, in.data(), out.data(), in.size());
  EXPECT_EQ(std::memcmp(in.data(), out.data(), in.size() * sizeof(float)), 0);
}

TEST(Convert, RejectsNonConvertibleDtypesByName) {
  float f = 0.0f;
  unsigned char buf[8] = {};
  int rejected = 0;
  for (int i = 0; i < smelt::kDTypeCount; ++i) {
    const auto t = static_cast<DType>(i);
    if (smelt::dtype_is_convertible_float(t)) {
      EXPECT_NO_THROW(k::to_f32(t, buf, &f, 1));
      EXPECT_NO_THROW(k::from_f32(t, &f, buf, 1));
      continue;
    }
    ++rejected;
    const std::string name(smelt::dtype_name(t));
    try {
      k::to_f32(t, buf, &f, 1);
      ADD_FAILURE() << "to_f32 accepted " << name;
    } catch (const smelt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    try {
      k::from_f32(t, &f, buf, 0);  // even an empty conversion names the bad dtype
      ADD_FAILURE() << "from_f32 accepted " << name;
    } catch (const smelt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(rejected, smelt::kDTypeCount - 6);
}

TEST(Convert, IsaSelectionRefusesWhatTheCpuLacks) {
  IsaReset reset;
  EXPECT_TRUE(k::set_convert_isa(ConvertIsa::kGeneric));
  EXPECT_TRUE(k::set_convert_isa(k::best_convert_isa()));
  const std::vector<ConvertIsa> isas = available_isas();
  EXPECT_EQ(isas.back(), k::best_convert_isa());
  std::printf("conversion kernels available:");
  for (ConvertIsa isa : isas) std::printf(" %s", isa_name(isa));
  std::printf("\n");
}
