// `smelt convert`: a model's weights rewritten as safetensors (docs/pytorch.md, "Converting"),
// under the same output rules as a merge (docs/reliability.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "smelt/io/model_ref.h"

namespace smelt::exec {

struct ConvertOptions {
  uint64_t shard_size = 5'000'000'000;  // folder output: bytes per shard
  bool overwrite = false;
  // Receives notes for the user (temporaries of a dead run removed, files left alone).
  std::function<void(const std::string&)> on_note;
};

// Writes `model`'s tensors, unchanged in dtype, shape and bytes, as safetensors at `out`: one
// .safetensors file when the model is a single file, else a model folder (shards plus index as
// needed, and the source folder's config, tokenizer and other non-weight model files copied).
// Refuses an `out` that is, contains or lies inside the input; holds OUT's lock; builds the
// output under a temporary name and publishes it only when complete and the inputs unchanged,
// so nothing half-written ever appears at `out`. Throws smelt::Error saying what to do.
void convert_to_safetensors(const io::Model& model, const std::filesystem::path& out,
                            const ConvertOptions& options);

}  // namespace smelt::exec
