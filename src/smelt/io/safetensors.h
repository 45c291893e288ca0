// safetensors reading (header fully validated before any data is touched) and streaming writing
// (header first, tensor data to precomputed offsets, file visible only once complete).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/io/file_util.h"
#include "smelt/io/tensor_file.h"
#include "smelt/io/write_ledger.h"

namespace smelt::io {

// Largest header the reference reader accepts (bytes).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// The parsed, validated header of a safetensors file.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data order (sorted by offset)
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length
};

// Validates `header_json` (the N header bytes) of a file of `file_size` bytes whose header length
// field said N, enforcing every rule of the reference reader plus: duplicate keys rejected, exactly
// the three tensor keys, __metadata__ string->string, integers below 2^53. Throws smelt::Error
// naming `label` (the file), the tensor and the rule broken.
SafetensorsHeader parse_safetensors_header(std::string_view header_json, uint64_t file_size,
                                           const std::string& label);

// A safetensors file opened for reading. Reads use pread into caller buffers (measured faster
// than mmap on this machine class: see docs/performance.md).
class SafetensorsFile : public TensorFile {
 public:
  // Opens and validates `path`. Throws smelt::Error on any violation.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const override { return path_; }
  const std::vector<TensorInfo>& tensors() const override { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const override { return header_.metadata; }
  uint64_t file_size() const override { return file_size_; }
  const TensorInfo* find(std::string_view name) const override;
  void read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const override;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  SafetensorsHeader header_;
  std::unordered_map<std::string_view, size_t> by_name_;
};

// What the writer needs to know about a tensor before any data exists.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  uint64_t numel() const;
  uint64_t nbytes() const;  // throws smelt::Error on overflow
};

// Writes one safetensors file. The header is written at construction into a temporary file beside
// `path`; data is then written (from any thread) at each tensor's offset; finish() checks every
// byte was written, fdatasyncs and renames into place. Destroying an unfinished writer removes the
// temporary file, so a partial file never appears under `path`.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata,
                    AtomicFileOptions file_options = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Index of `name` in the spec list; nullopt when absent.
  std::optional<size_t> index_of(std::string_view name) const;
  const std::vector<TensorSpec>& tensors() const { return specs_; }
  // Writes `size` bytes at `offset` bytes into tensor `index`'s data. Thread-safe.
  void write(size_t index, uint64_t offset, const void* data, uint64_t size);
  // Completes the file (see class comment). Throws if any tensor byte is missing.
  void finish();
  const std::filesystem::path& path() const { return path_; }
  // Absolute file offset where tensor `index`'s data begins (for tests).
  uint64_t data_offset(size_t index) const { return offsets_[index]; }

 private:
  std::filesystem::path path_;
  std::unique_ptr<AtomicFile> file_;
  bool finished_ = false;
  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> offsets_;        // absolute
  std::unique_ptr<WriteLedger> ledger_;  // every byte written exactly once
  std::atomic<uint64_t> since_writeback_{0};
  std::unordered_map<std::string, size_t> by_name_;
};

// Parses mergekit's --out-shard-size: an integer with optional k|m|b (decimal, case-insensitive)
// suffix: "5B" = 5e9 bytes. Throws smelt::Error on anything else.
uint64_t parse_shard_size(std::string_view text);

// How tensors are split into shard files (Hugging Face's algorithm: walk in order, a tensor larger
// than the limit gets its own shard, start a new shard when the next tensor would overflow).
struct ShardLayout {
  std::vector<std::vector<size_t>> shards;  // tensor indices per shard, in order
  std::vector<std::string> file_names;      // model.safetensors or model-0000i-of-0000N...
};
ShardLayout plan_shards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_bytes);
// Hugging Face shard file names for n shards.
std::vector<std::string> shard_file_names(size_t n);

// Writes a whole model's weights into `dir` as shards plus (when more than one shard)
// model.safetensors.index.json. Each shard gets __metadata__ {"format":"pt"} + `metadata`.
class ShardedWriter {
 public:
  ShardedWriter(const std::filesystem::path& dir, std::vector<TensorSpec> tensors,
                uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata,
                AtomicFileOptions file_options = {});
  // Same with an explicit layout (every tensor index in exactly one shard).
  ShardedWriter(const std::filesystem::path& dir, std::vector<TensorSpec> tensors,
                ShardLayout layout, const std::map<std::string, std::string>& metadata,
                AtomicFileOptions file_options = {});
  // Writes bytes of tensor `index` (index into the constructor's list). Thread-safe.
  void write(size_t index, uint64_t offset, const void* data, uint64_t size);
  // Finishes every shard, then writes the index atomically.
  void finish();
  const ShardLayout& layout() const { return layout_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }

 private:
  std::filesystem::path dir_;
  std::vector<TensorSpec> tensors_;
  ShardLayout layout_;
  std::vector<std::unique_ptr<SafetensorsWriter>> writers_;
  std::vector<std::pair<size_t, size_t>> location_;  // tensor -> (shard, index in shard)
};

// Writes `text` to `path` atomically (temp file, fsync, rename).
void write_file_atomic(const std::filesystem::path& path, std::string_view text);

}  // namespace smelt::io
