// Growable scratch buffers for the executor's workers: anonymous memory reused for every chunk,
// so page faults are paid once per run (first-touch faults are very expensive on the target VMs:
// docs/performance.md, "Memory and file reads on this VM class"). Plain pages, not transparent
// huge pages: on VMs that hand free memory back to the host, a fresh huge page costs 10-20x
// more to fault in than the same bytes in 4 KiB pages (docs/performance.md, "Round 4").
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

  // The memory a buffer of `bytes` bytes may occupy once touched, counted in whole 2 MiB (the
  // kernel may still back an aligned region with a huge page where THP is set to "always").
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
