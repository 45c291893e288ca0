// A base model with a PEFT LoRA adapter applied as its tensors are read: W' = W + s·B·A (DoRA,
// embeddings, biases and full replacement tensors too), computed for exactly the rows a read
// asks for, so merges keep streaming in bounded memory (docs/lora.md, "Baking adapters").
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "smelt/io/lora_adapter.h"
#include "smelt/io/tensor_file.h"

namespace smelt::io {

class Model;
struct ResolvedModel;
class LoraFactorCache;

// One file of the base model seen through an adapter. Tensors the adapter does not change are
// read from the base file unchanged (same TensorInfo, contiguous); changed ones keep the base
// tensor's name, dtype and shape, are marked not contiguous (their bytes are computed, so
// readers must call read()) and are rounded once to the base dtype.
class LoraTensorFile : public TensorFile {
 public:
  // `edits` are the adapter's edits of tensors in `base` (LoraAdapter::bind); `cache` holds the
  // decoded factors of the last tensors read and is shared by every file of one model.
  LoraTensorFile(std::shared_ptr<TensorFile> base, std::shared_ptr<const LoraAdapter> adapter,
                 const std::vector<const LoraEdit*>& edits, std::shared_ptr<LoraFactorCache> cache);
  ~LoraTensorFile() override;

  const std::filesystem::path& path() const override { return base_->path(); }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  uint64_t file_size() const override { return base_->file_size(); }
  const std::map<std::string, std::string>& metadata() const override { return base_->metadata(); }
  const TensorInfo* find(std::string_view name) const override;
  // Thread-safe. Any byte range of a changed tensor: whole rows around it are computed (f32),
  // rounded to the dtype, and the requested bytes copied out.
  void read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const override;

 private:
  size_t index_of(const TensorInfo& t) const;
  void read_low_rank(size_t i, uint64_t offset, char* dst, uint64_t size) const;
  void read_elementwise(size_t i, uint64_t offset, char* dst, uint64_t size) const;

  std::shared_ptr<TensorFile> base_;
  std::shared_ptr<const LoraAdapter> adapter_;
  std::shared_ptr<LoraFactorCache> cache_;
  std::vector<TensorInfo> tensors_;
  std::vector<const TensorInfo*> base_info_;  // tensors_[i] in base_
  std::vector<const LoraEdit*> edit_;         // nullptr: unchanged
  std::unordered_map<std::string_view, size_t> by_name_;
};

// `base` with `adapter` applied on read: binds the adapter (LoraAdapter::bind, so every check
// runs here, before any base tensor data is read) and wraps each of base's files. The result's
// resolved() is `resolved` (its ref names the adapter).
std::shared_ptr<Model> apply_lora(const std::shared_ptr<Model>& base,
                                  std::shared_ptr<const LoraAdapter> adapter,
                                  const ResolvedModel& resolved);

}  // namespace smelt::io
