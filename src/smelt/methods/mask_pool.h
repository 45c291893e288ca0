// Byte masks of sparsified task vectors (1 = kept), kept from a statistics pass (the L1 rescale's)
// to the merge pass so a random or rank-based decision is made once per element.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace smelt::methods {

// Tensors above this many elements decide twice instead, so memory does not grow with the
// largest tensor (a mask is 1 byte per element: at most 16 MiB each).
inline constexpr uint64_t kMaxMaskElements = uint64_t{1} << 24;

// Mask buffers reused across tensors: fresh memory costs first-touch page faults, which are slow
// on VMs (docs/performance.md).
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

// One task vector's mask for one tensor: filled chunk by chunk during a statistics pass (chunks
// are disjoint, so fill() may run concurrently), read in the merge pass once every element has
// its byte. Tensors above kMaxMaskElements get no mask (chunk() returns null).
class TaskMask {
 public:
  explicit TaskMask(uint64_t numel) : numel_(numel) {}
  ~TaskMask() { MaskPool::give(std::move(bytes_)); }
  TaskMask(const TaskMask&) = delete;
  TaskMask& operator=(const TaskMask&) = delete;

  // Where chunk [offset, offset + n) of the mask goes, or null when the tensor is too large.
  // Call filled(n) after writing it.
  uint8_t* chunk(uint64_t offset) {
    if (numel_ > kMaxMaskElements) return nullptr;
    std::lock_guard lock(mutex_);
    if (bytes_.empty()) bytes_ = MaskPool::take(numel_);
    return bytes_.data() + offset;
  }
  void filled(uint64_t n) { filled_.fetch_add(n, std::memory_order_relaxed); }
  // The whole mask once every element was filled (after the pass), else null.
  const uint8_t* complete() const {
    return filled_.load(std::memory_order_relaxed) == numel_ && !bytes_.empty() ? bytes_.data()
                                                                                : nullptr;
  }

 private:
  uint64_t numel_;
  std::mutex mutex_;
  std::vector<uint8_t> bytes_;
  std::atomic<uint64_t> filled_{0};
};

}  // namespace smelt::methods
