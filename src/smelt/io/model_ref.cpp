// Model reference parsing and resolution (local folder, single file, Hugging Face cache).
#include "smelt/io/model_ref.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "smelt/io/hub_client.h"
#include "smelt/io/lora_adapter.h"
#include "smelt/io/lora_file.h"
#include "smelt/io/safetensors.h"
#include "smelt/io/torch_bin.h"

namespace smelt::io {
namespace fs = std::filesystem;
namespace {

void split_revision(std::string_view text, std::string_view whole, std::string* path,
                    std::string* revision) {
  const size_t at = text.find('@');
  if (at == std::string_view::npos) {
    *path = std::string(text);
    return;
  }
  if (text.find('@', at + 1) != std::string_view::npos) {
    fail("model reference '{}': more than one '@' in '{}'; use PATH@REVISION", whole, text);
  }
  *path = std::string(text.substr(0, at));
  *revision = std::string(text.substr(at + 1));
  if (path->empty() || revision->empty()) {
    fail("model reference '{}': empty path or revision around '@'", whole);
  }
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("{}: cannot read", p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::atomic<bool> g_hub_download{false};

bool is_commit_hash(const std::string& s) {
  static const std::regex re("^[0-9a-f]{40}$");
  return std::regex_match(s, re);
}

// Fills weight files of a folder, or returns false when it has none we can read.
bool resolve_folder(const fs::path& dir, ResolvedModel* out) {
  out->root = dir;
  if (fs::is_regular_file(dir / "config.json")) out->config_json = dir / "config.json";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::is_regular_file(index)) {
    out->index_json = index;
    std::set<std::string> files;
    out->index_weight_map = parse_safetensors_index(read_text(index), index.string());
    for (const auto& [tensor, file] : out->index_weight_map) {
      files.insert(file);
    }
    for (const std::string& f : files) {
      if (!fs::is_regular_file(dir / f)) {
        fail("{}: names shard '{}', which is missing from {} (incomplete download?)",
             index.string(), f, dir.string());
      }
      out->weight_files.push_back(dir / f);
    }
    if (out->weight_files.empty()) fail("{}: weight_map is empty", index.string());
    return true;
  }
  if (fs::is_regular_file(dir / "model.safetensors")) {
    out->weight_files.push_back(dir / "model.safetensors");
    return true;
  }
  // Sharded files without an index are still recognisable by name.
  std::vector<fs::path> shards, bin_shards;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    static const std::regex shard_re(R"(^model-\d{5}-of-\d{5}\.safetensors$)");
    static const std::regex bin_shard_re(R"(^pytorch_model-\d{5}-of-\d{5}\.bin$)");
    if (std::regex_match(name, shard_re)) shards.push_back(e.path());
    if (std::regex_match(name, bin_shard_re)) bin_shards.push_back(e.path());
  }
  if (!shards.empty()) {
    std::sort(shards.begin(), shards.end());
    out->weight_files = shards;
    return true;
  }
  // PyTorch checkpoints only when there are no safetensors (as transformers prefers them too).
  const fs::path bin_index = dir / "pytorch_model.bin.index.json";
  if (fs::is_regular_file(bin_index)) {
    out->index_json = bin_index;
    std::set<std::string> files;
    out->index_weight_map = parse_safetensors_index(read_text(bin_index), bin_index.string());
    for (const auto& [tensor, file] : out->index_weight_map) files.insert(file);
    for (const std::string& f : files) {
      if (!fs::is_regular_file(dir / f)) {
        fail("{}: names shard '{}', which is missing from {} (incomplete download?)",
             bin_index.string(), f, dir.string());
      }
      if (!is_torch_file_name(f)) {
        fail("{}: names shard '{}', which is not a .bin file", bin_index.string(), f);
      }
      out->weight_files.push_back(dir / f);
    }
    return true;
  }
  if (fs::is_regular_file(dir / "pytorch_model.bin")) {
    out->weight_files.push_back(dir / "pytorch_model.bin");
    return true;
  }
  if (!bin_shards.empty()) {
    std::sort(bin_shards.begin(), bin_shards.end());
    out->weight_files = bin_shards;
    return true;
  }
  return false;
}

// The snapshot folder of Hub repo `id` at `revision` ("" = main) in the HF cache, whether or not
// it exists; empty when the cache has no commit for the revision. Appends what was looked at to
// `looked`.
fs::path cached_snapshot(const std::string& id, const std::string& revision,
                         std::vector<std::string>* looked) {
  std::string folder = "models--" + id;
  for (size_t i = folder.find('/'); i != std::string::npos; i = folder.find('/')) {
    folder.replace(i, 1, "--");
  }
  const fs::path repo = hf_hub_cache_dir() / folder;
  const std::string rev = revision.empty() ? "main" : revision;
  std::string commit;
  const fs::path ref_file = repo / "refs" / rev;
  if (fs::is_regular_file(ref_file)) {
    commit = read_text(ref_file);
    while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) {
      commit.pop_back();
    }
    if (!is_commit_hash(commit)) {
      fail("{}: does not hold a commit hash; the Hugging Face cache is corrupt", ref_file.string());
    }
    looked->push_back(fmt::format("HF cache ref {}", ref_file.string()));
  } else if (is_commit_hash(rev)) {
    commit = rev;
  } else {
    looked->push_back(fmt::format("HF cache ref {} (missing)", ref_file.string()));
  }
  return commit.empty() ? fs::path() : repo / "snapshots" / commit;
}

}  // namespace

bool looks_like_hub_id(const std::string& s) {
  static const std::regex re(R"(^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$)");
  return std::regex_match(s, re);
}

void set_hub_download(bool on) { g_hub_download = on; }

ModelRef ModelRef::parse(std::string_view text) {
  ModelRef r;
  if (text.empty()) fail("model reference is empty");
  std::error_code ec;
  if (fs::exists(fs::path(text), ec)) {
    r.path = std::string(text);
    return r;
  }
  const size_t plus = text.find('+');
  std::string_view model = text.substr(0, plus);
  if (plus != std::string_view::npos) {
    std::string_view lora = text.substr(plus + 1);
    if (lora.find('+') != std::string_view::npos) {
      fail("model reference '{}': more than one '+'; use MODEL[@REV]+LORA[@REV]", text);
    }
    if (lora.empty()) fail("model reference '{}': empty LoRA path after '+'", text);
    split_revision(lora, text, &r.lora_path, &r.lora_revision);
  }
  split_revision(model, text, &r.path, &r.revision);
  return r;
}

std::string ModelRef::str() const {
  std::string s = path;
  if (!revision.empty()) s += "@" + revision;
  if (!lora_path.empty()) {
    s += "+" + lora_path;
    if (!lora_revision.empty()) s += "@" + lora_revision;
  }
  return s;
}

std::vector<std::pair<std::string, std::string>> parse_safetensors_index(std::string_view text,
                                                                         const std::string& label) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", label, e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    fail("{}: has no \"weight_map\" object; the index is corrupt", label);
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [tensor, file] : j["weight_map"].items()) {
    if (!file.is_string()) {
      fail("{}: weight_map entry '{}' must be a file name string", label, tensor);
    }
    const std::string& f = file.get_ref<const std::string&>();
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
      fail("{}: weight_map entry '{}' names '{}', which is not a plain file name in the folder",
           label, tensor, f);
    }
    out.emplace_back(tensor, f);
  }
  if (out.empty()) fail("{}: weight_map is empty", label);
  return out;
}

fs::path hf_hub_cache_dir() {
  if (const char* c = std::getenv("HF_HUB_CACHE"); c && *c) return c;
  if (const char* h = std::getenv("HF_HOME"); h && *h) return fs::path(h) / "hub";
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : "/root") / ".cache" / "huggingface" / "hub";
}

fs::path resolve_lora(const ModelRef& ref) {
  const std::string shown = ref.str();
  const fs::path p(ref.lora_path);
  std::error_code ec;
  // A local folder (its revision, like a local model's, means nothing): LoraAdapter::open says
  // what it lacks.
  if (fs::exists(p, ec)) return p;
  std::vector<std::string> looked{fmt::format("local path {}", fs::absolute(p, ec).string())};
  if (looks_like_hub_id(ref.lora_path)) {
    const fs::path snap = cached_snapshot(ref.lora_path, ref.lora_revision, &looked);
    if (!snap.empty()) {
      if (fs::is_regular_file(snap / "adapter_config.json")) return snap;
      looked.push_back(fmt::format("HF cache snapshot {} ({})", snap.string(),
                                   fs::is_directory(snap) ? "no adapter_config.json" : "missing"));
    }
  }
  std::string list;
  for (const auto& l : looked) list += "\n  - " + l;
  if (g_hub_download && looks_like_hub_id(ref.lora_path)) {
    try {
      return hub_download_model(HubSettings::from_env(), ref.lora_path, ref.lora_revision).snapshot;
    } catch (const Error& e) {
      fail(
          "LoRA adapter '{}' of model '{}' not found. Looked at:{}\nand downloading it from the "
          "Hub failed: {}",
          ref.lora_path, shown, list, e.what());
    }
  }
  fail(
      "LoRA adapter '{}' of model '{}' not found. Looked at:{}\nGive a local PEFT adapter folder "
      "(adapter_config.json + adapter_model.safetensors) or download it first (`smelt download "
      "{}`).",
      ref.lora_path, shown, list, ref.lora_path);
}

ResolvedModel resolve_model(const ModelRef& ref) {
  if (!ref.lora_path.empty()) {
    ModelRef base = ref;
    base.lora_path.clear();
    base.lora_revision.clear();
    ResolvedModel out = resolve_model(base);
    out.ref = ref.str();
    out.lora_dir = resolve_lora(ref);
    return out;
  }
  const std::string shown = ref.str();
  ResolvedModel out;
  out.ref = shown;
  std::vector<std::string> looked;
  const fs::path p(ref.path);
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) {
    if (p.extension() == ".safetensors") {
      out.single_file = true;
      out.root = p.parent_path().empty() ? fs::path(".") : p.parent_path();
      out.weight_files.push_back(p);
      if (fs::is_regular_file(out.root / "config.json") && p.filename() == "model.safetensors") {
        out.config_json = out.root / "config.json";
      }
      return out;
    }
    if (p.extension() == ".gguf") {
      out.single_file = true;
      out.gguf = true;
      out.root = p.parent_path().empty() ? fs::path(".") : p.parent_path();
      out.weight_files = gguf_split_paths(p);
      return out;
    }
    if (is_torch_file_name(p)) {
      out.single_file = true;
      out.root = p.parent_path().empty() ? fs::path(".") : p.parent_path();
      out.weight_files.push_back(p);
      if (fs::is_regular_file(out.root / "config.json") && p.filename() == "pytorch_model.bin") {
        out.config_json = out.root / "config.json";
      }
      return out;
    }
    fail("model '{}': {} is not a .safetensors, .gguf or PyTorch .bin/.pt/.pth file", shown,
         p.string());
  }
  if (fs::is_directory(p, ec)) {
    if (resolve_folder(p, &out)) return out;
    fail(
        "model '{}': folder {} has no weights (looked for model.safetensors.index.json, "
        "model.safetensors, model-*-of-*.safetensors, pytorch_model.bin.index.json, "
        "pytorch_model.bin, pytorch_model-*-of-*.bin)",
        shown, p.string());
  }
  looked.push_back(fmt::format("local path {}", fs::absolute(p, ec).string()));

  if (looks_like_hub_id(ref.path)) {
    const fs::path snap = cached_snapshot(ref.path, ref.revision, &looked);
    if (!snap.empty()) {
      std::string state = fs::is_directory(snap) ? "no weights" : "missing";
      try {
        if (fs::is_directory(snap) && resolve_folder(snap, &out)) return out;
      } catch (const Error& e) {
        // An index whose shards are not all there (e.g. after a headers-only `smelt plan`):
        // downloading completes it (docs/hub.md).
        if (!g_hub_download) throw;
        state = e.what();
        out = ResolvedModel{};
        out.ref = shown;
      }
      looked.push_back(fmt::format("HF cache snapshot {} ({})", snap.string(), state));
    }
  }
  std::string list;
  for (const auto& l : looked) list += "\n  - " + l;
  if (g_hub_download && looks_like_hub_id(ref.path)) {
    // The one place a missing Hub id is fetched, as mergekit does (docs/hub.md).
    try {
      const HubSnapshot snap = hub_download_model(HubSettings::from_env(), ref.path, ref.revision);
      if (resolve_folder(snap.snapshot, &out)) return out;
      fail("{}: has no weights after the download", snap.snapshot.string());
    } catch (const Error& e) {
      fail("model '{}' not found. Looked at:{}\nand downloading it from the Hub failed: {}", shown,
           list, e.what());
    }
  }
  fail(
      "model '{}' not found. Looked at:{}\nDownload it first (e.g. `smelt download {}`) or give "
      "a local folder or .safetensors file.",
      shown, list, ref.path);
}

std::shared_ptr<Model> Model::from_files(const ResolvedModel& resolved,
                                         std::vector<std::shared_ptr<TensorFile>> files,
                                         uint64_t read_memory_bytes) {
  auto m = std::make_shared<Model>();
  m->resolved_ = resolved;
  m->read_memory_bytes_ = read_memory_bytes;
  m->files_ = std::move(files);
  for (const auto& file : m->files_) {
    for (const TensorInfo& t : file->tensors()) {
      if (!m->by_name_.emplace(t.name, m->tensors_.size()).second) {
        const ModelTensor& first = m->tensors_[m->by_name_[t.name]];
        fail("model '{}': tensor '{}' is in both {} and {}", resolved.ref, t.name,
             first.file->path().string(), file->path().string());
      }
      m->tensors_.push_back({&t, file.get()});
    }
  }
  return m;
}

std::shared_ptr<Model> Model::open(const ResolvedModel& resolved) {
  if (!resolved.lora_dir.empty()) {
    ResolvedModel base = resolved;
    base.lora_dir.clear();
    std::shared_ptr<const LoraAdapter> adapter;
    try {
      adapter = LoraAdapter::open(resolved.lora_dir);
    } catch (const Error& e) {
      fail("model '{}': {}", resolved.ref, e.what());
    }
    return apply_lora(open(base), std::move(adapter), resolved);
  }
  std::vector<std::shared_ptr<TensorFile>> files;
  if (resolved.gguf) {
    for (auto& part : open_gguf_model(resolved.weight_files.at(0))) files.push_back(part);
  } else {
    for (const fs::path& f : resolved.weight_files) {
      if (is_torch_file_name(f)) {
        files.push_back(TorchFile::open(f));
      } else {
        files.push_back(SafetensorsFile::open(f));
      }
    }
  }
  auto m = from_files(resolved, std::move(files));
  if (!resolved.index_json.empty()) {
    const std::string label = resolved.index_json.string();
    // resolve_model parsed the index once; a ResolvedModel built another way is parsed here.
    const auto weight_map = resolved.index_weight_map.empty()
                                ? parse_safetensors_index(read_text(resolved.index_json), label)
                                : resolved.index_weight_map;
    for (const auto& [tensor, shard] : weight_map) {
      const ModelTensor mt = m->find(tensor);
      if (!mt.info) {
        fail("{}: maps tensor '{}' to {}, but that shard does not contain it", label, tensor,
             shard);
      }
      if (mt.file->path().filename() != shard) {
        fail("{}: maps tensor '{}' to {}, but it is in {}", label, tensor, shard,
             mt.file->path().filename().string());
      }
    }
  }
  return m;
}

std::shared_ptr<Model> Model::open(std::string_view ref) {
  return open(resolve_model(ModelRef::parse(ref)));
}

ModelTensor Model::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? ModelTensor{} : tensors_[it->second];
}

}  // namespace smelt::io
