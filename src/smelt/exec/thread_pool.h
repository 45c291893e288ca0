// A small fixed-size thread pool whose only operation is a blocking parallel-for; the calling
// thread takes part, so a pool of one thread runs everything inline.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace smelt::exec {

class ThreadPool {
 public:
  // `threads` workers in total, including the caller of parallel_for (>= 1).
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }

  // Calls fn(index, worker) for every index in [0, count), spread over the workers; worker is in
  // [0, size()) and no two concurrent calls share it. Returns when all calls are done; rethrows
  // the first exception thrown by fn (remaining indices are skipped).
  void parallel_for(size_t count, const std::function<void(size_t, size_t)>& fn);

 private:
  void worker_loop(size_t worker);
  void run_items(size_t worker);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t count_ = 0;
  size_t next_ = 0;
  size_t active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace smelt::exec
