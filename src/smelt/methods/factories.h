// Internal to smelt/methods: the factory of every method (one per method file, listed in
// registry.cpp) and the helpers that method files share.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "smelt/methods/method.h"

namespace smelt::methods {

// One factory per method file, in registry order. A new method adds a file defining make_<name>,
// a declaration here and one line in registry.cpp.
std::unique_ptr<Method> make_linear();
std::unique_ptr<Method> make_slerp();
std::unique_ptr<Method> make_passthrough();
std::unique_ptr<Method> make_task_arithmetic();
std::unique_ptr<Method> make_ties();
std::unique_ptr<Method> make_dare_ties();
std::unique_ptr<Method> make_dare_linear();

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

// Input `input`'s value of per-model parameter `name`, or `fallback` when it has none (the
// planner normally fills declared defaults; this keeps methods total when it did not).
inline double model_value_or(const TensorContext& ctx, size_t input, const std::string& name,
                             double fallback) {
  return ctx.params->model_value(input, name).value_or(fallback);
}

}  // namespace smelt::methods
