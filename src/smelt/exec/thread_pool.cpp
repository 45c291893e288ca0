// Fixed-size thread pool with a blocking parallel-for.
#include "smelt/exec/thread_pool.h"

#include "smelt/interrupt.h"

namespace smelt::exec {

ThreadPool::ThreadPool(size_t threads) {
  for (size_t i = 1; i < std::max<size_t>(threads, 1); ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_items(size_t worker) {
  std::unique_lock lock(mutex_);
  while (next_ < count_ && !error_) {
    const size_t index = next_++;
    const auto* fn = fn_;
    lock.unlock();
    try {
      check_interrupted();  // Ctrl-C stops the work between items (interrupt.h)
      (*fn)(index, worker);
    } catch (...) {
      lock.lock();
      if (!error_) error_ = std::current_exception();
      continue;
    }
    lock.lock();
  }
}

void ThreadPool::worker_loop(size_t worker) {
  uint64_t seen = 0;
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    ++active_;
    lock.unlock();
    run_items(worker);
    lock.lock();
    if (--active_ == 0) done_.notify_all();
  }
}

void ThreadPool::parallel_for(size_t count, const std::function<void(size_t, size_t)>& fn) {
  if (count == 0) return;
  if (workers_.empty() || count == 1) {
    for (size_t i = 0; i < count; ++i) {
      check_interrupted();
      fn(i, 0);
    }
    return;
  }
  {
    std::lock_guard lock(mutex_);
    fn_ = &fn;
    count_ = count;
    next_ = 0;
    error_ = nullptr;
    ++generation_;
    ++active_;  // the caller
  }
  wake_.notify_all();
  run_items(0);
  std::unique_lock lock(mutex_);
  --active_;
  done_.wait(lock, [&] { return active_ == 0; });
  fn_ = nullptr;
  count_ = 0;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace smelt::exec
