// `smelt lora bake CKPT LORA... OUT`: Kohya / A1111 LoRA files baked into a single-file Stable
// Diffusion checkpoint (docs/lora.md, "Baking adapters").
#pragma once

#include <CLI/CLI.hpp>

namespace smelt::cli {

// Adds the `bake` subcommand to `lora_verb` (the `smelt lora` verb's CLI::App).
void add_lora_bake(CLI::App& lora_verb);

}  // namespace smelt::cli
