// x86 CPU features, each queried once.
#include "smelt/kernels/cpu_features.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <cstdlib>
#include <string_view>

namespace smelt::kernels {

#if defined(__x86_64__)
namespace {

// __builtin_cpu_init makes the query safe even before static constructors have run.
bool query(bool (*probe)()) {
  __builtin_cpu_init();
  return probe();
}

// SMELT_MAX_ISA as a level: 0 scalar, 1 AVX2, 2 everything.
int max_isa() {
  static const int level = [] {
    const char* v = std::getenv("SMELT_MAX_ISA");
    if (v == nullptr) return 2;
    const std::string_view s(v);
    return s == "scalar" ? 0 : s == "avx2" ? 1 : 2;
  }();
  return level;
}

}  // namespace

bool cpu_has_avx2() {
  static const bool has =
      max_isa() >= 1 && query([] { return bool(__builtin_cpu_supports("avx2")); });
  return has;
}
// Clang before 16 does not know "f16c" in __builtin_cpu_supports (the fuzz build uses clang,
// docs/reliability.md), so the CPUID bit (leaf 1, ECX) is read directly.
bool cpu_has_f16c() {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return max_isa() >= 1 && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  }();
  return has;
}
bool cpu_has_avx512f() {
  static const bool has =
      max_isa() >= 2 && query([] { return bool(__builtin_cpu_supports("avx512f")); });
  return has;
}
bool cpu_has_avx512dq() {
  static const bool has =
      max_isa() >= 2 && query([] { return bool(__builtin_cpu_supports("avx512dq")); });
  return has;
}
bool cpu_has_avx512bw() {
  static const bool has =
      max_isa() >= 2 && query([] { return bool(__builtin_cpu_supports("avx512bw")); });
  return has;
}
#endif

}  // namespace smelt::kernels
