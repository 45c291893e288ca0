// The decoder forward pass (docs/inference.md): llama 1/2/3, mistral, qwen2, qwen3 and gemma2
// models from a Hugging Face folder (safetensors, any float dtype, mapped and kept in their stored
// dtype), a GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), or tensors in memory (a
// merge evaluated without writing it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/infer/language_model.h"

namespace smelt::infer {

// A tensor owned by the caller's buffer, in Hugging Face naming (a merge's output).
struct MemoryTensor {
  std::string name;             // "model.layers.0.self_attn.q_proj.weight"
  DType dtype = DType::kF32;    // F32, F16 or BF16
  std::vector<uint64_t> shape;  // PyTorch order
  std::vector<uint8_t> bytes;   // little-endian elements
};

// What every family's forward pass needs, read from config.json or GGUF metadata.
struct ModelInfo {
  std::string family;  // "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma2"
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;           // MLP width (of each expert in a mixture of experts)
  int n_expert = 0;       // mixture of experts: experts per layer (0 = dense MLP)
  int n_expert_used = 0;  // ... and experts each token is routed to
  int n_ctx_train = 0;    // max_position_embeddings / <arch>.context_length
  // Special tokens as config.json / generation_config.json / GGUF give them; -1 when absent.
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;
  bool add_bos = false;       // GGUF tokenizer.ggml.add_bos_token (HF: decided by the tokenizer)
  uint64_t weight_bytes = 0;  // bytes of the weights as stored
};

struct LoadOptions {
  size_t threads = 0;  // 0 = every core
  // A PEFT LoRA adapter folder applied to a Hugging Face model's weights as they load
  // (io/lora_file.h); empty for none. Not for GGUF files.
  std::filesystem::path lora_adapter;
};

class Model {
 public:
  virtual ~Model() = default;
  // A Hugging Face model folder or a .gguf file. Throws smelt::Error naming the file, tensor or
  // config key: unsupported architecture (listing the supported ones), unsupported GGUF type,
  // missing or mis-shaped tensor.
  static std::unique_ptr<Model> load(const std::filesystem::path& path, const LoadOptions& options);
  // config.json's document and the tensors of a model in memory (HF names); takes ownership.
  static std::unique_ptr<Model> from_memory(const nlohmann::json& config,
                                            std::vector<MemoryTensor> tensors,
                                            const LoadOptions& options);

  virtual const ModelInfo& info() const = 0;
  // A fresh KV cache of n_ctx positions (f32) on this model; the model must outlive it. Sessions
  // of one model may run one after another, not at once.
  virtual std::unique_ptr<LanguageModel> new_session(int n_ctx) const = 0;

  // The hidden state entering each layer (the residual stream; layer 0's is the embedding, scaled
  // where the family scales it) while running `tokens` from an empty cache: at the last token,
  // or with `average` the mean over the tokens. n_layer × n_embd, row-major. What mergekit-moe's
  // `hidden` routers are made of (docs/moe.md).
  virtual std::vector<float> layer_inputs(std::span<const int32_t> tokens, bool average) const = 0;
  // Row `token` of the input embedding matrix as stored (no scaling), n_embd floats.
  virtual std::vector<float> embedding_row(int32_t token) const = 0;
};

}  // namespace smelt::infer
