// x86 CPU features, each queried once.
#include "smelt/kernels/cpu_features.h"

namespace smelt::kernels {

#if defined(__x86_64__)
namespace {

// __builtin_cpu_init makes the query safe even before static constructors have run.
bool query(bool (*probe)()) {
  __builtin_cpu_init();
  return probe();
}

}  // namespace

bool cpu_has_avx2() {
  static const bool has = query([] { return bool(__builtin_cpu_supports("avx2")); });
  return has;
}
bool cpu_has_f16c() {
  static const bool has = query([] { return bool(__builtin_cpu_supports("f16c")); });
  return has;
}
bool cpu_has_avx512f() {
  static const bool has = query([] { return bool(__builtin_cpu_supports("avx512f")); });
  return has;
}
bool cpu_has_avx512dq() {
  static const bool has = query([] { return bool(__builtin_cpu_supports("avx512dq")); });
  return has;
}
bool cpu_has_avx512bw() {
  static const bool has = query([] { return bool(__builtin_cpu_supports("avx512bw")); });
  return has;
}
#endif

}  // namespace smelt::kernels
