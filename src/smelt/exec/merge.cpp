// Orchestrates a merge into a temporary folder and renames it into place.
#include "smelt/exec/merge.h"

#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "smelt/error.h"
#include "smelt/exec/finalize.h"
#include "smelt/io/gguf.h"
#include "smelt/io/gguf_export.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/quant.h"

namespace smelt::exec {
namespace fs = std::filesystem;
namespace {

fs::path normalized(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

// True when `inner` is `outer` or lies inside it.
bool within(const fs::path& inner, const fs::path& outer) {
  auto [a, b] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return a == outer.end();
}

// Removes a folder on scope exit unless released.
class TempFolder {
 public:
  explicit TempFolder(fs::path p) : path_(std::move(p)) { fs::create_directories(path_); }
  ~TempFolder() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  void release() { path_.clear(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

void check_output_path(const plan::Plan& plan, const fs::path& out, bool overwrite) {
  const fs::path o = normalized(out);
  for (const auto& m : plan.models) {
    if (m.stage) continue;
    const io::ResolvedModel& r = m.model->resolved();
    // A folder model is protected as a whole; a single-file model only as that file.
    std::vector<fs::path> protect;
    if (r.single_file) {
      for (const auto& f : r.weight_files) protect.push_back(normalized(f));
    } else {
      protect.push_back(normalized(r.root));
    }
    for (const fs::path& root : protect) {
      if (within(o, root)) {
        fail(
            "output folder {} is {} input model {} ({}); choose another folder — smelt never "
            "writes into an input model",
            out.string(), o == root ? "the same path as" : "inside", m.ref, root.string());
      }
      if (within(root, o)) {
        fail("output folder {} contains input model {} ({}); choose another folder", out.string(),
             m.ref, root.string());
      }
    }
  }
  std::error_code ec;
  if (plan.gguf_output) {
    if (fs::is_directory(o, ec))
      fail("output {} is a folder; GGUF output is one file (e.g. merged.gguf)", out.string());
    if (fs::exists(o, ec) && !overwrite)
      fail("output file {} exists; pass --overwrite to replace it", out.string());
    return;
  }
  if (fs::exists(o, ec)) {
    if (!fs::is_directory(o, ec)) fail("output path {} exists and is not a folder", out.string());
    if (!fs::is_empty(o, ec) && !overwrite) {
      fail("output folder {} exists and is not empty; pass --overwrite to replace it",
           out.string());
    }
  }
}

namespace {

class GgufSink : public TensorSink {
 public:
  explicit GgufSink(io::GgufWriter& w) : w_(w) {}
  void write(size_t job, uint64_t offset, const void* data, uint64_t size) override {
    w_.write(job, offset, data, size);
  }

 private:
  io::GgufWriter& w_;
};

// The output KVs: the donor GGUF's, verbatim except the split keys, the layer count of a
// frankenmerge, and the file type when tensor types changed.
// An export's KVs: hyper-parameters and tokenizer from the donor's config.json and tokenizer
// files, general.file_type from the type most 2-D tensors have.
std::vector<io::GgufKv> export_kvs(const plan::Plan& plan, const std::string& name) {
  const plan::PlanModel& donor = plan.models[plan.donor];
  const nlohmann::json config = nlohmann::json::parse(donor.config_text);
  auto kvs = io::gguf_export_kvs(donor.model->resolved().root, config, name, plan.output_layers);
  std::map<int32_t, size_t> counts;
  for (const auto& job : plan.jobs) {
    if (job.shape.size() >= 2) counts[job.ggml_type]++;
  }
  int32_t common = 0;
  size_t best = 0;
  for (const auto& [type, n] : counts) {
    if (n > best) best = n, common = type;
  }
  if (auto ft = io::gguf_file_type_for(static_cast<kernels::GgmlType>(common))) {
    io::gguf_set_kv(kvs, "general.file_type", io::GgufValue::of(*ft));
  }
  return kvs;
}

std::vector<io::GgufKv> output_kvs(const plan::Plan& plan, const std::string& name) {
  if (plan.gguf_export) return export_kvs(plan, name);
  const auto* donor =
      dynamic_cast<const io::GgufFile*>(plan.models[plan.donor].model->files().at(0).get());
  if (!donor) fail("internal: GGUF output needs a GGUF donor model");
  std::vector<io::GgufKv> kvs = donor->kvs();
  for (const char* k : {"split.no", "split.count", "split.tensors.count"})
    io::gguf_remove_kv(kvs, k);
  std::string arch = "llama";
  if (const io::GgufValue* v = donor->find_kv("general.architecture")) {
    if (auto s = v->as_string()) arch = std::string(*s);
  }
  if (plan.output_layers >= 0) {
    io::gguf_set_kv(kvs, arch + ".block_count",
                    io::GgufValue::of(static_cast<uint32_t>(plan.output_layers)));
  }
  bool types_kept = true, quantized = false;
  for (const auto& job : plan.jobs) {
    if (job.inputs.empty()) continue;
    const io::TensorInfo& in = *job.inputs[job.base >= 0 ? job.base : 0].source.info;
    types_kept = types_kept && in.ggml_type == job.ggml_type;
    const auto* tr = kernels::ggml_type_traits(static_cast<kernels::GgmlType>(job.ggml_type));
    quantized = quantized || (tr && tr->quantized);
  }
  if (!types_kept) io::gguf_remove_kv(kvs, "general.file_type");  // llama.cpp then infers it
  if (quantized)
    io::gguf_set_kv(kvs, "general.quantization_version", io::GgufValue::of(uint32_t{2}));
  return kvs;
}

void run_gguf_merge(const plan::Plan& plan, const fs::path& out, const MergeOptions& options) {
  std::vector<io::GgufTensorSpec> specs;
  for (const auto& job : plan.jobs) {
    specs.push_back({job.name, static_cast<kernels::GgmlType>(job.ggml_type), job.shape});
  }
  io::GgufWriter writer(out, output_kvs(plan, out.stem().string()), specs);
  std::vector<size_t> all(plan.jobs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  GgufSink sink(writer);
  execute_jobs(plan, all, sink, options.exec);
  writer.finish();
}

}  // namespace

void run_merge(const plan::Plan& plan, const fs::path& out, const MergeOptions& options) {
  check_output_path(plan, out, options.overwrite);
  if (plan.gguf_output) {
    run_gguf_merge(plan, normalized(out), options);
    return;
  }
  const fs::path target = normalized(out);
  std::random_device rd;
  TempFolder temp(target.parent_path() /
                  fmt::format(".{}.smelt-tmp-{:08x}", target.filename().string(), rd()));

  const std::string& config_text =
      options.config_text.empty() ? plan.config.yaml_text : options.config_text;
  std::vector<io::TensorSpec> specs;
  for (const auto& job : plan.jobs) specs.push_back({job.name, job.dtype, job.shape});
  std::map<std::string, std::string> metadata = {
      {"smelt_version", SMELT_VERSION},
      {"mergekit_config", config_text},
      {"random_seed", std::to_string(options.exec.seed)},
  };
  {
    io::ShardedWriter writer(temp.path(), specs, options.shard_size, metadata);
    execute(plan, writer, options.exec);
    writer.finish();
  }
  if (const std::string cfg = output_config_json(plan); !cfg.empty()) {
    io::write_file_atomic(temp.path() / "config.json", cfg);
  }
  if (options.write_model_card) {
    io::write_file_atomic(temp.path() / "README.md",
                          model_card(plan, target.filename().string(), config_text));
    io::write_file_atomic(temp.path() / "mergekit_config.yml", config_text);
  }
  if (options.copy_tokenizer) copy_tokenizer(plan, temp.path());

  std::error_code ec;
  if (fs::exists(target, ec)) {
    // --overwrite: move the old folder aside, put the new one in place, then delete the old one.
    const fs::path old = target.parent_path() /
                         fmt::format(".{}.smelt-old-{:08x}", target.filename().string(), rd());
    fs::rename(target, old, ec);
    if (ec) fail("cannot move the existing {} aside: {}", target.string(), ec.message());
    fs::rename(temp.path(), target, ec);
    if (ec) {
      fs::rename(old, target);
      fail("cannot rename the finished merge into {}: {}", target.string(), ec.message());
    }
    temp.release();
    fs::remove_all(old, ec);
  } else {
    fs::rename(temp.path(), target, ec);
    if (ec) fail("cannot rename the finished merge into {}: {}", target.string(), ec.message());
    temp.release();
  }
}

}  // namespace smelt::exec
