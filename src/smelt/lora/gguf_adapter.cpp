// llama.cpp LoRA adapters: GGUF names and the Q/K permutation from the GGUF export, the pairs laid
// out as llama.cpp's loader checks them (docs/lora_extract.md, "GGUF adapters").
#include "smelt/lora/gguf_adapter.h"

#include <algorithm>

#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/io/gguf.h"
#include "smelt/io/gguf_export.h"

namespace smelt::lora {

GgufLoraLayout::GgufLoraLayout(nlohmann::json base_config)
    : config_(std::move(base_config)), arch_(io::gguf_arch_for(config_)) {}

std::optional<GgufLoraTarget> GgufLoraLayout::target(const std::string& hf_weight, uint64_t rows,
                                                     bool embedding) const {
  const std::optional<std::string> name = io::gguf_tensor_name(arch_, hf_weight);
  if (!name) return std::nullopt;
  GgufLoraTarget t;
  t.weight = *name;
  t.permute_heads = io::gguf_qk_permute_heads(arch_, hf_weight, rows, config_);
  t.embedding = embedding;
  if (embedding != (t.weight == "token_embd.weight")) {
    fail("tensor '{}' is GGUF's '{}': llama.cpp applies embedding LoRA only to token_embd.weight",
         hf_weight, t.weight);
  }
  return t;
}

uint64_t write_gguf_lora(const std::filesystem::path& path, const std::string& arch,
                         const std::string& name, const std::vector<GgufLoraPair>& pairs,
                         io::AtomicFileOptions file_options) {
  size_t max_rank = 0;
  for (const GgufLoraPair& p : pairs) max_rank = std::max(max_rank, p.rank);
  if (max_rank == 0) fail("internal: a GGUF LoRA adapter without pairs");
  std::vector<io::GgufKv> kvs;
  io::gguf_set_kv(kvs, "general.architecture", io::GgufValue::of(arch));
  io::gguf_set_kv(kvs, "general.type", io::GgufValue::of("adapter"));
  if (!name.empty()) io::gguf_set_kv(kvs, "general.name", io::GgufValue::of(name));
  io::gguf_set_kv(kvs, "adapter.type", io::GgufValue::of("lora"));
  io::gguf_set_kv(kvs, "adapter.lora.alpha", io::GgufValue::of(static_cast<float>(max_rank)));

  // Shapes in PyTorch order. Linear: lora_a = A [rank, in], lora_b = B [out, rank] (ggml
  // {in, rank} and {rank, out}). token_embd: lora_a = Aᵀ [vocab, rank], lora_b = B [hidden, rank].
  std::vector<io::GgufTensorSpec> specs;
  for (const GgufLoraPair& p : pairs) {
    if (p.a->size() != p.rank * p.in || p.b->size() != p.out * p.rank) {
      fail("internal: LoRA pair for {} has inconsistent sizes", p.target.weight);
    }
    const std::vector<uint64_t> a_shape = p.target.embedding ? std::vector<uint64_t>{p.in, p.rank}
                                                             : std::vector<uint64_t>{p.rank, p.in};
    specs.push_back({p.target.weight + ".lora_a", kernels::GgmlType::kF32, a_shape});
    specs.push_back({p.target.weight + ".lora_b", kernels::GgmlType::kF32, {p.out, p.rank}});
  }
  io::GgufWriter writer(path, std::move(kvs), specs, io::kGgufDefaultAlignment,
                        std::move(file_options));
  uint64_t bytes = 0;
  std::vector<float> buf;
  for (size_t i = 0; i < pairs.size(); ++i) {
    check_interrupted();
    const GgufLoraPair& p = pairs[i];
    if (p.target.embedding) {
      buf.resize(p.in * p.rank);
      for (size_t r = 0; r < p.rank; ++r) {
        for (size_t j = 0; j < p.in; ++j) buf[j * p.rank + r] = (*p.a)[r * p.in + j];
      }
    } else {
      buf = *p.a;
    }
    writer.write(2 * i, 0, buf.data(), buf.size() * sizeof(float));
    bytes += buf.size() * sizeof(float);
    // llama.cpp scales by alpha / rank = max_rank / rank: B is scaled back by rank / max_rank.
    const float scale = static_cast<float>(static_cast<double>(p.rank) / max_rank);
    buf.resize(p.out * p.rank);
    for (size_t row = 0; row < p.out; ++row) {
      const size_t src = p.target.permute_heads > 0
                             ? io::gguf_qk_source_row(row, p.out, p.target.permute_heads)
                             : row;
      for (size_t r = 0; r < p.rank; ++r) buf[row * p.rank + r] = (*p.b)[src * p.rank + r] * scale;
    }
    writer.write(2 * i + 1, 0, buf.data(), buf.size() * sizeof(float));
    bytes += buf.size() * sizeof(float);
  }
  writer.finish();
  return bytes;
}

}  // namespace smelt::lora
