// `smelt inspect REF`: list a model's tensors (name, dtype, shape, bytes), totals and metadata.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "smelt/io/model_ref.h"

namespace smelt::cli {
namespace {

struct InspectOptions {
  std::string ref;
  bool json = false;
};

void run_inspect(const InspectOptions& o) {
  auto model = io::Model::open(o.ref);
  const auto& files = model->files();
  const bool many = files.size() > 1;
  struct Totals {
    uint64_t tensors = 0, params = 0, bytes = 0;
  };
  Totals total;
  std::map<std::string, Totals> by_dtype;
  for (const auto& t : model->tensors()) {
    total.tensors++, total.params += t.info->numel(), total.bytes += t.info->nbytes;
    auto& d = by_dtype[std::string(dtype_name(t.info->dtype))];
    d.tensors++, d.params += t.info->numel(), d.bytes += t.info->nbytes;
  }
  if (o.json) {
    nlohmann::ordered_json j;
    j["model"] = model->resolved().ref;
    j["root"] = model->resolved().root.string();
    j["files"] = nlohmann::json::array();
    for (const auto& f : files) {
      j["files"].push_back({{"path", f->path().string()}, {"bytes", f->file_size()},
                            {"metadata", f->metadata()}});
    }
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : model->tensors()) {
      j["tensors"].push_back({{"name", t.info->name},
                              {"dtype", dtype_name(t.info->dtype)},
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
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("model {} ({} file{}", model->resolved().ref, files.size(), many ? "s" : "");
  fmt::print(" in {})\n", model->resolved().root.string());
  size_t width = 4;
  for (const auto& t : model->tensors()) width = std::max(width, t.info->name.size());
  fmt::print("{:<{}}  {:<7}  {:<20}  {:>12}{}\n", "name", width, "dtype", "shape", "bytes",
             many ? "  file" : "");
  for (const auto& t : model->tensors()) {
    fmt::print("{:<{}}  {:<7}  {:<20}  {:>12}{}\n", t.info->name, width, dtype_name(t.info->dtype),
               fmt::format("[{}]", fmt::join(t.info->shape, ", ")), t.info->nbytes,
               many ? "  " + t.file->path().filename().string() : std::string());
  }
  fmt::print("\ntotal: {} tensors, {} parameters ({}), {} ({} bytes)\n", total.tensors,
             human_count(total.params), total.params, human_bytes(total.bytes), total.bytes);
  for (const auto& [name, d] : by_dtype) {
    fmt::print("  {:<7} {} tensors, {} parameters, {} bytes\n", name, d.tensors, d.params, d.bytes);
  }
  for (const auto& f : files) {
    if (f->metadata().empty()) continue;
    fmt::print("metadata of {}:\n", f->path().filename().string());
    for (const auto& [k, v] : f->metadata()) {
      // One line per key: newlines shown as \n, long values cut.
      std::string shown;
      for (char ch : v) shown += ch == '\n' ? std::string("\\n") : std::string(1, ch);
      if (shown.size() > 120) shown = shown.substr(0, 120) + fmt::format("... ({} chars)", v.size());
      fmt::print("  {} = {}\n", k, shown);
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
  cmd->callback([opts] { run_inspect(*opts); });
}

}  // namespace smelt::cli
