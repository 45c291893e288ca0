// Growable scratch buffers for the executor's workers: anonymous memory advised for transparent
// huge pages and reused for every chunk, so page faults are paid once per run (first-touch faults
// are very expensive on the target VMs: docs/performance.md).
#pragma once

#include <cstddef>

namespace smelt::exec {

class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ~ScratchBuffer();
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ScratchBuffer(ScratchBuffer&& other) noexcept;
  ScratchBuffer& operator=(ScratchBuffer&& other) noexcept;

  // The memory a buffer of `bytes` bytes occupies once touched: whole 2 MiB huge pages.
  static size_t mapped_size(size_t bytes);

  // Makes room for `bytes` bytes; contents are not kept when the buffer grows.
  void reserve(size_t bytes);
  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace smelt::exec
