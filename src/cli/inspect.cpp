// `smelt inspect REF`: list a model's tensors (name, dtype, shape, bytes), totals and metadata.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "smelt/io/model_ref.h"
#include "smelt/plan/architecture.h"
#include "smelt/plan/model_config.h"

namespace smelt::cli {
namespace {

struct InspectOptions {
  std::string ref;
  bool json = false;
  bool arch = false;
};

// `--arch`: what smelt inferred about the model's structure (names + data table).
void print_architecture(const io::Model& model) {
  // The planner's view of the model (for GGUF, the tied head is read from output.weight).
  const std::string config_text = plan::model_config_text(model);
  std::vector<std::string> names;
  for (const auto& t : model.tensors()) names.push_back(t.info->name);
  const plan::ArchitectureInfo a = plan::infer_architecture(names, config_text);
  fmt::print("architecture: {}\n",
             a.architecture.empty() ? "(no config.json)" : printable(a.architecture));
  fmt::print("model_type:   {}\n", a.model_type.empty() ? "-" : printable(a.model_type));
  fmt::print("table entry:  {}\n",
             a.family.empty() ? "none (inferred from tensor names)" : a.family);
  fmt::print("layer stacks:\n");
  for (const auto& [prefix, count] : a.layers.layers_by_prefix) {
    fmt::print("  {}.N  {} layers{}\n", printable(prefix), count,
               prefix == a.layer_prefix ? "  (main stack; slices address it)" : "");
  }
  if (a.layers.layers_by_prefix.empty()) fmt::print("  none: every tensor is merged by name\n");
  fmt::print("layer count key: {}\n",
             a.layer_count_key.empty() ? "(not found)" : a.layer_count_key);
  fmt::print("vocab size key:  {}\n", a.vocab_size_key);
  fmt::print("output head tied to the embeddings: {}\n", a.tied_in_config ? "yes" : "no");
  std::vector<std::string> emb, post, copied, pre;
  for (const auto& n : names) {
    if (a.is_embedding(n)) emb.push_back(n);
    if (a.copy_from_base(n)) copied.push_back(n);
    auto l = plan::parse_layer_name(n);
    if (l && l->prefix == a.layer_prefix) continue;
    (a.is_post_weight(n) ? post : pre).push_back(n);
  }
  auto list = [](const char* what, const std::vector<std::string>& v) {
    fmt::print("{} ({}):\n", what, v.size());
    for (size_t i = 0; i < v.size() && i < 12; ++i) fmt::print("  {}\n", printable(v[i]));
    if (v.size() > 12) fmt::print("  ... and {} more\n", v.size() - 12);
  };
  list("embeddings (vocabulary rows)", emb);
  list("pre-weights (before the layers)", pre);
  list("post-weights (after the layers)", post);
  if (!copied.empty()) list("copied from the base unless the config addresses them", copied);
}

void run_inspect(const InspectOptions& o) {
  auto model = io::Model::open(o.ref);
  if (o.arch) {
    print_architecture(*model);
    return;
  }
  const auto& files = model->files();
  const bool many = files.size() > 1;
  struct Totals {
    uint64_t tensors = 0, params = 0, bytes = 0;
  };
  Totals total;
  std::map<std::string, Totals> by_dtype;
  for (const auto& t : model->tensors()) {
    total.tensors++, total.params += t.info->numel(), total.bytes += t.info->nbytes;
    auto& d = by_dtype[type_name(*t.info)];
    d.tensors++, d.params += t.info->numel(), d.bytes += t.info->nbytes;
  }
  if (o.json) {
    nlohmann::ordered_json j;
    j["model"] = model->resolved().ref;
    j["root"] = model->resolved().root.string();
    j["files"] = nlohmann::json::array();
    for (const auto& f : files) {
      j["files"].push_back(
          {{"path", f->path().string()}, {"bytes", f->file_size()}, {"metadata", f->metadata()}});
    }
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : model->tensors()) {
      j["tensors"].push_back({{"name", t.info->name},
                              {"dtype", type_name(*t.info)},
                              {"shape", t.info->shape},
                              {"bytes", t.info->nbytes},
                              {"file", t.file->path().filename().string()}});
    }
    j["total"] = {{"tensors", total.tensors}, {"parameters", total.params}, {"bytes", total.bytes}};
    nlohmann::ordered_json bd = nlohmann::ordered_json::object();
    for (const auto& [name, d] : by_dtype) {
      bd[name] = {{"tensors", d.tensors}, {"parameters", d.params}, {"bytes", d.bytes}};
    }
    j["by_dtype"] = bd;
    // Names and metadata come from the file: invalid UTF-8 becomes U+FFFD instead of throwing
    // (control characters are escaped by JSON itself).
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  // Everything shown below that comes from the files goes through printable(): a stranger's
  // metadata must not reach the terminal as escape sequences.
  fmt::print("model {} ({} file{}", printable(model->resolved().ref), files.size(),
             many ? "s" : "");
  fmt::print(" in {})\n", printable(model->resolved().root.string()));
  size_t width = 4;
  for (const auto& t : model->tensors()) width = std::max(width, printable(t.info->name).size());
  fmt::print("{:<{}}  {:<7}  {:<20}  {:>12}{}\n", "name", width, "dtype", "shape", "bytes",
             many ? "  file" : "");
  for (const auto& t : model->tensors()) {
    fmt::print("{:<{}}  {:<7}  {:<20}  {:>12}{}\n", printable(t.info->name), width,
               type_name(*t.info), fmt::format("[{}]", fmt::join(t.info->shape, ", ")),
               t.info->nbytes,
               many ? "  " + printable(t.file->path().filename().string()) : std::string());
  }
  fmt::print("\ntotal: {} tensors, {} parameters ({}), {} ({} bytes)\n", total.tensors,
             human_count(total.params), total.params, human_bytes(total.bytes), total.bytes);
  for (const auto& [name, d] : by_dtype) {
    fmt::print("  {:<7} {} tensors, {} parameters, {} bytes\n", name, d.tensors, d.params, d.bytes);
  }
  for (const auto& f : files) {
    if (f->metadata().empty()) continue;
    fmt::print("metadata of {}:\n", printable(f->path().filename().string()));
    for (const auto& [k, v] : f->metadata()) {
      // One line per key: control characters escaped, long values cut (at a character boundary).
      std::string shown = printable(v);
      if (shown.size() > 120) {
        size_t cut = 120;
        while (cut > 0 && (static_cast<unsigned char>(shown[cut]) & 0xC0) == 0x80) --cut;
        shown = shown.substr(0, cut) + fmt::format("... ({} bytes)", v.size());
      }
      fmt::print("  {} = {}\n", printable(k), shown);
    }
  }
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "List a model's tensors, totals and metadata.\n"
      "REF: a model folder, a .safetensors file, or a Hugging Face id in the local cache.\n"
      "Examples:\n  smelt inspect ./my-model\n  smelt inspect mistralai/Mistral-7B-v0.1 --json");
  cmd->add_option("ref", opts->ref, "model reference")->required();
  cmd->add_flag("--json", opts->json, "machine-readable output");
  cmd->add_flag("--arch", opts->arch,
                "show the inferred architecture (layer stacks, embeddings, ...)");
  cmd->callback([opts] { run_inspect(*opts); });
}

}  // namespace smelt::cli
