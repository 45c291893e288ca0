#!/usr/bin/env bash
# Reproduces the golden hashes of tests/quant_test.cpp (QuantGolden.*): the FNV-1a hashes of what
# ggml's own reference (de)quantizers produce for the test's deterministic inputs.
#
#   tests/reference/quant_golden.sh [GGML_SOURCE_DIR]
#
# ggml: https://github.com/ggml-org/ggml at commit d99724f2b141fed9e1a9f402213506c081433465
# (2026-08-21, "readme : update following llama.cpp style (#1599)"). Without GGML_SOURCE_DIR the
# script clones that commit (needs network). ggml-base is built by ggml's own CMake for plain
# x86-64 (GGML_NATIVE=OFF: no -march, so no fused multiply-add in the reference code), and the
# program below calls its type traits: from_float_ref (quantize_row_*_ref, no importance matrix)
# and to_float (dequantize_row_*). It prints the two tables as quant_test.cpp spells them; they
# must equal the constants there. Inputs: golden_inputs() and the dequantize byte stream of
# quant_test.cpp, copied here operation for operation.
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
commit=d99724f2b141fed9e1a9f402213506c081433465
src="${1:-}"
if [ -z "$src" ]; then
  git clone -q https://github.com/ggml-org/ggml "$work/ggml"
  git -C "$work/ggml" checkout -q "$commit"
  src="$work/ggml"
fi
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" --target ggml-base -j"$(nproc)" >/dev/null

cat >"$work/golden.cpp" <<'CPP'
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "ggml.h"

static uint64_t lcg_state;
static uint32_t lcg() {
  lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<uint32_t>(lcg_state >> 33);
}

static uint64_t fnv1a(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<const uint8_t*>(p)[i];
    h *= 1099511628211ULL;
  }
  return h;
}

// quant_test.cpp's golden_inputs().
static std::vector<float> golden_inputs() {
  lcg_state = 12345;
  std::vector<float> x(256 * 64);
  for (size_t b = 0; b < 64; ++b) {
    const float scale = std::ldexp(1.0f, static_cast<int>(b % 13) - 9);
    for (size_t i = 0; i < 256; ++i) {
      const float u = static_cast<float>(lcg() >> 8) / 16777216.0f - 0.5f;
      float v = u * scale;
      switch (b % 8) {
        case 1: v = std::fabs(v); break;
        case 2: v = -std::fabs(v); break;
        case 3: if (i % 61 == 7) v *= 200.0f; break;
        case 4: if (i % 32 < 8) v = 0.0f; break;
        case 5: v = i < 128 ? scale * 0.25f : v; break;
        case 6: v = std::round(u * 16.0f) * scale; break;
        default: break;
      }
      x[b * 256 + i] = v;
    }
  }
  return x;
}

int main() {
  const std::vector<float> x = golden_inputs();
  const size_t n = x.size();
  const ggml_type quantized[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                 GGML_TYPE_Q6_K};
  std::printf("QuantizeMatchesGgmlReferenceBitForBit:\n");
  for (ggml_type t : quantized) {
    std::vector<uint8_t> q(ggml_row_size(t, n));
    ggml_get_type_traits(t)->from_float_ref(x.data(), q.data(), n);
    std::printf("  %s 0x%016llxULL\n", ggml_type_name(t),
                static_cast<unsigned long long>(fnv1a(q.data(), q.size())));
  }
  const ggml_type dequantized[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0,
                                   GGML_TYPE_Q5_1, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K,
                                   GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
  std::printf("DequantizeMatchesGgmlReferenceBitForBit:\n");
  for (ggml_type t : dequantized) {
    lcg_state = 777;
    std::vector<uint8_t> bytes(ggml_row_size(t, n));
    for (auto& c : bytes) c = static_cast<uint8_t>(lcg() >> 5);
    for (size_t i = 1; i < bytes.size(); i += 2) bytes[i] &= 0xBF;  // keeps f16 fields finite
    std::vector<float> y(n);
    ggml_get_type_traits(t)->to_float(bytes.data(), y.data(), n);
    std::printf("  %s 0x%016llxULL\n", ggml_type_name(t),
                static_cast<unsigned long long>(fnv1a(y.data(), y.size() * sizeof(float))));
  }
  return 0;
}
CPP
lib="$(find "$work/build" -name 'libggml-base.a' | head -n1)"
c++ -std=c++17 -O2 -I"$src/include" "$work/golden.cpp" "$lib" -fopenmp -lm -lpthread -o "$work/golden"
"$work/golden"
