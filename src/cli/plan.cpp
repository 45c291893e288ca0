// `smelt plan CONFIG`: validate a config and show what the merge would do, reading headers only.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fnmatch.h>

#include <fstream>
#include <thread>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/config/config.h"
#include "smelt/error.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/quant.h"

namespace smelt::cli {

exec::Recipe load_recipe(const std::string& path, const plan::PlanOptions& options,
                         const exec::ExecOptions& exec, std::string* text_out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read the config file", path);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  auto docs = config::parse_config_documents(text, path);
  if (docs.empty()) fail("{}: the config file is empty", path);
  if (text_out) *text_out = text;
  return exec::build_recipe(docs, options, exec);
}

plan::TensorSetMode tensor_set_mode(bool intersection, bool union_) {
  if (intersection && union_) fail("--tensor-intersection and --tensor-union exclude each other");
  return intersection ? plan::TensorSetMode::kIntersection
         : union_     ? plan::TensorSetMode::kUnion
                      : plan::TensorSetMode::kError;
}

uint64_t parse_memory_size(const std::string& text) {
  std::string digits = text;
  uint64_t mult = 1;
  if (!digits.empty()) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(digits.back())));
    if (c == 'k' || c == 'm' || c == 'g') {
      mult = c == 'k' ? (1u << 10) : c == 'm' ? (1u << 20) : (uint64_t{1} << 30);
      digits.pop_back();
    }
  }
  uint64_t v = 0;
  bool ok = !digits.empty() && digits.size() <= 12;
  for (char c : digits)
    ok = ok && c >= '0' && c <= '9', v = v * 10 + static_cast<uint64_t>(c - '0');
  if (!ok || v == 0) {
    fail("--max-memory: '{}' is not a size; use bytes with an optional K/M/G suffix, e.g. 512M",
         text);
  }
  return v * mult;
}

void set_output_format(const std::string& format, const std::string& out,
                       const std::string& out_type, const std::vector<std::string>& tensor_types,
                       plan::PlanOptions* options) {
  if (format == "gguf" || (format == "auto" && out.ends_with(".gguf"))) {
    options->format = plan::OutputFormat::kGguf;
  } else if (format == "safetensors") {
    options->format = plan::OutputFormat::kSafetensors;
  } else if (format != "auto") {
    fail("--format: '{}' is not a format; use safetensors, gguf or auto", format);
  }
  options->gguf_out_type = out_type;
  for (const auto& spec : tensor_types) {
    const size_t eq = spec.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      fail("--tensor-type: '{}' is not REGEX=TYPE (e.g. 'attn_v=Q8_0')", spec);
    }
    options->gguf_tensor_types.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
  }
  if ((!out_type.empty() || !tensor_types.empty()) &&
      options->format == plan::OutputFormat::kSafetensors) {
    fail("--out-type and --tensor-type apply to GGUF output only");
  }
}

void print_warnings(const plan::Plan& plan) {
  for (const auto& w : plan.warnings) fmt::print(stderr, "warning: {}\n", w);
}

void print_plan_summary(const plan::Plan& plan, const exec::ExecOptions& exec,
                        uint64_t shard_size) {
  fmt::print("method: {} ({})\n", plan.method->name(), plan.method->pretty_name());
  fmt::print("models:\n");
  for (size_t i = 0; i < plan.models.size(); ++i) {
    fmt::print("  {}{}\n", plan.models[i].ref,
               static_cast<int>(i) == plan.base_model ? "  (base)"
               : i == plan.donor                      ? "  (config donor)"
                                                      : "");
  }
  std::vector<io::TensorSpec> specs;
  for (const auto& j : plan.jobs) specs.push_back({j.name, j.dtype, j.shape});
  const auto layout = io::plan_shards(specs, shard_size);
  uint64_t params = 0;
  for (const auto& j : plan.jobs) params += j.numel();
  const uint64_t out_bytes = plan.output_bytes();
  const uint64_t in_bytes = plan.input_bytes();
  fmt::print("output: {} tensors, {} parameters, {} in {} shard{}\n", plan.jobs.size(),
             human_count(params), human_bytes(out_bytes), layout.shards.size(),
             layout.shards.size() > 1 ? "s" : "");
  if (plan.output_layers >= 0) {
    fmt::print("layers: {}{}\n", plan.output_layers,
               plan.layer_count_key.empty() ? "" : " (config.json " + plan.layer_count_key + ")");
  }
  fmt::print("reads: {} from inputs\n", human_bytes(in_bytes));
  const exec::ExecLayout run = exec::exec_layout(plan, exec);
  fmt::print("estimated peak memory: {} ({} worker{}, chunks of {} elements; --max-memory {})\n",
             human_bytes(run.working_bytes), run.workers, run.workers > 1 ? "s" : "",
             run.chunk_elements, human_bytes(exec.max_memory));
  // Cold-disk read and durable write speeds measured on the reference machine (formats.md §3).
  const double seconds = double(in_bytes) / 4.0e9 + double(out_bytes) / 1.1e9;
  fmt::print("estimated time: {:.1f}s (cold disk; less when inputs are in the page cache)\n",
             seconds);
}

void print_explain(const plan::Plan& plan, const std::string& glob) {
  size_t shown = 0;
  for (const auto& job : plan.jobs) {
    if (fnmatch(glob.c_str(), job.name.c_str(), 0) != 0) continue;
    ++shown;
    const std::string out_type =
        job.ggml_type >= 0 ? kernels::ggml_type_name(static_cast<kernels::GgmlType>(job.ggml_type))
                           : std::string(dtype_name(job.dtype));
    fmt::print("\n{}  {} [{}]  t={:.4g}{}\n", job.name, out_type, fmt::join(job.shape, ", "), job.t,
               job.is_embedding ? "  (embedding)" : "");
    if (job.copy) {
      fmt::print("  copied byte for byte from {} : {}\n", plan.models[job.inputs[0].model].ref,
                 job.inputs[0].tensor);
      continue;
    }
    for (const auto& [name, value] : job.params.global) {
      fmt::print("  {} = {:.6g}  ({})\n", name, value, job.global_origin.at(name));
    }
    for (size_t i = 0; i < job.inputs.size(); ++i) {
      const auto& in = job.inputs[i];
      fmt::print("  input {}: {} : {} ({}){}\n", i, plan.models[in.model].ref, in.tensor,
                 type_name(*in.source.info), static_cast<int>(i) == job.base ? "  [base]" : "");
      for (const auto& [name, value] : job.params.per_model[i]) {
        fmt::print("      {} = {:.6g}  ({})\n", name, value, job.model_origin[i].at(name));
      }
    }
  }
  if (shown == 0) fmt::print("no output tensor matches '{}'\n", glob);
}

namespace {

struct PlanCliOptions {
  std::string config;
  std::string explain;
  std::string shard_size = "5B";
  uint64_t seed = 0;
  size_t threads = std::max(1u, std::thread::hardware_concurrency());
  bool allow_crimes = false;
  bool allow_shape_mismatch = false;
  bool tensor_intersection = false;
  bool tensor_union = false;
  std::string max_memory = "512M";
  std::string format = "auto";
  std::string out_type;
  std::vector<std::string> tensor_types;
};

}  // namespace

void add_plan(CLI::App& app) {
  auto o = std::make_shared<PlanCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan",
      "Check a mergekit config and show what the merge would do (reads headers only).\n"
      "Same as `smelt merge CONFIG OUT --dry-run`.\n"
      "Examples:\n  smelt plan ties.yml\n  smelt plan ties.yml --explain 'model.layers.0.*'");
  cmd->add_option("config", o->config, "mergekit YAML config")->required();
  cmd->add_option("--explain", o->explain,
                  "show inputs and resolved parameters of tensors "
                  "matching this glob");
  cmd->add_option("--out-shard-size", o->shard_size, "shard size (bytes; k/m/b suffixes)")
      ->capture_default_str();
  cmd->add_option("--random-seed", o->seed, "seed for random methods")->capture_default_str();
  cmd->add_option("-j,--threads,--num-threads", o->threads, "threads")->capture_default_str();
  cmd->add_flag("--allow-crimes", o->allow_crimes, "allow different architectures");
  cmd->add_flag("--allow-shape-mismatch", o->allow_shape_mismatch,
                "task-vector methods: leave out models whose tensor shape differs from the base's");
  cmd->add_option("--format", o->format, "output format: safetensors, gguf or auto")
      ->capture_default_str();
  cmd->add_option("--out-type", o->out_type, "GGUF output: type of 2-D+ tensors");
  cmd->add_option("--tensor-type", o->tensor_types, "GGUF output: REGEX=TYPE (repeatable)");
  cmd->add_option("--max-memory", o->max_memory, "bound on working memory (K/M/G)")
      ->capture_default_str();
  cmd->add_flag("-i,--tensor-intersection", o->tensor_intersection,
                "raw tensor files: skip tensors only some files have");
  cmd->add_flag("-u,--tensor-union", o->tensor_union,
                "raw tensor files: merge each tensor over the files that have it");
  cmd->callback([o] {
    plan::PlanOptions po;
    po.seed = o->seed;
    po.allow_crimes = o->allow_crimes;
    po.allow_shape_mismatch = o->allow_shape_mismatch;
    po.tensor_set = tensor_set_mode(o->tensor_intersection, o->tensor_union);
    set_output_format(o->format, "", o->out_type, o->tensor_types, &po);
    po.shard_size = io::parse_shard_size(o->shard_size);
    exec::ExecOptions eo;
    eo.threads = o->threads;
    eo.seed = o->seed;
    eo.max_memory = parse_memory_size(o->max_memory);
    exec::Recipe recipe = load_recipe(o->config, po, eo);
    for (size_t i = 0; i + 1 < recipe.plans.size(); ++i) {
      fmt::print("stage '{}':\n", recipe.names[i]);
      print_warnings(*recipe.plans[i]);
      print_plan_summary(*recipe.plans[i], eo, po.shard_size);
      fmt::print("\n");
    }
    const plan::Plan& p = recipe.final_plan();
    print_warnings(p);
    print_plan_summary(p, eo, po.shard_size);
    if (!o->explain.empty()) print_explain(p, o->explain);
  });
}

}  // namespace smelt::cli
