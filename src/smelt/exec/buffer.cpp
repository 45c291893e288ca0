// Scratch buffers (buffer.h).
#include "smelt/exec/buffer.h"

#include <sys/mman.h>

#include <new>
#include <utility>

namespace smelt::exec {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}

ScratchBuffer::~ScratchBuffer() {
  if (data_) ::munmap(data_, capacity_);
}

ScratchBuffer::ScratchBuffer(ScratchBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), capacity_(std::exchange(other.capacity_, 0)) {}

ScratchBuffer& ScratchBuffer::operator=(ScratchBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, capacity_);
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

size_t ScratchBuffer::mapped_size(size_t bytes) {
  return (bytes + kHugePage - 1) / kHugePage * kHugePage;
}

void ScratchBuffer::reserve(size_t bytes) {
  if (bytes <= capacity_) return;
  if (data_) ::munmap(data_, capacity_);
  data_ = nullptr;
  const size_t size = mapped_size(bytes);
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    capacity_ = 0;
    throw std::bad_alloc();
  }
  data_ = p;
  capacity_ = size;
}

}  // namespace smelt::exec
