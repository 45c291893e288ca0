// The config.json text a model's architecture is inferred from, for safetensors and GGUF models
// alike, so that the planner and `smelt inspect --arch` describe a model the same way.
#pragma once

#include <string>

#include "smelt/io/model_ref.h"

namespace smelt::plan {

// The model's config.json text; for a GGUF model a config.json-like description built from its
// metadata (model_type "gguf", architectures [general.architecture], block_count, and
// tie_word_embeddings true exactly when the file has no output.weight: docs/gguf.md, "Tied output
// head"); "" for a model with neither (bare tensor files).
std::string model_config_text(const io::Model& model);

}  // namespace smelt::plan
