// Reference implementation: std::thread per call; the pool of docs/inference.md replaces it.
#include "smelt/infer/parallel.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace smelt::infer {

struct Parallel::Impl {
  size_t threads = 1;
};

Parallel::Parallel(size_t threads) : impl_(std::make_unique<Impl>()) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  impl_->threads = threads;
}
Parallel::~Parallel() = default;
size_t Parallel::threads() const { return impl_->threads; }

void Parallel::for_range(size_t n, const std::function<void(size_t, size_t, size_t)>& fn) {
  const size_t t = std::min(impl_->threads, std::max<size_t>(n, 1));
  if (t <= 1) {
    fn(0, n, 0);
    return;
  }
  std::exception_ptr error;
  std::mutex m;
  std::vector<std::thread> team;
  for (size_t i = 1; i < t; ++i) {
    team.emplace_back([&, i] {
      try {
        fn(n * i / t, n * (i + 1) / t, i);
      } catch (...) {
        std::lock_guard lock(m);
        if (!error) error = std::current_exception();
      }
    });
  }
  try {
    fn(0, n / t, 0);
  } catch (...) {
    std::lock_guard lock(m);
    if (!error) error = std::current_exception();
  }
  for (auto& th : team) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace smelt::infer
