// Bit masks of sparsified task vectors (1 = kept; the layout of kernels::random_mask), kept from a
// statistics pass (the L1 rescale's) to the merge pass so a random or rank-based decision is made
// once per element.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace smelt::methods {

// Tensors above this many elements decide twice instead, so memory does not grow with the
// largest tensor (a mask is 1 bit per element: at most 16 MiB each, enough for a 65536 x 2048
// embedding).
inline constexpr uint64_t kMaxMaskElements = uint64_t{1} << 27;

// The bytes of one mask of numel elements.
inline uint64_t mask_bytes(uint64_t numel) { return (numel + 7) / 8; }

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
// are disjoint and start at multiples of 8 elements, so at whole bytes: fills may run
// concurrently), read in the merge pass once every element has its bit. Tensors above
// kMaxMaskElements get no mask (chunk() returns null), and neither does a chunk that starts
// inside a byte (a chunking not a multiple of 8): the merge pass then decides again.
class TaskMask {
 public:
  explicit TaskMask(uint64_t numel) : numel_(numel) {}
  ~TaskMask() { MaskPool::give(std::move(bytes_)); }
  TaskMask(const TaskMask&) = delete;
  TaskMask& operator=(const TaskMask&) = delete;

  // Where the bits of chunk [offset, offset + n) go (ceil(n / 8) bytes), or null when the tensor
  // is too large or offset is not a multiple of 8. Call filled(n) after writing them.
  uint8_t* chunk(uint64_t offset) {
    if (numel_ > kMaxMaskElements || offset % 8 != 0) return nullptr;
    std::lock_guard lock(mutex_);
    if (bytes_.empty()) bytes_ = MaskPool::take(mask_bytes(numel_));
    return bytes_.data() + offset / 8;
  }
  void filled(uint64_t n) { filled_.fetch_add(n, std::memory_order_relaxed); }
  // The whole mask once every element was filled (after the pass), else null. Element j's bit is
  // bit j % 8 of byte j / 8.
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
