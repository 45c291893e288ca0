// Byte masks of sparsified task vectors (1 = kept), kept from a statistics pass (the L1 rescale's)
// to the merge pass so a random or rank-based decision is made once per element.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace smelt::methods {

// Tensors above this many elements decide twice instead, so memory does not grow with the
// largest tensor (a mask is 1 byte per element: at most 16 MiB each).
inline constexpr uint64_t kMaxMaskElements = uint64_t{1} << 24;

// Mask buffers reused across tensors: fresh memory costs first-touch page faults, which are slow
// on VMs (formats.md §3).
class MaskPool {
 public:
  static std::vector<uint8_t> take(uint64_t n) {
    std::lock_guard lock(mutex());
    auto& pool = buffers();
    std::vector<uint8_t> v;
    if (!pool.empty()) {
      v = std::move(pool.back());
      pool.pop_back();
    }
    if (v.size() < n) v.resize(n);
    return v;
  }
  static void give(std::vector<uint8_t> v) {
    if (v.empty()) return;
    std::lock_guard lock(mutex());
    if (buffers().size() < 8) buffers().push_back(std::move(v));
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::vector<uint8_t>>& buffers() {
    static std::vector<std::vector<uint8_t>> b;
    return b;
  }
};

}  // namespace smelt::methods
