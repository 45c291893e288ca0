// config.json, tokenizer files and the model card of a merged model.
#include "smelt/exec/finalize.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>

#include "smelt/error.h"
#include "smelt/io/file_util.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/plan/architecture.h"

namespace smelt::exec {
using plan::ArchitectureInfo;
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

// Sets a dotted key ("text_config.num_hidden_layers") in j when its parent exists.
void set_dotted(ordered_json& j, const std::string& key, int64_t value) {
  ordered_json* node = &j;
  size_t start = 0;
  for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', start)) {
    const std::string part = key.substr(start, dot - start);
    if (!node->is_object() || !node->contains(part)) return;
    node = &(*node)[part];
    start = dot + 1;
  }
  if (node->is_object()) (*node)[key.substr(start)] = value;
}

}  // namespace

std::string output_config_json(const plan::Plan& plan) {
  const plan::PlanModel& donor = plan.models[plan.donor];
  if (donor.config_text.empty()) return "";
  ordered_json j;
  try {
    j = ordered_json::parse(donor.config_text);
  } catch (const std::exception& e) {
    fail("{}: config.json is not valid JSON ({})", donor.ref, e.what());
  }
  const auto& cfg = plan.config;
  const std::optional<DType> dtype = cfg.out_dtype ? cfg.out_dtype : cfg.dtype;
  if (dtype && j.is_object()) {
    const std::string name(torch_dtype_name(*dtype));
    j["torch_dtype"] = name;
    if (j.contains("dtype")) j["dtype"] = name;
  }
  if (plan.output_layers >= 0 && !plan.layer_count_key.empty()) {
    set_dotted(j, plan.layer_count_key, plan.output_layers);
  }
  for (const auto& [key, layers] : plan.module_layer_counts) set_dotted(j, key, layers);
  const ArchitectureInfo& arch = donor.arch;
  if (plan.output_vocab >= 0 && !arch.vocab_size_key.empty()) {
    set_dotted(j, arch.vocab_size_key, plan.output_vocab);
  }
  return j.dump(2) + "\n";
}

namespace {

// A merged tokenizer (docs/tokenizer-merge.md): its tokenizer.json and tokenizer_config.json,
// and the source's files that do not list the vocabulary. tokenizer.model, vocab.json, merges.txt
// and added_tokens.json would disagree with the merged vocabulary, so they are not written
// (transformers loads the fast tokenizer from tokenizer.json).
std::vector<std::string> write_merged_tokenizer(const plan::Plan::OutputTokenizer& t,
                                                const fs::path& dir) {
  std::vector<std::string> written;
  io::write_file_atomic(dir / "tokenizer.json", t.tokenizer_json);
  written.push_back("tokenizer.json");
  if (!t.tokenizer_config_json.empty()) {
    io::write_file_atomic(dir / "tokenizer_config.json", t.tokenizer_config_json);
    written.push_back("tokenizer_config.json");
  }
  for (const char* f : {"special_tokens_map.json", "chat_template.jinja", "generation_config.json",
                        "chat_template.json"}) {
    if (fs::is_regular_file(t.source_folder / f)) {
      io::write_file_atomic(dir / f, io::read_whole_file(t.source_folder / f));
      written.push_back(f);
    }
  }
  return written;
}

}  // namespace

std::vector<std::string> copy_tokenizer(const plan::Plan& plan, const fs::path& dir) {
  const fs::path root = plan.output_tokenizer ? plan.output_tokenizer->source_folder
                                              : plan.models[plan.donor].model->resolved().root;
  static const char* kFiles[] = {"tokenizer_config.json",
                                 "special_tokens_map.json",
                                 "tokenizer.json",
                                 "tokenizer.model",
                                 "added_tokens.json",
                                 "merges.txt",
                                 "vocab.json",
                                 "chat_template.jinja",
                                 "generation_config.json",
                                 "chat_template.json",
                                 "video_preprocessor_config.json"};
  std::vector<std::string> written;
  const bool merged = plan.output_tokenizer && plan.output_tokenizer->edited;
  if (merged) written = write_merged_tokenizer(*plan.output_tokenizer, dir);
  for (const char* f : kFiles) {
    if (merged) break;
    if (fs::is_regular_file(root / f)) {
      io::write_file_atomic(dir / f, io::read_whole_file(root / f));
      written.push_back(f);
    }
  }
  if (plan.chat_template) {
    const std::string& tmpl = *plan.chat_template;
    const fs::path tc = dir / "tokenizer_config.json";
    ordered_json j =
        fs::exists(tc) ? ordered_json::parse(io::read_whole_file(tc)) : ordered_json::object();
    j["chat_template"] = tmpl;
    io::write_file_atomic(tc, j.dump(2) + "\n");
    if (fs::exists(dir / "chat_template.jinja"))
      io::write_file_atomic(dir / "chat_template.jinja", tmpl);
    if (std::find(written.begin(), written.end(), "tokenizer_config.json") == written.end()) {
      written.push_back("tokenizer_config.json");
    }
  }
  return written;
}

bool looks_like_hub_id(const std::string& ref) {
  std::string path = ref.substr(0, ref.find('@'));
  if (path.empty() || path[0] == '/' || path[0] == '~' || path[0] == '.') return false;
  if (std::count(path.begin(), path.end(), '/') > 1) return false;
  std::error_code ec;
  return !fs::exists(path, ec);
}

std::string model_card(const plan::Plan& plan, const std::string& out_name,
                       const std::string& config_text) {
  // Every referenced model and LoRA adapter that looks like a Hub id (mergekit lists both).
  std::vector<std::string> hub;
  for (const auto& m : plan.models) {
    if (m.stage) continue;
    std::vector<std::string> parts{m.ref};
    io::ModelRef r;
    try {
      r = io::ModelRef::parse(m.ref);
    } catch (const Error&) {
    }
    if (!r.lora_path.empty()) {
      parts = {r.revision.empty() ? r.path : r.path + "@" + r.revision,
               r.lora_revision.empty() ? r.lora_path : r.lora_path + "@" + r.lora_revision};
    }
    for (const std::string& p : parts) {
      if (looks_like_hub_id(p) && std::find(hub.begin(), hub.end(), p) == hub.end()) {
        hub.push_back(p);
      }
    }
  }
  const methods::Method& method = *plan.method;
  std::string card = "---\n";
  if (!hub.empty()) {
    card += "base_model:\n";
    for (const auto& h : hub) card += "- " + h + "\n";
  }
  card += "library_name: transformers\ntags:\n- merge\n- mergekit\n- smelt\n---\n";
  auto link = [&](const std::string& ref) {
    return std::find(hub.begin(), hub.end(), ref) != hub.end()
               ? fmt::format("[{}](https://huggingface.co/{})", ref, ref)
               : ref;
  };
  card += fmt::format(
      "# {}\n\nThis is a merge of pre-trained language models created with smelt, "
      "a mergekit-compatible model merger.\n\n## Merge Details\n### Merge Method\n\n",
      out_name);
  const bool show_base = plan.base_model >= 0 && method.card_names_base();
  card += fmt::format("This model was merged using the [{}]({}) merge method{}.\n\n",
                      method.pretty_name(), method.reference_url(),
                      show_base ? " using " + link(plan.models[plan.base_model].ref) + " as a base"
                                : std::string());
  card += "### Models Merged\n\nThe following models were included in the merge:\n";
  for (size_t i = 0; i < plan.models.size(); ++i) {
    if (static_cast<int>(i) == plan.base_model) continue;
    card += "* " + link(plan.models[i].ref) + "\n";
  }
  card +=
      "\n### Configuration\n\nThe following YAML configuration was used to produce this "
      "model:\n\n```yaml\n" +
      config_text;
  if (!config_text.empty() && config_text.back() != '\n') card += "\n";
  card += "```\n";
  return card;
}

}  // namespace smelt::exec
