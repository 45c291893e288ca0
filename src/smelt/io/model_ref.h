// Model references (`PATH[@REV][+LORA[@REV]]`) and their resolution to tensor files: a Hugging
// Face model folder, a single .safetensors, .gguf or PyTorch .bin file, or a Hub repo id found in
// the local HF cache.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "smelt/io/tensor_file.h"

namespace smelt::io {

// A parsed model reference as written in mergekit configs.
struct ModelRef {
  std::string path;
  std::string revision;  // empty = default ("main")
  std::string lora_path;
  std::string lora_revision;

  // Parses `PATH[@REV][+LORA[@REV]]`. A string naming an existing local path is taken whole (so
  // folders containing '@' or '+' work). Throws smelt::Error for more than one '+' or '@'.
  static ModelRef parse(std::string_view text);
  // Canonical form; parse(str()) == *this.
  std::string str() const;
  bool operator==(const ModelRef&) const = default;
};

// Where a reference's files are.
struct ResolvedModel {
  std::string ref;                    // the reference as given
  std::filesystem::path root;         // model folder; for a single file, its parent folder
  std::filesystem::path config_json;  // empty when the model has none
  std::filesystem::path index_json;   // empty unless sharded with an index
  // The index's weight_map (tensor name, shard file name), parsed and checked once by
  // resolve_model; Model::open cross-checks it against the shards' headers.
  std::vector<std::pair<std::string, std::string>> index_weight_map;
  std::vector<std::filesystem::path> weight_files;
  bool single_file = false;  // the reference named one .safetensors, .gguf or .bin file
  bool gguf = false;         // weight_files are the parts of a GGUF model
  // The PEFT LoRA adapter folder of a `MODEL+LORA` reference (empty without one): Model::open
  // applies it on read (lora_file.h); root, config_json and weight_files are the base model's.
  std::filesystem::path lora_dir;
};

// The Hugging Face hub cache folder: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
std::filesystem::path hf_hub_cache_dir();

// The weight map of a model.safetensors.index.json text: (tensor name, shard file name) pairs in
// name order. Checks that the text is a JSON object with a non-empty "weight_map" object whose
// values are plain file names (non-empty, no '/', not "." or ".."). Throws smelt::Error naming
// `label` (the index file) and the entry otherwise.
std::vector<std::pair<std::string, std::string>> parse_safetensors_index(std::string_view text,
                                                                         const std::string& label);

// Whether `s` has the shape of a Hub repo id, `org/name` (letters, digits, '.', '_', '-').
bool looks_like_hub_id(const std::string& s);

// Whether resolve_model downloads a Hub id that is missing from the cache (hub_client.h,
// docs/hub.md). Off by default, so library users and tests read only the cache; the smelt CLI
// turns it on for every verb.
void set_hub_download(bool on);

// Resolves `ref`: safetensors weights when the folder has them, else PyTorch pytorch_model*.bin
// weights (docs/pytorch.md). A LoRA part is resolved to an adapter folder holding
// adapter_config.json (a local folder, or a Hub id found in the cache or downloaded like a
// model); its contents are checked when the model is opened. A Hub id missing from the cache is
// downloaded when set_hub_download(true) was called. Throws smelt::Error listing every place
// looked at when nothing is found.
ResolvedModel resolve_model(const ModelRef& ref);

// Resolves the LoRA part of `ref` (which must have one) to its adapter folder, as
// resolve_model does.
std::filesystem::path resolve_lora(const ModelRef& ref);

// Where one tensor of a model lies.
struct ModelTensor {
  const TensorInfo* info = nullptr;
  const TensorFile* file = nullptr;
};

// A model opened for reading: every shard's header validated, the index (if any) cross-checked
// against the shards (a shard it names must exist; each tensor it maps must be in that shard).
class Model {
 public:
  // Opens the files; with resolved.lora_dir, the adapter is checked against the base model and
  // applied on read (apply_lora in lora_file.h).
  static std::shared_ptr<Model> open(const ResolvedModel& resolved);
  // A model over already opened files (e.g. tensors computed by an earlier recipe stage).
  // `read_memory_bytes`: see read_memory_bytes().
  static std::shared_ptr<Model> from_files(const ResolvedModel& resolved,
                                           std::vector<std::shared_ptr<TensorFile>> files,
                                           uint64_t read_memory_bytes = 0);
  // Convenience: parse + resolve + open.
  static std::shared_ptr<Model> open(std::string_view ref);

  const ResolvedModel& resolved() const { return resolved_; }
  const std::vector<std::shared_ptr<TensorFile>>& files() const { return files_; }
  // Every tensor, in shard order then data order.
  const std::vector<ModelTensor>& tensors() const { return tensors_; }
  // nullopt-like: info == nullptr when absent.
  ModelTensor find(std::string_view name) const;
  bool has(std::string_view name) const { return find(name).info != nullptr; }
  // Memory that reading this model's tensors holds beyond the callers' buffers (a LoRA
  // adapter's decoded factors); 0 for plain files. The executor counts it in --max-memory.
  uint64_t read_memory_bytes() const { return read_memory_bytes_; }

 private:
  ResolvedModel resolved_;
  uint64_t read_memory_bytes_ = 0;
  std::vector<std::shared_ptr<TensorFile>> files_;
  std::vector<ModelTensor> tensors_;
  std::unordered_map<std::string_view, size_t> by_name_;
};

}  // namespace smelt::io
