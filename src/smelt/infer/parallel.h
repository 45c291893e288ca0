// The forward pass's thread team: one fork-join loop over a range, the calling thread included.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

namespace smelt::infer {

class Parallel {
 public:
  // `threads` in total, the caller included (>= 1; 0 = every core).
  explicit Parallel(size_t threads);
  ~Parallel();
  Parallel(const Parallel&) = delete;
  Parallel& operator=(const Parallel&) = delete;

  size_t threads() const;
  // Calls fn(begin, end, thread) on disjoint sub-ranges covering [0, n); returns when all are
  // done and rethrows the first exception. How [0, n) is split never changes a result that each
  // index computes on its own.
  void for_range(size_t n, const std::function<void(size_t, size_t, size_t)>& fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace smelt::infer
