// Per-chunk partial results of a statistics pass, combined in chunk order so whole-tensor
// statistics do not depend on which thread processed which chunk.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>

namespace smelt::methods {

// Per-chunk partial results of a statistics pass (e.g. a chunk's sum of squares), stored by chunk
// index so that end_pass can combine them in chunk order: totals are then bit-identical for any
// thread count and processing order. put() may run concurrently for different chunks.
template <typename T>
class ChunkPartials {
 public:
  // Records chunk `index`'s partial result.
  void put(size_t index, const T& value) {
    std::lock_guard lock(mutex_);
    values_[index] = value;
  }
  // Every recorded partial, by ascending chunk index. Call only when no put() is running (in
  // end_pass).
  const std::map<size_t, T>& in_order() const { return values_; }
  void clear() { values_.clear(); }

 private:
  std::mutex mutex_;
  std::map<size_t, T> values_;
};

}  // namespace smelt::methods
