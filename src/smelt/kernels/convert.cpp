// Element conversions between storage dtypes and f32: scalar references plus vectorized bulk loops.
#include "smelt/kernels/convert.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstring>

#include "smelt/error.h"
#include "smelt/kernels/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* values
// (GCC PR 105593); the pragma is keyed to the header's lines, so it must wrap the include.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <cpuid.h>
#define SMELT_CONVERT_X86 1
#else
#define SMELT_CONVERT_X86 0
#endif

// Release builds are -O2, where GCC only vectorizes loops whose trip count is a known multiple
// of the vector width; the generated (non-intrinsic) kernels need O3's cost model to vectorize.
// Clang vectorizes them at -O2 and has no such attribute.
#if defined(__clang__)
#define SMELT_VECTORIZE
#else
#define SMELT_VECTORIZE __attribute__((optimize("O3")))
#endif

namespace smelt::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Scalar encoders shared by the reference functions and the compiler-vectorized loops. They are
// branch-free (selects via masks) because GCC will not if-convert a float add that could trap,
// and a branchy body keeps the loop scalar.

[[gnu::always_inline]] inline uint32_t mask_if(bool b) { return 0u - static_cast<uint32_t>(b); }

// Port of c10's fp8e4m3fn_from_fp32_value.
[[gnu::always_inline]] inline uint8_t encode_e4m3(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t a = u ^ sign;
  // Adding 2^14 puts the subnormal grid (2^-9) at the float's last mantissa bit, so the FPU
  // does the round-to-nearest-even for us.
  constexpr uint32_t kDenormMagic = 141u << 23;
  const uint32_t denormal =
      std::bit_cast<uint32_t>(std::bit_cast<float>(a) + std::bit_cast<float>(kDenormMagic)) -
      kDenormMagic;
  // torch gives NaN (0x7F; e4m3fn has no infinity) from 480 up, inf and NaN included. Clamping
  // to 480, where the rounding below yields exactly 0x7F, covers all of them in one min.
  const uint32_t c = std::min(a, 1087u << 20);
  const uint32_t normal =
      (c + (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + ((c >> 20) & 1)) >> 20;
  const uint32_t is_denormal = mask_if(a < (121u << 23));  // below 2^-6, the smallest normal
  const uint32_t r = (denormal & is_denormal) | (normal & ~is_denormal);
  return static_cast<uint8_t>(r | (sign >> 24));
}

// Port of c10's fp8e5m2_from_fp32_value.
[[gnu::always_inline]] inline uint8_t encode_e5m2(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t a = u ^ sign;
  // Adding 2^7 aligns the subnormal grid (2^-16) the same way.
  constexpr uint32_t kDenormMagic = 134u << 23;
  const uint32_t denormal =
      std::bit_cast<uint32_t>(std::bit_cast<float>(a) + std::bit_cast<float>(kDenormMagic)) -
      kDenormMagic;
  // From 65536 up torch gives inf (0x7C), which the rounding below yields at exactly 65536; NaN
  // is then forced to 0x7F.
  const uint32_t c = std::min(a, 143u << 23);
  const uint32_t normal =
      (c + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFFFu + ((c >> 21) & 1)) >> 21;
  const uint32_t is_denormal = mask_if(a < (113u << 23));  // below 2^-14
  const uint32_t is_nan = mask_if(a > 0x7F800000u);
  const uint32_t r = (denormal & is_denormal) | (normal & ~is_denormal) | (is_nan & 0x7Fu);
  return static_cast<uint8_t>(r | (sign >> 24));
}

[[gnu::always_inline]] inline uint16_t encode_bf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 64;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

[[gnu::always_inline]] inline float decode_bf16(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

// ---------------------------------------------------------------------------------------------
// fp8 decoding tables, built at compile time.

constexpr uint32_t e4m3_bits(uint32_t v) {
  const uint32_t sign = (v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xFu;
  const uint32_t man = v & 7u;
  // The bit pattern torch's fp8e4m3fn_to_fp32_value produces, so NaNs round-trip identically.
  if (exp == 0xF && man == 7) return sign | 0x7FF00000u;
  if (exp != 0) return sign | ((exp + 120) << 23) | (man << 20);
  return sign | std::bit_cast<uint32_t>(static_cast<float>(man) * 0x1p-9f);
}

constexpr uint32_t e5m2_bits(uint32_t v) {
  const uint32_t sign = (v & 0x80u) << 24;
  const uint32_t exp = (v >> 2) & 0x1Fu;
  const uint32_t man = v & 3u;
  if (exp == 0x1F) {
    // torch widens e5m2 through f16, which quiets NaNs and keeps the payload.
    return sign | 0x7F800000u | (man << 21) | (man != 0 ? 0x400000u : 0u);
  }
  if (exp != 0) return sign | ((exp + 112) << 23) | (man << 21);
  return sign | std::bit_cast<uint32_t>(static_cast<float>(man) * 0x1p-16f);
}

template <uint32_t (*Bits)(uint32_t)>
constexpr std::array<uint32_t, 256> make_fp8_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t v = 0; v < 256; ++v) t[v] = Bits(v);
  return t;
}

constexpr std::array<uint32_t, 256> kE4m3Table = make_fp8_table<e4m3_bits>();
constexpr std::array<uint32_t, 256> kE5m2Table = make_fp8_table<e5m2_bits>();

[[gnu::always_inline]] inline float decode_e4m3(uint8_t v) {
  return std::bit_cast<float>(kE4m3Table[v]);
}
[[gnu::always_inline]] inline float decode_e5m2(uint8_t v) {
  return std::bit_cast<float>(kE5m2Table[v]);
}
[[gnu::always_inline]] inline float narrow_f64(double d) { return static_cast<float>(d); }
[[gnu::always_inline]] inline double widen_f32(float f) { return f; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Scalar reference conversions.

float bf16_to_f32(uint16_t h) { return decode_bf16(h); }
uint16_t f32_to_bf16(float f) { return encode_bf16(f); }

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) {
    // NaNs come out quiet with their payload, as F16C's vcvtph2ps gives them.
    return std::bit_cast<float>(sign | 0x7F800000u | (man << 13) | (man != 0 ? 0x400000u : 0u));
  }
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
  return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(static_cast<float>(man) * 0x1p-24f));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  // Quiet NaN keeping the payload's top bits, matching F16C's vcvtps2ph so that every ISA path
  // gives the same bits.
  if (a > 0x7F800000u) return sign | static_cast<uint16_t>(0x7E00u | ((a >> 13) & 0x3FFu));
  // 65520 is halfway between 65504 (odd mantissa) and 2^16, so it and everything above is inf.
  if (a >= 0x477FF000u) return sign | 0x7C00u;
  if (a >= 0x38800000u) {  // normal in f16 (>= 2^-14): rebias and round the dropped 13 bits
    const uint32_t rebiased = a - (112u << 23);
    return sign | static_cast<uint16_t>((rebiased + 0xFFFu + ((rebiased >> 13) & 1)) >> 13);
  }
  // At most half the smallest subnormal (2^-24): a tie goes to the even zero.
  if (a <= 0x33000000u) return sign;
  // Subnormal: the value in units of 2^-24 is the 24-bit significand shifted right by 14..24.
  const uint32_t shift = 126 - (a >> 23);
  const uint32_t significand = (a & 0x7FFFFFu) | 0x800000u;
  uint32_t r = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (r & 1))) ++r;  // may carry into the smallest normal
  return sign | static_cast<uint16_t>(r);
}

float f8e4m3_to_f32(uint8_t v) { return decode_e4m3(v); }
uint8_t f32_to_f8e4m3(float f) { return encode_e4m3(f); }
float f8e5m2_to_f32(uint8_t v) { return decode_e5m2(v); }
uint8_t f32_to_f8e5m2(float f) { return encode_e5m2(f); }

namespace {

// ---------------------------------------------------------------------------------------------
// Bulk kernels. Each ISA gets a set; all sets give identical bits (the tests check it).

template <typename Src, typename Dst>
using Kernel = void (*)(const Src*, Dst*, size_t);

struct KernelSet {
  Kernel<uint16_t, float> bf16_to_f32;
  Kernel<float, uint16_t> f32_to_bf16;
  Kernel<uint16_t, float> f16_to_f32;
  Kernel<float, uint16_t> f32_to_f16;
  Kernel<uint8_t, float> e4m3_to_f32;
  Kernel<float, uint8_t> f32_to_e4m3;
  Kernel<uint8_t, float> e5m2_to_f32;
  Kernel<float, uint8_t> f32_to_e5m2;
  Kernel<double, float> f64_to_f32;
  Kernel<float, double> f32_to_f64;
};

// Element-wise loops the compiler vectorizes from the scalar code, once per ISA.
#define SMELT_MAP_KERNEL(name, attrs, Src, Dst, op)                     \
  attrs SMELT_VECTORIZE void name(const Src* src, Dst* dst, size_t n) { \
    for (size_t i = 0; i < n; ++i) dst[i] = op(src[i]);                 \
  }

#define SMELT_MAP_KERNELS(suffix, attrs)                                     \
  SMELT_MAP_KERNEL(e4m3_to_f32_##suffix, attrs, uint8_t, float, decode_e4m3) \
  SMELT_MAP_KERNEL(f32_to_e4m3_##suffix, attrs, float, uint8_t, encode_e4m3) \
  SMELT_MAP_KERNEL(e5m2_to_f32_##suffix, attrs, uint8_t, float, decode_e5m2) \
  SMELT_MAP_KERNEL(f32_to_e5m2_##suffix, attrs, float, uint8_t, encode_e5m2) \
  SMELT_MAP_KERNEL(f64_to_f32_##suffix, attrs, double, float, narrow_f64)    \
  SMELT_MAP_KERNEL(f32_to_f64_##suffix, attrs, float, double, widen_f32)

SMELT_MAP_KERNELS(generic, )
SMELT_MAP_KERNEL(bf16_to_f32_generic, , uint16_t, float, decode_bf16)
SMELT_MAP_KERNEL(f32_to_bf16_generic, , float, uint16_t, encode_bf16)

// Without F16C there is no cheap vector f16 conversion, so the generic set stays scalar.
void f16_to_f32_generic(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}
void f32_to_f16_generic(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

constexpr KernelSet kGenericSet = {
    .bf16_to_f32 = bf16_to_f32_generic,
    .f32_to_bf16 = f32_to_bf16_generic,
    .f16_to_f32 = f16_to_f32_generic,
    .f32_to_f16 = f32_to_f16_generic,
    .e4m3_to_f32 = e4m3_to_f32_generic,
    .f32_to_e4m3 = f32_to_e4m3_generic,
    .e5m2_to_f32 = e5m2_to_f32_generic,
    .f32_to_e5m2 = f32_to_e5m2_generic,
    .f64_to_f32 = f64_to_f32_generic,
    .f32_to_f64 = f32_to_f64_generic,
};

#if SMELT_CONVERT_X86

#define SMELT_AVX2 __attribute__((target("avx2,f16c")))
#define SMELT_AVX512 __attribute__((target("avx512f")))

SMELT_MAP_KERNELS(avx2, SMELT_AVX2)
SMELT_MAP_KERNELS(avx512, SMELT_AVX512)

// The bf16 and f16 kernels below are written with intrinsics: they carry most of the bytes of a
// merge, and intrinsics give full-width vectors with no aliasing checks.

SMELT_AVX2 void bf16_to_f32_avx2i(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), w);
  }
  for (; i < n; ++i) dst[i] = decode_bf16(src[i]);
}

// Eight f32 bit patterns to bf16 codes, each in the low half of its 32-bit lane.
SMELT_AVX2 inline __m256i encode_bf16_avx2(__m256i u) {
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i quiet_nan = _mm256_or_si256(hi, _mm256_set1_epi32(64));
  // Both sides are non-negative as int32, so the signed compare is the unsigned one.
  const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                            _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}

SMELT_AVX2 void f32_to_bf16_avx2i(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i a =
        encode_bf16_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    const __m256i b =
        encode_bf16_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8)));
    // packus works per 128-bit lane (a0 b0 a1 b1); the permute restores element order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), packed);
  }
  for (; i < n; ++i) dst[i] = encode_bf16(src[i]);
}

SMELT_AVX2 void f16_to_f32_avx2i(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

SMELT_AVX2 void f32_to_f16_avx2i(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

SMELT_AVX512 void f32_to_bf16_avx512i(const float* src, uint16_t* dst, size_t n) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i bias = _mm512_set1_epi32(0x7FFF);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i inf = _mm512_set1_epi32(0x7F800000);
  const __m512i quiet = _mm512_set1_epi32(64);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_loadu_si512(src + i);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, bias), _mm512_and_si512(hi, one)), 16);
    const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    const __m512i r = _mm512_mask_or_epi32(rounded, is_nan, hi, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
  }
  for (; i < n; ++i) dst[i] = encode_bf16(src[i]);
}

SMELT_AVX512 void f32_to_f16_avx512i(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

constexpr KernelSet kAvx2Set = {
    .bf16_to_f32 = bf16_to_f32_avx2i,
    .f32_to_bf16 = f32_to_bf16_avx2i,
    .f16_to_f32 = f16_to_f32_avx2i,
    .f32_to_f16 = f32_to_f16_avx2i,
    .e4m3_to_f32 = e4m3_to_f32_avx2,
    .f32_to_e4m3 = f32_to_e4m3_avx2,
    .e5m2_to_f32 = e5m2_to_f32_avx2,
    .f32_to_e5m2 = f32_to_e5m2_avx2,
    .f64_to_f32 = f64_to_f32_avx2,
    .f32_to_f64 = f32_to_f64_avx2,
};

// Widening keeps the AVX2 kernels: with 512-bit stores it measured 15-50% slower on 64 MiB
// arrays and ~5% slower at 1 MiB on an AVX-512 Xeon; narrowing gains from vpmovdw.
constexpr KernelSet kAvx512Set = {
    .bf16_to_f32 = bf16_to_f32_avx2i,
    .f32_to_bf16 = f32_to_bf16_avx512i,
    .f16_to_f32 = f16_to_f32_avx2i,
    .f32_to_f16 = f32_to_f16_avx512i,
    .e4m3_to_f32 = e4m3_to_f32_avx512,
    .f32_to_e4m3 = f32_to_e4m3_avx512,
    .e5m2_to_f32 = e5m2_to_f32_avx512,
    .f32_to_e5m2 = f32_to_e5m2_avx512,
    .f64_to_f32 = f64_to_f32_avx512,
    .f32_to_f64 = f32_to_f64_avx512,
};

#endif  // SMELT_CONVERT_X86

bool cpu_supports(ConvertIsa isa) {
  switch (isa) {
    case ConvertIsa::kGeneric:
      return true;
#if SMELT_CONVERT_X86
    case ConvertIsa::kAvx2:
      return cpu_has_avx2() && cpu_has_f16c();
    case ConvertIsa::kAvx512:  // its set reuses the AVX2 widening kernels
      return cpu_has_avx512f() && cpu_has_avx2() && cpu_has_f16c();
#endif
    default:
      return false;
  }
}

const KernelSet& kernel_set(ConvertIsa isa) {
  switch (isa) {
#if SMELT_CONVERT_X86
    case ConvertIsa::kAvx512:
      return kAvx512Set;
    case ConvertIsa::kAvx2:
      return kAvx2Set;
#endif
    default:
      return kGenericSet;
  }
}

// Null until first use, then the set in force. Relaxed is enough: every set is immutable and
// gives the same results, so a thread seeing an older choice is harmless.
std::atomic<const KernelSet*> g_active{nullptr};

const KernelSet& active() {
  const KernelSet* set = g_active.load(std::memory_order_relaxed);
  if (set == nullptr) {
    set = &kernel_set(best_convert_isa());
    g_active.store(set, std::memory_order_relaxed);
  }
  return *set;
}

// safetensors does not promise aligned tensor data, and the kernels (and C++) require naturally
// aligned element pointers, so misaligned buffers go through an aligned bounce buffer.
constexpr size_t kBounceBytes = 16384;

template <typename T>
bool aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(T) == 0;
}

template <typename T>
void widen(Kernel<T, float> kernel, const void* src, float* dst, size_t n) {
  if (aligned<T>(src)) return kernel(static_cast<const T*>(src), dst, n);
  alignas(64) T buf[kBounceBytes / sizeof(T)];
  constexpr size_t kChunk = kBounceBytes / sizeof(T);
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t m = std::min(kChunk, n - i);
    std::memcpy(buf, static_cast<const char*>(src) + i * sizeof(T), m * sizeof(T));
    kernel(buf, dst + i, m);
  }
}

template <typename T>
void narrow(Kernel<float, T> kernel, const float* src, void* dst, size_t n) {
  if (aligned<T>(dst)) return kernel(src, static_cast<T*>(dst), n);
  alignas(64) T buf[kBounceBytes / sizeof(T)];
  constexpr size_t kChunk = kBounceBytes / sizeof(T);
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t m = std::min(kChunk, n - i);
    kernel(src + i, buf, m);
    std::memcpy(static_cast<char*>(dst) + i * sizeof(T), buf, m * sizeof(T));
  }
}

constexpr const char* kConvertible = "F16, BF16, F32, F64, F8_E4M3 and F8_E5M2";

[[noreturn]] void fail_to_f32(DType t) {
  fail(
      "cannot convert {} tensors to f32: only {} are converted (other dtypes are copied "
      "unchanged)",
      dtype_name(t), kConvertible);
}

[[noreturn]] void fail_from_f32(DType t) {
  fail("cannot convert f32 to {}: only {} can be produced from f32", dtype_name(t), kConvertible);
}

}  // namespace

ConvertIsa best_convert_isa() {
  static const ConvertIsa best = cpu_supports(ConvertIsa::kAvx512) ? ConvertIsa::kAvx512
                                 : cpu_supports(ConvertIsa::kAvx2) ? ConvertIsa::kAvx2
                                                                   : ConvertIsa::kGeneric;
  return best;
}

bool set_convert_isa(ConvertIsa isa) {
  if (!cpu_supports(isa)) return false;
  g_active.store(&kernel_set(isa), std::memory_order_relaxed);
  return true;
}

void to_f32(DType from, const void* src, float* dst, size_t n) {
  if (!dtype_is_convertible_float(from)) fail_to_f32(from);
  if (n == 0) return;
  const KernelSet& k = active();
  switch (from) {
    case DType::kF32:
      std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      return widen<uint16_t>(k.bf16_to_f32, src, dst, n);
    case DType::kF16:
      return widen<uint16_t>(k.f16_to_f32, src, dst, n);
    case DType::kF64:
      return widen<double>(k.f64_to_f32, src, dst, n);
    case DType::kF8_E4M3:
      return widen<uint8_t>(k.e4m3_to_f32, src, dst, n);
    case DType::kF8_E5M2:
      return widen<uint8_t>(k.e5m2_to_f32, src, dst, n);
    default:
      fail_to_f32(from);
  }
}

void from_f32(DType to, const float* src, void* dst, size_t n) {
  if (!dtype_is_convertible_float(to)) fail_from_f32(to);
  if (n == 0) return;
  const KernelSet& k = active();
  switch (to) {
    case DType::kF32:
      std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      return narrow<uint16_t>(k.f32_to_bf16, src, dst, n);
    case DType::kF16:
      return narrow<uint16_t>(k.f32_to_f16, src, dst, n);
    case DType::kF64:
      return narrow<double>(k.f32_to_f64, src, dst, n);
    case DType::kF8_E4M3:
      return narrow<uint8_t>(k.f32_to_e4m3, src, dst, n);
    case DType::kF8_E5M2:
      return narrow<uint8_t>(k.f32_to_e5m2, src, dst, n);
    default:
      fail_from_f32(to);
  }
}

}  // namespace smelt::kernels
