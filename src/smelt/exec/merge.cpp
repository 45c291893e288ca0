// Orchestrates a merge into a temporary folder and renames it into place.
#include "smelt/exec/merge.h"

#include <fmt/format.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "smelt/error.h"
#include "smelt/exec/finalize.h"
#include "smelt/exec/output_path.h"
#include "smelt/interrupt.h"
#include "smelt/io/gguf.h"
#include "smelt/io/gguf_export.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/quant.h"
#include "smelt/test_hooks.h"

namespace smelt::exec {
namespace fs = std::filesystem;
void check_output_path(const plan::Plan& plan, const fs::path& out, bool overwrite) {
  for (const auto& m : plan.models) {
    if (!m.stage) check_no_overlap(out, m.model->resolved(), m.ref);
  }
  check_existing_output(out, plan.gguf_output, overwrite);
}

namespace {

// Job j writes tensor where[j].first of the file, from byte where[j].second on: one tensor per
// job, except the slices of a stacked MoE expert tensor (TensorJob::pack_index).
class GgufSink : public TensorSink {
 public:
  GgufSink(io::GgufWriter& w, std::vector<std::pair<size_t, uint64_t>> where)
      : w_(w), where_(std::move(where)) {}
  void write(size_t job, uint64_t offset, const void* data, uint64_t size) override {
    const auto& [tensor, base] = where_.at(job);
    w_.write(tensor, base + offset, data, size);
  }

 private:
  io::GgufWriter& w_;
  std::vector<std::pair<size_t, uint64_t>> where_;
};

// An export's KVs: hyper-parameters and tokenizer from the donor's config.json and tokenizer
// files, general.file_type from the type most 2-D tensors have.
std::vector<io::GgufKv> export_kvs(const plan::Plan& plan, const std::string& name) {
  const plan::PlanModel& donor = plan.models[plan.donor];
  const nlohmann::json config = nlohmann::json::parse(
      plan.output_config_text.empty() ? output_config_json(plan) : plan.output_config_text);
  std::vector<io::GgufKv> kvs;
  if (plan.output_tokenizer) {
    // A merged tokenizer (docs/tokenizer-merge.md) is read by the exporter from a scratch folder
    // holding the files a safetensors output would get.
    std::string tmpl = (fs::temp_directory_path() / "smelt-tokenizer-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) fail("cannot create a scratch folder under {}", tmpl);
    const fs::path scratch(tmpl);
    try {
      copy_tokenizer(plan, scratch);
      kvs = io::gguf_export_kvs(scratch, config, name, plan.output_layers);
    } catch (...) {
      std::error_code ec;
      fs::remove_all(scratch, ec);
      throw;
    }
    std::error_code ec;
    fs::remove_all(scratch, ec);
  } else {
    kvs = io::gguf_export_kvs(donor.model->resolved().root, config, name, plan.output_layers);
  }
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

// The output KVs of a merge of GGUF models: the donor's, verbatim except the split keys, the
// layer count of a frankenmerge, and the file type when tensor types changed.
std::vector<io::GgufKv> donor_kvs(const plan::Plan& plan) {
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

std::vector<io::GgufKv> output_kvs(const plan::Plan& plan, const std::string& name) {
  std::vector<io::GgufKv> kvs = plan.gguf_export ? export_kvs(plan, name) : donor_kvs(plan);
  // The config's chat_template replaces the inputs' (docs/config.md, "Chat templates").
  if (plan.chat_template)
    io::gguf_set_kv(kvs, "tokenizer.chat_template", io::GgufValue::of(*plan.chat_template));
  return kvs;
}

InputStamps stamp_inputs(const plan::Plan& plan) {
  InputStamps stamps;
  for (const auto& m : plan.models) {
    if (!m.stage) stamps.add(m.model->resolved());
  }
  return stamps;
}

// Error messages name OUT, never the hidden temporary they were written under.
[[noreturn]] void rethrow_naming(const Error& e, const fs::path& temp, const fs::path& target) {
  std::string m = e.what();
  const std::string from = temp.string(), to = target.string();
  for (size_t at = m.find(from); at != std::string::npos; at = m.find(from, at + to.size())) {
    m.replace(at, from.size(), to);
  }
  throw Error(m);
}

void run_gguf_merge(const plan::Plan& plan, const fs::path& out, const MergeOptions& options,
                    const InputStamps& stamps) {
  std::vector<io::GgufTensorSpec> specs;
  std::vector<std::pair<size_t, uint64_t>> where;
  std::map<std::string, std::pair<size_t, std::vector<bool>>> packs;  // name -> spec, slices seen
  for (const auto& job : plan.jobs) {
    const auto type = static_cast<kernels::GgmlType>(job.ggml_type);
    if (job.pack_index < 0) {
      where.emplace_back(specs.size(), 0);
      specs.push_back({job.name, type, job.shape});
      continue;
    }
    auto [it, fresh] = packs.try_emplace(job.name);
    if (fresh) {
      std::vector<uint64_t> shape = {static_cast<uint64_t>(job.pack_count)};
      shape.insert(shape.end(), job.shape.begin(), job.shape.end());
      it->second = {specs.size(), std::vector<bool>(static_cast<size_t>(job.pack_count), false)};
      specs.push_back({job.name, type, shape});
    }
    const io::GgufTensorSpec& spec = specs[it->second.first];
    if (spec.type != type ||
        !std::equal(job.shape.begin(), job.shape.end(), spec.shape.begin() + 1, spec.shape.end()) ||
        it->second.second.at(static_cast<size_t>(job.pack_index))) {
      fail("internal: the slices of GGUF tensor {} differ in type or shape, or repeat", job.name);
    }
    it->second.second[static_cast<size_t>(job.pack_index)] = true;
    const auto slice = kernels::ggml_type_bytes(type, job.numel());
    where.emplace_back(it->second.first, static_cast<uint64_t>(job.pack_index) * slice.value());
  }
  for (const auto& [name, pack] : packs) {
    if (std::find(pack.second.begin(), pack.second.end(), false) != pack.second.end())
      fail("GGUF export: tensor {} lacks some experts' matrices", name);
  }
  io::AtomicFileOptions file_options;
  file_options.max_in_flight_bytes = writer_bytes_per_file(options.exec.max_memory);
  const bool overwrite = options.overwrite;
  file_options.publish = [&](const fs::path& temp, const fs::path& path) {
    test_hooks::reached("before-publish");
    check_interrupted();
    stamps.check("merge");
    io::publish_file(temp, path, overwrite);
  };
  io::GgufWriter writer(out, output_kvs(plan, out.stem().string()), specs,
                        io::kGgufDefaultAlignment, file_options);
  std::vector<size_t> all(plan.jobs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  GgufSink sink(writer, std::move(where));
  execute_jobs(plan, all, sink, options.exec);
  writer.finish();
}

void note(const MergeOptions& options, const std::string& text) {
  if (options.on_note) options.on_note(text);
}

}  // namespace

void run_merge(const plan::Plan& plan, const fs::path& out, const MergeOptions& options) {
  check_output_path(plan, out, options.overwrite);
  const fs::path target = output_location(out);
  InterruptibleScope interruptible;
  io::OutputClaim claim(target);
  if (!claim.removed().empty()) {
    note(options, fmt::format("removed {} temporar{} ({:.1f} MB) left beside {} by an interrupted "
                              "run",
                              claim.removed().size(), claim.removed().size() == 1 ? "y" : "ies",
                              static_cast<double>(claim.removed_bytes()) / 1e6, target.string()));
  }
  for (const fs::path& k : claim.kept()) {
    note(options, fmt::format("left {} alone: it is named like a smelt temporary but holds other "
                              "files",
                              k.string()));
  }
  // Checked again under the lock: the path may have changed since the plan was made.
  check_output_path(plan, out, options.overwrite);
  const InputStamps stamps = stamp_inputs(plan);
  if (plan.gguf_output) {
    run_gguf_merge(plan, target, options, stamps);
    return;
  }
  TempFolder temp(io::temp_name_for(target));
  try {
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
      io::AtomicFileOptions file_options;
      file_options.max_in_flight_bytes = writer_bytes_per_file(options.exec.max_memory);
      io::ShardedWriter writer(temp.path(), specs, options.shard_size, metadata, file_options);
      execute(plan, writer, options.exec);
      check_interrupted();
      writer.finish();
    }
    check_interrupted();
    const std::string cfg =
        plan.output_config_text.empty() ? output_config_json(plan) : plan.output_config_text;
    if (!cfg.empty()) {
      io::write_file_atomic(temp.path() / "config.json", cfg);
    }
    if (options.write_model_card) {
      io::write_file_atomic(temp.path() / "README.md",
                            plan.model_card_text.empty()
                                ? model_card(plan, target.filename().string(), config_text)
                                : plan.model_card_text);
      io::write_file_atomic(temp.path() / plan.recorded_config_name, config_text);
    }
    if (options.copy_tokenizer) copy_tokenizer(plan, temp.path());
    io::fsync_dir(temp.path());
    test_hooks::reached("before-publish");
    check_interrupted();
    stamps.check("merge");
    const std::string left = io::publish_folder(temp.path(), target, options.overwrite);
    temp.release();
    if (!left.empty()) note(options, left);
  } catch (const Interrupted&) {
    throw;
  } catch (const Error& e) {
    rethrow_naming(e, temp.path(), target);
  } catch (const fs::filesystem_error& e) {
    std::string what = e.path1().empty() ? std::string("a file") : e.path1().string();
    rethrow_naming(Error(fmt::format("{}: {}", what, e.code().message())), temp.path(), target);
  }
}

}  // namespace smelt::exec
