// GGUF output policy: GGUF names and Q/K permutation for exports, and each tensor's ggml type.
#include "smelt/plan/gguf_output.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "smelt/error.h"
#include "smelt/io/gguf_export.h"
#include "smelt/kernels/ggml_type.h"

namespace smelt::plan {
namespace {

// Adds `message` to the plan's warnings unless it is there already (as the planner does).
void warn(Plan& plan, std::string message) {
  if (std::find(plan.warnings.begin(), plan.warnings.end(), message) == plan.warnings.end()) {
    plan.warnings.push_back(std::move(message));
  }
}

}  // namespace

void assign_gguf_output(Plan& plan, const PlanOptions& options) {
  const config::MergeConfig& cfg = plan.config;
  const methods::Method* passthrough = methods::find_method("passthrough");
  const bool gguf_in = plan.models[plan.donor].gguf;
  plan.gguf_output =
      options.format == OutputFormat::kGguf || (options.format == OutputFormat::kAuto && gguf_in);
  if (!plan.gguf_output) return;
  using kernels::GgmlType;
  nlohmann::json hf_config;
  if (!gguf_in) {
    // Export: llama.cpp's names and Q/K row order, from the output config.
    plan.gguf_export = true;
    if (plan.raw) fail("{}: GGUF export needs models with a config.json", cfg.filename);
    try {
      // An MoE assembly writes its own config.json (Mixtral's); other plans the donor's.
      hf_config = nlohmann::json::parse(plan.output_config_text.empty()
                                            ? plan.models[plan.donor].config_text
                                            : plan.output_config_text);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: config.json is not valid JSON ({})", plan.models[plan.donor].ref, e.what());
    }
    plan.gguf_arch = io::gguf_arch_for(hf_config);
    std::vector<TensorJob> kept;
    for (TensorJob& job : plan.jobs) {
      std::optional<std::string> name;
      if (auto slice = io::gguf_expert_slice(job.name)) {
        auto experts = hf_config.find("num_local_experts");
        if (experts == hf_config.end()) experts = hf_config.find("num_experts");
        if (experts == hf_config.end() || !experts->is_number_integer() ||
            slice->expert >= experts->get<int64_t>()) {
          fail("{}: tensor '{}' is an expert outside the expert count of config.json", cfg.filename,
               job.name);
        }
        job.pack_index = slice->expert;
        job.pack_count = experts->get<int>();
        name = slice->name;
      } else {
        try {
          name = io::gguf_tensor_name(plan.gguf_arch, job.name);
        } catch (const Error& e) {
          fail("{}: {}", cfg.filename, e.what());
        }
      }
      if (!name) continue;  // tensors llama.cpp's converter drops (rotary inv_freq, ...)
      int64_t heads = 0;
      try {
        heads = io::gguf_qk_permute_heads(plan.gguf_arch, job.name,
                                          job.shape.empty() ? 0 : job.shape[0], hf_config);
      } catch (const Error& e) {
        fail("{}: {}: {}", cfg.filename, plan.models[plan.donor].ref, e.what());
      }
      for (JobInput& in : job.inputs) in.permute_heads = heads;
      if (heads > 0 && job.copy) {
        fail("{}: tensor '{}' needs its rows permuted but is not a float tensor", cfg.filename,
             job.name);
      }
      job.value_offset = io::gguf_value_offset(plan.gguf_arch, job.name);
      if (job.value_offset != 0.0f && job.copy) {
        fail("{}: tensor '{}' needs 1 added to it but is not a float tensor", cfg.filename,
             job.name);
      }
      job.name = *name;
      // Qwen2-MoE's shared-expert gate [1, hidden] is a vector in GGUF (the same bytes).
      if (job.name.ends_with("ffn_gate_inp_shexp.weight") && job.shape.size() == 2 &&
          job.shape[0] == 1)
        job.shape = {job.shape[1]};
      kept.push_back(std::move(job));
    }
    plan.jobs = std::move(kept);
    // llama.cpp's qwen2moe always loads output.weight: a model with tied embeddings gets a copy
    // of token_embd under that name.
    auto named = [&](const char* n) {
      return std::find_if(plan.jobs.begin(), plan.jobs.end(),
                          [&](const TensorJob& j) { return j.name == n; });
    };
    if (plan.gguf_arch == "qwen2moe" && named("output.weight") == plan.jobs.end() &&
        named("token_embd.weight") != plan.jobs.end()) {
      TensorJob head = *named("token_embd.weight");
      head.name = "output.weight";
      head.duplicates.clear();
      head.duplicate_of = -1;
      plan.jobs.push_back(std::move(head));
    }
    if (auto freqs = io::gguf_rope_freqs(hf_config)) {
      TensorJob rope;
      rope.name = "rope_freqs.weight";
      rope.shape = {freqs->size()};
      rope.dtype = DType::kF32;
      rope.ggml_type = static_cast<int32_t>(GgmlType::kF32);
      rope.constant = std::make_shared<const std::vector<float>>(std::move(*freqs));
      plan.jobs.push_back(std::move(rope));
    }
  }
  auto parse_type = [&](const std::string& name, const std::string& flag) {
    auto t = kernels::parse_ggml_type(name);
    const kernels::GgmlTypeTraits* tr = t ? kernels::ggml_type_traits(*t) : nullptr;
    if (!tr || !tr->can_quantize) {
      fail(
          "{}: '{}' is not a type smelt can write; use one of F32, F16, BF16, Q8_0, Q4_0, "
          "Q4_K, Q5_K, Q6_K",
          flag, name);
    }
    return *t;
  };
  std::vector<std::pair<std::regex, GgmlType>> overrides;
  for (const auto& [re, type] : options.gguf_tensor_types) {
    try {
      overrides.emplace_back(std::regex(re), parse_type(type, "--tensor-type " + re + "=" + type));
    } catch (const std::regex_error& e) {
      fail("--tensor-type: '{}' is not a valid regular expression ({})", re, e.what());
    }
  }
  std::optional<GgmlType> out_type;
  if (!options.gguf_out_type.empty()) out_type = parse_type(options.gguf_out_type, "--out-type");
  size_t fallbacks = 0;
  for (TensorJob& job : plan.jobs) {
    if (job.constant) {  // computed by the planner (rope_freqs, MoE routers): F32
      if (job.ggml_type < 0) {
        job.ggml_type = static_cast<int32_t>(GgmlType::kF32);
        job.dtype = DType::kF32;
      }
      continue;
    }
    const size_t r = job.base >= 0 ? static_cast<size_t>(job.base) : 0;
    const io::TensorInfo& in = *job.inputs[r].source.info;
    const GgmlType in_type = gguf_in ? static_cast<GgmlType>(in.ggml_type)
                                     : io::gguf_default_type(job.name, job.shape, in.dtype);
    std::optional<GgmlType> type;
    for (const auto& [re, t] : overrides) {
      if (std::regex_search(job.name, re)) {
        type = t;
        break;
      }
    }
    if (!type && job.shape.size() <= 1) type = in_type == GgmlType::kF16 ? in_type : GgmlType::kF32;
    if (!type && job.name.ends_with("ffn_gate_inp.weight")) type = GgmlType::kF32;  // routers
    if (!type && out_type) type = out_type;
    if (!type) {
      const kernels::GgmlTypeTraits* tr = kernels::ggml_type_traits(in_type);
      type = tr && tr->can_quantize ? in_type : GgmlType::kQ8_0;
    }
    const kernels::GgmlTypeTraits* tr = kernels::ggml_type_traits(*type);
    if (tr->block_elems > 1 && (job.shape.empty() || job.shape.back() % tr->block_elems != 0)) {
      ++fallbacks;
      type = GgmlType::kF16;
    }
    if (!job.copy && !dtype_is_convertible_float(in.dtype) && !in.quantized()) {
      job.copy = true;  // integer tensors keep their type
    }
    if (job.copy) {
      if (!gguf_in && !kernels::ggml_type_for_dtype(in.dtype)) {
        fail("{}: tensor '{}' of type {} cannot be stored in GGUF", cfg.filename, job.name,
             dtype_name(in.dtype));
      }
      job.ggml_type =
          gguf_in ? in.ggml_type : static_cast<int32_t>(*kernels::ggml_type_for_dtype(in.dtype));
      continue;
    }
    job.ggml_type = static_cast<int32_t>(*type);
    job.dtype = kernels::ggml_type_dtype(*type).value_or(DType::kF32);
    // Unchanged tensors are copied byte for byte when their type is kept.
    const bool unchanged = job.inputs.size() == 1 && job.method == passthrough &&
                           job.params.per_model[0].count("scale") &&
                           job.params.per_model[0].at("scale") == 1.0 && job.shape == in.shape;
    if (unchanged && gguf_in && in.ggml_type == job.ggml_type) job.copy = true;
  }
  if (fallbacks) {
    warn(plan,
         fmt::format("{} tensor(s) whose rows are not a whole number of quantization blocks are "
                     "written as F16",
                     fallbacks));
  }
}

}  // namespace smelt::plan
