// What every weights file (safetensors, GGUF or PyTorch .bin) offers its readers: TensorInfo (where
// a tensor's bytes lie) and TensorFile (a file of tensors opened for reading).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/dtype.h"

namespace smelt::io {

// One tensor of a weights file (safetensors or GGUF): where its bytes lie.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;    // for quantized GGUF tensors: kU8 (raw blocks)
  std::vector<uint64_t> shape;  // PyTorch order (outermost first), also for GGUF
  uint64_t offset = 0;          // absolute byte offset of the first data byte in the file
  uint64_t nbytes = 0;
  int32_t ggml_type = -1;  // GGUF tensors: the ggml type id; -1 for safetensors
  // False for a strided or byte-swapped PyTorch .bin view: its bytes are not the file range
  // [offset, offset + nbytes) and must be read through TensorFile::read (nbytes is still the
  // size of the tensor's data in C order).
  bool contiguous = true;
  uint64_t numel() const;
  bool quantized() const;  // a GGUF block-quantized type (Q8_0, Q4_K, ...)
};

// A file holding tensors, opened for reading.
class TensorFile {
 public:
  virtual ~TensorFile() = default;
  virtual const std::filesystem::path& path() const = 0;
  virtual const std::vector<TensorInfo>& tensors() const = 0;
  virtual uint64_t file_size() const = 0;
  // File-level metadata as text (safetensors __metadata__; GGUF key/values rendered as text).
  virtual const std::map<std::string, std::string>& metadata() const = 0;
  // nullptr when absent.
  virtual const TensorInfo* find(std::string_view name) const = 0;
  // Copies `size` bytes starting `offset` bytes into tensor `t`'s data to dst. Thread-safe.
  virtual void read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const = 0;
};

// pread()s exactly `size` bytes at `pos` of `fd` (retrying short reads); throws smelt::Error
// naming `path` and `tensor` on failure.
void pread_exact(int fd, void* dst, uint64_t size, uint64_t pos, const std::filesystem::path& path,
                 std::string_view tensor);

}  // namespace smelt::io
