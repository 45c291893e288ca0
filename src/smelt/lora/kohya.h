// Kohya / A1111 Stable Diffusion LoRA files (modules lora_unet_*, lora_te_*, lora_te1_*, lora_te2_*
// with lora_down, lora_up and alpha) mapped to a single-file SD checkpoint's tensor names and
// baked into it: W' = W + w·(alpha/r)·up·down (docs/lora.md, "Baking adapters").
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "smelt/io/tensor_file.h"

namespace smelt::lora {

// One module of a Kohya LoRA and the checkpoint tensor (rows) it changes.
struct KohyaModule {
  std::string name;    // e.g. lora_unet_down_blocks_0_attentions_0_proj_in
  std::string target;  // e.g. model.diffusion_model.input_blocks.1.1.proj_in.weight
  // The rows of `target` it changes: all of them, or the q, k or v third of an OpenCLIP text
  // encoder's fused attn.in_proj_weight (SD2, SDXL's second encoder).
  uint64_t row_begin = 0, row_end = 0;
  const io::TensorInfo* down = nullptr;  // [r, in] or [r, in, kh, kw]
  const io::TensorInfo* up = nullptr;    // [out, r] or [out, r, 1, 1]
  double scale = 1;                      // alpha / r (alpha = r when missing or 0)
};

// The name (with '.' for '_') that Kohya module `name` has in an LDM single-file checkpoint,
// without the ".weight" suffix and the "model.diffusion_model." / text encoder prefix, written
// with '_' between parts: the candidates A1111's loader tries, most likely first (e.g.
// lora_unet_down_blocks_0_attentions_0_proj_in -> input_blocks_1_1_proj_in). Empty for names
// outside the UNet and CLIP layouts.
std::vector<std::string> kohya_ldm_candidates(const std::string& name);

// Maps every module of Kohya LoRA `lora` to the tensors of `checkpoint`, reading each alpha.
// Checks every shape against the tensor it changes. Throws smelt::Error naming the LoRA file and
// module for a module the checkpoint lacks, a shape that does not fit, a missing lora_up, a rank
// of 0, and for other LoRA formats (LyCORIS LoHa/LoKr, diffusers/PEFT keys), refused by name.
std::vector<KohyaModule> map_kohya_lora(const io::TensorFile& lora,
                                        const io::TensorFile& checkpoint);

struct KohyaBakeOptions {
  std::filesystem::path checkpoint;          // .safetensors (or a PyTorch .ckpt/.pt/.bin)
  std::vector<std::filesystem::path> loras;  // Kohya LoRA files (.safetensors, .pt)
  std::vector<double> weights;               // one per LoRA; empty = 1 each
  std::filesystem::path out;                 // a .safetensors file
  bool overwrite = false;
  size_t threads = 0;  // 0 = every core
};

struct KohyaBakeReport {
  size_t modules = 0;          // LoRA modules applied, over all LoRAs
  size_t tensors_changed = 0;  // checkpoint tensors they changed
  size_t tensors = 0;          // tensors written
};

// Writes `out`: the checkpoint with every LoRA added, W' = W + Σ_i w_i·(alpha_i/r_i)·up_i·down_i
// (convolutions as up·down on the flattened kernels, which equals sd-scripts' conv2d form for
// its 1×1 lora_up), computed in f32 and rounded once to each tensor's dtype; other tensors are
// copied byte for byte, and the checkpoint's metadata kept. Streams one tensor at a time. Every
// LoRA is mapped and checked (values finite too) before anything is written; `out` appears only
// once complete. Throws smelt::Error naming the file, module and shapes.
KohyaBakeReport bake_kohya(const KohyaBakeOptions& options);

}  // namespace smelt::lora
