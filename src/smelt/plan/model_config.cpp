// config.json text of safetensors models, and its stand-in built from GGUF metadata.
#include "smelt/plan/model_config.h"

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "smelt/io/gguf.h"

namespace smelt::plan {
namespace {

std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A config.json-like description of a GGUF model from its metadata, so the architecture table's
// "gguf" entry applies (layer stack blk.N, block_count, tied output head).
std::string gguf_config_text(const io::Model& model) {
  const auto* file = dynamic_cast<const io::GgufFile*>(model.files().at(0).get());
  std::string arch = "unknown";
  if (file) {
    if (const io::GgufValue* v = file->find_kv("general.architecture")) {
      if (auto s = v->as_string()) arch = std::string(*s);
    }
  }
  nlohmann::json j = {{"model_type", "gguf"},
                      {"architectures", {arch}},
                      {"tie_word_embeddings", !model.has("output.weight")}};
  if (file) {
    if (const io::GgufValue* v = file->find_kv(arch + ".block_count")) {
      if (auto n = v->as_uint()) j["block_count"] = *n;
    }
  }
  return j.dump();
}

}  // namespace

std::string model_config_text(const io::Model& model) {
  if (model.resolved().gguf) return gguf_config_text(model);
  if (!model.resolved().config_json.empty()) return read_text_file(model.resolved().config_json);
  return "";
}

}  // namespace smelt::plan
