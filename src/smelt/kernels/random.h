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

// The draws of the sparsifying methods (DARE's masks, della's keep decisions, LoRA DARE pruning):
// a 32-bit counter-based generator, so that vector code draws eight (AVX2) or sixteen (AVX-512)
// per instruction where SplitMix64's 64-bit multiplies cost several instructions per lane
// (docs/performance.md, "Round 4"). Counter c = hi · 2^32 + lo draws
//   x = lo · 0x9E3779B9 + a;  x ^= x >> 16;  x *= 0x21F0AAAD;  x ^= (x >> 15) ^ b;
//   x *= 0x735A2D97;  x ^= x >> 15;  uniform = (x >> 8) · 2^-24
// (the two-multiply mixer "lowbias32" with the key xored in between its rounds), where a and b are
// the halves of mix64(key ^ mix64(hi)). For a fixed key and hi the 2^32 values of lo give 2^32
// distinct x (every step is a bijection); keying both ends of the first round keeps two keys'
// streams from being shifted copies of one another, as a key added to a Weyl sequence alone
// would make them.
struct DrawKey {
  uint32_t a, b;
};

// The constants of counters [hi · 2^32, (hi + 1) · 2^32) of stream `key`.
inline DrawKey draw_key(uint64_t key, uint64_t hi) {
  const uint64_t m = mix64(key ^ mix64(hi));
  return {static_cast<uint32_t>(m), static_cast<uint32_t>(m >> 32)};
}

// The 24-bit draw of counter lo of a block.
inline uint32_t draw_bits24(DrawKey k, uint32_t lo) {
  uint32_t x = lo * 0x9E3779B9u + k.a;
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= (x >> 15) ^ k.b;
  x *= 0x735A2D97u;
  x ^= x >> 15;
  return x >> 8;
}

inline constexpr float kDrawScale = 1.0f / 16777216.0f;  // 2^-24: bits24 · scale is exact

// Uniform in [0, 1) with 24 bits of resolution for element `counter` of stream `key`, the
// sparsifying methods' draw (one call computes the block's key: loops use Draws).
inline float draw_uniform(uint64_t key, uint64_t counter) {
  return static_cast<float>(
             draw_bits24(draw_key(key, counter >> 32), static_cast<uint32_t>(counter))) *
         kDrawScale;
}

// The number of 24-bit draws m with m · 2^-24 < p: draw_uniform < p exactly when
// draw_bits24 < keep_threshold(p) (p · 2^24 is exact; NaN and p ≤ 0 keep nothing).
inline int32_t keep_threshold(float p) {
  if (!(p > 0.0f)) return 0;
  if (p >= 1.0f) return int32_t{1} << 24;
  return static_cast<int32_t>(std::ceil(p * 16777216.0f));
}

// draw_uniform for counters in any order, the block key kept until the high half changes.
class Draws {
 public:
  explicit Draws(uint64_t key) : key_(key), hi_(0), k_(draw_key(key, 0)) {}
  // draw_key(key, hi), recomputed only when hi changes.
  DrawKey block_key(uint64_t hi) {
    if (hi != hi_) {
      hi_ = hi;
      k_ = draw_key(key_, hi);
    }
    return k_;
  }
  float uniform(uint64_t counter) {
    return static_cast<float>(
               draw_bits24(block_key(counter >> 32), static_cast<uint32_t>(counter))) *
           kDrawScale;
  }

 private:
  uint64_t key_;
  uint64_t hi_;
  DrawKey k_;
};

// Whether counters [first, first + n) lie in one block of 2^32 (one DrawKey serves them all).
inline bool draws_in_one_block(uint64_t first, uint64_t n) {
  return n == 0 || (first >> 32) == ((first + n - 1) >> 32);
}

// Calls f(k, lo, j, len) for the pieces of counters [first, first + n) that lie in one block of
// 2^32 each: counters first + j .. first + j + len − 1, the block's key k, lo = the low half of
// first + j (lo + i does not wrap for i < len).
template <class F>
[[gnu::always_inline]] inline void for_each_draw_block(uint64_t key, uint64_t first, uint64_t n,
                                                       F&& f) {
  uint64_t j = 0;
  while (j < n) {
    const uint64_t c = first + j;
    const uint64_t room = (uint64_t{1} << 32) - (c & 0xFFFFFFFFull);
    const uint64_t len = n - j < room ? n - j : room;
    f(draw_key(key, c >> 32), static_cast<uint32_t>(c), j, len);
    j += len;
  }
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
