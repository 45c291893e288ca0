// config.json text of safetensors models, and its stand-in built from GGUF metadata.
#include "smelt/plan/model_config.h"

#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/io/file_util.h"
#include "smelt/io/gguf.h"

namespace smelt::plan {
namespace {

// A model's config.json text, checked to be JSON here so a broken file is named at plan time
// rather than misread later as a model without architecture information.
std::string read_config_json(const std::filesystem::path& p) {
  std::string text = io::read_whole_file(p);
  try {
    [[maybe_unused]] const nlohmann::json parsed = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line L, column C: ...".
    std::string why = e.what();
    if (const size_t at = why.find("] "); at != std::string::npos) why.erase(0, at + 2);
    fail("{}: not valid JSON ({}); fix or replace the model's config.json", p.string(), why);
  }
  return text;
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
  if (!model.resolved().config_json.empty()) return read_config_json(model.resolved().config_json);
  return "";
}

}  // namespace smelt::plan
