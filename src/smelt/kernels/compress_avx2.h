// AVX2 has no compress instruction: for each 8-bit lane mask, the indices of its set lanes in
// order (then zeros), so that one vpermd packs the selected lanes of a vector to its front. Used
// by the top-k filters (topk.cpp) and della's decision (rank.cpp). Include only from code compiled
// for x86-64.
#pragma once

#include <cstdint>

namespace smelt::kernels::avx2 {

struct CompressTable {
  alignas(32) uint32_t index[256][8];
};

inline const CompressTable& compress_table() {
  static const CompressTable table = [] {
    CompressTable t{};
    for (uint32_t m = 0; m < 256; ++m) {
      uint32_t k = 0;
      for (uint32_t lane = 0; lane < 8; ++lane) {
        if ((m >> lane) & 1u) t.index[m][k++] = lane;
      }
    }
    return t;
  }();
  return table;
}

}  // namespace smelt::kernels::avx2
