// The forward pass's thread team (docs/inference.md, "Matrix products and threads"): threads are
// created once; each for_range publishes one job (a new generation number), the workers pick it
// up by spinning briefly and then sleeping on a condition variable, and each runs a fixed slice
// of [0, n), the caller the first one. The split is static, so which thread runs an index never
// matters to what it computes.
#include "smelt/infer/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace smelt::infer {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Spin this many rounds (a pause each, tens of ns; ~0.1 ms in all) before sleeping: covers the gap
// between the for_range calls of one forward pass without burning a core between tokens.
constexpr int kSpinRounds = 1 << 11;
// A team serves one caller at a time: for_range is not to be called from two threads at once.

// Set while a thread runs a slice: a for_range from inside one runs inline, on that thread.
thread_local bool t_in_team = false;

}  // namespace

struct Parallel::Impl {
  size_t threads = 1;
  std::vector<std::thread> workers;

  // The published job.
  const std::function<void(size_t, size_t, size_t)>* fn = nullptr;
  size_t n = 0;
  size_t active = 1;  // threads taking part in this job, the caller included
  // On their own cache lines: workers spin on `generation` while slices finish into `pending`.
  alignas(64) std::atomic<uint64_t> generation{0};
  alignas(64) std::atomic<size_t> pending{0};
  bool stop = false;

  std::mutex m;
  std::condition_variable wake;  // workers: a new generation
  std::condition_variable done;  // caller: pending reached 0
  std::exception_ptr error;

  void run_slice(size_t i) {
    const size_t begin = n * i / active, end = n * (i + 1) / active;
    if (begin == end) return;
    t_in_team = true;
    try {
      (*fn)(begin, end, i);
    } catch (...) {
      std::lock_guard lock(m);
      if (!error) error = std::current_exception();
    }
    t_in_team = false;
  }

  void worker(size_t i) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = generation.load(std::memory_order_acquire);
      for (int k = 0; g == seen && k < kSpinRounds; ++k) {
        cpu_relax();
        g = generation.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock lock(m);
        wake.wait(lock, [&] { return generation.load(std::memory_order_acquire) != seen || stop; });
        g = generation.load(std::memory_order_acquire);
        if (stop) return;
      }
      seen = g;
      if (i < active) run_slice(i);
      if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard lock(m);
        done.notify_one();
      }
    }
  }
};

Parallel::Parallel(size_t threads) : impl_(std::make_unique<Impl>()) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  impl_->threads = threads;
  impl_->workers.reserve(threads - 1);
  for (size_t i = 1; i < threads; ++i) impl_->workers.emplace_back([this, i] { impl_->worker(i); });
}

Parallel::~Parallel() {
  {
    std::lock_guard lock(impl_->m);
    impl_->stop = true;
  }
  impl_->wake.notify_all();
  for (auto& w : impl_->workers) w.join();
}

size_t Parallel::threads() const { return impl_->threads; }

void Parallel::for_range(size_t n, const std::function<void(size_t, size_t, size_t)>& fn) {
  Impl& p = *impl_;
  const size_t t = std::min(p.threads, n);
  if (t <= 1 || t_in_team) {
    if (n > 0) fn(0, n, 0);
    return;
  }
  {
    std::lock_guard lock(p.m);
    p.fn = &fn;
    p.n = n;
    p.active = t;
    p.error = nullptr;
    p.pending.store(p.threads - 1, std::memory_order_relaxed);
    p.generation.fetch_add(1, std::memory_order_release);
  }
  p.wake.notify_all();
  p.run_slice(0);
  for (int k = 0; p.pending.load(std::memory_order_acquire) != 0 && k < kSpinRounds; ++k)
    cpu_relax();
  if (p.pending.load(std::memory_order_acquire) != 0) {
    std::unique_lock lock(p.m);
    p.done.wait(lock, [&] { return p.pending.load(std::memory_order_acquire) == 0; });
  }
  std::exception_ptr error;
  {
    std::lock_guard lock(p.m);
    error = p.error;
    p.error = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace smelt::infer
