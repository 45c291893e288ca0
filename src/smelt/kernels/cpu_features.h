// Runtime CPU dispatch for the kernels, in one place: the x86 features the hand-dispatched
// kernels check (each queried once), and SMELT_ELEMENTWISE, the attribute of the auto-vectorized
// loops that GCC clones per instruction set. Internal to src/smelt/kernels/.
#pragma once

// Release builds are -O2, where GCC 12 vectorizes only trivially profitable loops; these need O3's
// cost model. fp-contract=off keeps the AVX-512 clone (which has FMA) bit-identical to the others.
// ThreadSanitizer crashes in target_clones' ifunc resolvers (they run before it starts), so its
// builds use the default clone only.
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SMELT_ELEMENTWISE \
  __attribute__((target_clones("avx512f", "avx2", "default"), optimize("O3", "fp-contract=off")))
#else
#define SMELT_ELEMENTWISE __attribute__((optimize("O3", "fp-contract=off")))
#endif

namespace smelt::kernels {

#if defined(__x86_64__)
// Whether the running CPU has each feature (cpuid, queried on first use and cached), capped by
// the environment variable SMELT_MAX_ISA: "avx2" hides the AVX-512 features, "scalar" also AVX2
// and F16C, so that one machine can run every hand-dispatched path (the kernel tests do:
// KernelPaths in tests/kernels_select_test.cpp). Anything else, or unset, caps nothing. The
// forward pass's matrix kernels follow it too (infer/matmul.cpp asks these functions); the
// target_clones loops do not (GCC's resolver picks those).
bool cpu_has_avx2();
bool cpu_has_f16c();
bool cpu_has_avx512f();
bool cpu_has_avx512dq();
bool cpu_has_avx512bw();
#endif

}  // namespace smelt::kernels
