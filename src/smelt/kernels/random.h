// Counter-based random numbers: each value is a pure function of (key, counter), so results do
// not depend on thread count or processing order.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace smelt::kernels {

// splitmix64's finalizer: a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A stream key from a seed and a name (e.g. the output tensor name): FNV-1a of the name, mixed.
inline uint64_t stream_key(uint64_t seed, std::string_view name, uint64_t salt = 0) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return mix64(mix64(seed ^ 0x5EED5EED5EED5EEDull) ^ h ^ mix64(salt + 0x1234567ull));
}

// 64 random bits for element `counter` of stream `key`: SplitMix64's output for the Weyl
// sequence key + counter · γ (one mixer; in vectorized loops counter · γ becomes an induction
// variable, so an element costs two 64-bit multiplies).
inline uint64_t random_u64(uint64_t key, uint64_t counter) {
  return mix64(key + counter * 0x9E3779B97F4A7C15ull);
}

// Uniform in [0, 1) with 24 bits of resolution (exactly representable floats).
inline float random_uniform(uint64_t key, uint64_t counter) {
  return static_cast<float>(random_u64(key, counter) >> 40) * (1.0f / 16777216.0f);
}

// Standard normal (Box-Muller on two independent 32-bit uniforms from one 64-bit draw).
inline float random_normal(uint64_t key, uint64_t counter) {
  const uint64_t r = random_u64(key, counter);
  const double u1 = (static_cast<double>(r >> 32) + 1.0) * (1.0 / 4294967297.0);  // (0, 1)
  const double u2 = static_cast<double>(r & 0xFFFFFFFFull) * (1.0 / 4294967296.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// x when `keep`, else +0, through a bit mask rather than a select: compilers turn a select on a
// random draw into a branch in scalar code, and that branch mispredicts about half the time
// (docs/performance.md, "Round 2"). Same bits as `keep ? x : 0.0f`.
inline float kept_or_zero(bool keep, float x) {
  return std::bit_cast<float>(std::bit_cast<uint32_t>(x) & (0u - static_cast<uint32_t>(keep)));
}

}  // namespace smelt::kernels
