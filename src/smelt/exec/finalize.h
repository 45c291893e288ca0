// The non-weight files of a merged model folder: config.json, tokenizer files, the README.md
// model card and mergekit_config.yml (docs/config.md).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "smelt/plan/plan.h"

namespace smelt::exec {

// The output config.json text: the donor's config with the dtype fields set to the output dtype
// (out_dtype, else dtype, else unchanged) and, for slices, the layer count rewritten. Empty when
// the donor has no config.json.
std::string output_config_json(const plan::Plan& plan);

// Copies the donor's tokenizer files (mergekit's list) into `dir`, applying a configured chat
// template. Returns the names of the files written.
std::vector<std::string> copy_tokenizer(const plan::Plan& plan, const std::filesystem::path& dir);

// True when a model reference looks like a Hugging Face repo id rather than a local path.
bool looks_like_hub_id(const std::string& ref);

// The README.md model card for a merge written to a folder called `out_name`.
// `config_text` is the YAML shown in the card.
std::string model_card(const plan::Plan& plan, const std::string& out_name,
                       const std::string& config_text);

}  // namespace smelt::exec
