// Which byte ranges of each tensor a writer has received, so that a file is finished only when
// every byte of every tensor was written exactly once (docs/reliability.md, "complete outputs").
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace smelt::io {

class WriteLedger {
 public:
  // `sizes[i]` is tensor i's size in bytes; `names[i]` its name (for errors); `label` the file.
  WriteLedger(std::string label, std::vector<std::string> names, std::vector<uint64_t> sizes);
  // Records [offset, offset + size) of tensor `index`. Throws smelt::Error when the range leaves
  // the tensor or overlaps bytes already written (a range written twice is a bug that a byte
  // count would hide). Thread-safe; tensors are striped over a few locks.
  void record(size_t index, uint64_t offset, uint64_t size);
  // Throws smelt::Error naming the first tensor with bytes never written.
  void check_complete() const;

 private:
  struct Tensor {
    std::map<uint64_t, uint64_t> ranges;  // begin -> end, disjoint and not adjacent
  };
  std::mutex& lock_for(size_t index) const { return locks_[index % kStripes]; }
  static constexpr size_t kStripes = 64;
  std::string label_;
  std::vector<std::string> names_;
  std::vector<uint64_t> sizes_;
  std::vector<Tensor> tensors_;
  std::unique_ptr<std::mutex[]> locks_;
};

}  // namespace smelt::io
