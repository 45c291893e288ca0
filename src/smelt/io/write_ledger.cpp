// Exactly-once accounting of the bytes written into an output file's tensors.
#include "smelt/io/write_ledger.h"

#include <iterator>

#include "smelt/error.h"

namespace smelt::io {

WriteLedger::WriteLedger(std::string label, std::vector<std::string> names,
                         std::vector<uint64_t> sizes)
    : label_(std::move(label)),
      names_(std::move(names)),
      sizes_(std::move(sizes)),
      tensors_(sizes_.size()),
      locks_(std::make_unique<std::mutex[]>(kStripes)) {}

void WriteLedger::record(size_t index, uint64_t offset, uint64_t size) {
  if (index >= sizes_.size()) {
    fail("{}: tensor index {} is out of range ({} tensors)", label_, index, sizes_.size());
  }
  const uint64_t nb = sizes_[index];
  if (offset > nb || size > nb - offset) {
    fail("{}: tensor '{}': write of {} bytes at {} is outside its {} bytes", label_, names_[index],
         size, offset, nb);
  }
  if (size == 0) return;
  uint64_t begin = offset, end = offset + size;
  std::lock_guard lock(lock_for(index));
  auto& ranges = tensors_[index].ranges;
  // The first range that ends after `begin` is the only one that could overlap from the left.
  auto it = ranges.upper_bound(begin);
  if (it != ranges.begin()) {
    auto prev = std::prev(it);
    if (prev->second > begin) {
      fail("{}: tensor '{}': bytes {}..{} were written twice; refusing to finish a corrupt file",
           label_, names_[index], begin, std::min(end, prev->second));
    }
    if (prev->second == begin) {  // adjacent: extend it
      begin = prev->first;
      it = ranges.erase(prev);
    }
  }
  if (it != ranges.end() && it->first < end) {
    fail("{}: tensor '{}': bytes {}..{} were written twice; refusing to finish a corrupt file",
         label_, names_[index], it->first, std::min(end, it->second));
  }
  if (it != ranges.end() && it->first == end) {
    end = it->second;
    it = ranges.erase(it);
  }
  ranges.emplace_hint(it, begin, end);
}

void WriteLedger::check_complete() const {
  for (size_t i = 0; i < sizes_.size(); ++i) {
    std::lock_guard lock(lock_for(i));
    const auto& ranges = tensors_[i].ranges;
    if (sizes_[i] == 0) continue;
    const bool whole =
        ranges.size() == 1 && ranges.begin()->first == 0 && ranges.begin()->second == sizes_[i];
    if (!whole) {
      uint64_t written = 0;
      for (const auto& [b, e] : ranges) written += e - b;
      fail("{}: tensor '{}': {} of {} bytes were written; refusing to finish an incomplete file",
           label_, names_[i], written, sizes_[i]);
    }
  }
}

}  // namespace smelt::io
