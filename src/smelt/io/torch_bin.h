// PyTorch .bin / .pt checkpoints written by torch.save (zip or legacy layout, docs/pytorch.md)
// opened for lazy reading: the pickle is read by an allow-list machine, tensor bytes stay in the
// file until read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smelt/io/tensor_file.h"

namespace smelt::io {

struct TorchTensorRef;

// A torch.save state dict opened for reading. Contiguous tensors are plain byte ranges of the
// file (read like safetensors); strided views and big-endian files are gathered on read.
class TorchFile : public TensorFile {
 public:
  // Opens `path` (zip or legacy layout) and validates the pickle and every tensor's extent
  // against its storage and the file. Throws smelt::Error naming the file and the cause.
  static std::shared_ptr<TorchFile> open(const std::filesystem::path& path);
  ~TorchFile();
  TorchFile(const TorchFile&) = delete;
  TorchFile& operator=(const TorchFile&) = delete;

  const std::filesystem::path& path() const override { return path_; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  uint64_t file_size() const override { return file_size_; }
  const TensorInfo* find(std::string_view name) const override;
  // Thread-safe. A non-contiguous tensor is gathered whole on first read and the last one kept,
  // so reading it chunk by chunk costs one pass over its storage.
  void read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const override;

 private:
  // How a tensor's elements lie: element (i0..ik) at byte
  // TensorInfo::offset + sum(i_d * stride_d) * element size.
  struct Layout {
    std::vector<uint64_t> stride;
    bool swap = false;  // big-endian file
  };
  TorchFile() = default;
  void parse_zip();
  void parse_legacy();
  void add_tensor(const TorchTensorRef& ref, uint64_t storage_start, bool swap);
  std::shared_ptr<const std::vector<char>> gather(size_t index) const;

  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::vector<Layout> layouts_;
  std::map<std::string, std::string> metadata_;
  std::unordered_map<std::string_view, size_t> by_name_;
  mutable std::mutex mutex_;
  mutable size_t cached_index_ = SIZE_MAX;
  mutable std::shared_ptr<const std::vector<char>> cached_;
};

// True for file names a PyTorch checkpoint is saved under (.bin, .pt, .pth).
bool is_torch_file_name(const std::filesystem::path& path);

}  // namespace smelt::io
