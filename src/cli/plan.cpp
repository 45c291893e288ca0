// `smelt plan CONFIG`: validate a config and show what the merge would do, reading headers only.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fnmatch.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <system_error>
#include <thread>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/config/config.h"
#include "smelt/error.h"
#include "smelt/io/hub_client.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/quant.h"

namespace smelt::cli {

namespace {

// The config file's text; an unreadable path is an error naming it and the OS's reason.
std::string read_config_file(const std::string& path) {
  if (path.empty()) fail("CONFIG: the config path is empty; give the mergekit YAML file to run");
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::not_found) {
    fail("{}: no such config file", path);
  }
  if (status.type() == std::filesystem::file_type::directory) {
    fail("{}: is a folder, not a config file; give the mergekit YAML file inside it", path);
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fail("{}: cannot read the config file: {}", path,
         std::generic_category().message(errno ? errno : EIO));
  }
  std::string text((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) fail("{}: cannot read the config file: read error", path);
  return text;
}

}  // namespace

exec::Recipe load_recipe(const std::string& path, const plan::PlanOptions& options,
                         const exec::ExecOptions& exec, const ConfigWarnings& warnings,
                         std::string* text_out) {
  const std::string text = read_config_file(path);
  auto docs = config::parse_config_documents(text, path);
  if (docs.empty()) fail("{}: the config file is empty", path);
  std::vector<std::string> unknown;
  for (const auto& doc : docs)
    unknown.insert(unknown.end(), doc.warnings.begin(), doc.warnings.end());
  if (warnings.strict && !unknown.empty()) {
    fail("{}{} (--strict: unknown config keys are errors)", unknown[0],
         unknown.size() > 1 ? fmt::format("; and {} more unknown key(s)", unknown.size() - 1)
                            : std::string());
  }
  if (!warnings.quiet) {
    for (const auto& w : unknown) fmt::print(stderr, "warning: {}\n", w);
  }
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

namespace {

// A decimal integer in [0, 2^64) or nullopt (signs, spaces, suffixes and overflow included).
std::optional<uint64_t> parse_unsigned(const std::string& text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace

uint64_t parse_seed(const std::string& text) {
  const auto v = parse_unsigned(text);
  if (!v) {
    fail("--random-seed: '{}' is not a seed; use a non-negative integer below 2^64, e.g. 42", text);
  }
  return *v;
}

size_t parse_threads(const std::string& text) {
  // More would only be capped by --max-memory; a limit keeps typos from meaning "a million".
  constexpr uint64_t kMaxThreads = 4096;
  const auto v = parse_unsigned(text);
  if (!v || *v > kMaxThreads) {
    fail("--threads: '{}' is not a thread count; use 1 to {}, or 0 for one per core", text,
         kMaxThreads);
  }
  if (*v == 0) return std::max(1u, std::thread::hardware_concurrency());
  return static_cast<size_t>(*v);
}

void check_gguf_only_flags(const plan::Plan& plan, const std::string& out_type,
                           const std::vector<std::string>& tensor_types) {
  if (plan.gguf_output || (out_type.empty() && tensor_types.empty())) return;
  fail(
      "{}: the output is safetensors, and these flags apply to GGUF output only; write GGUF "
      "(--format gguf, or an OUT ending in .gguf) or drop them",
      !out_type.empty() ? "--out-type" : "--tensor-type");
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
  const exec::MemoryEstimate mem = exec::estimate_memory(plan, exec);
  const exec::ExecLayout& run = mem.layout;
  fmt::print(
      "estimated peak memory: {} ({} worker{} x {} with chunks of {} elements, statistics cache "
      "{}, method state {}, output blocks {}, process {}; --max-memory {})\n",
      human_bytes(mem.total_bytes), run.workers, run.workers > 1 ? "s" : "",
      human_bytes(run.worker_bytes), run.chunk_elements, human_bytes(mem.cache_bytes),
      human_bytes(run.state_bytes), human_bytes(run.writer_bytes), human_bytes(run.reserve_bytes),
      human_bytes(exec.max_memory));
  // Cold-disk read and durable write speeds measured on the reference machine
  // (docs/performance.md).
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
  std::string seed = "0";
  std::string threads = "0";  // 0 = one per core
  bool strict = false;
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
  cmd->add_option("--random-seed", o->seed, "seed for random methods (a non-negative integer)")
      ->capture_default_str();
  cmd->add_option("-j,--threads,--num-threads", o->threads,
                  "threads (0 = one per core; --max-memory may allow fewer)")
      ->capture_default_str();
  cmd->add_flag("--strict", o->strict,
                "unknown config keys are errors (by default warnings: mergekit ignores them)");
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
    // Hub models missing from the cache: config and headers only, no weights (docs/hub.md).
    io::set_hub_headers_only(true);
    plan::PlanOptions po;
    po.seed = parse_seed(o->seed);
    po.allow_crimes = o->allow_crimes;
    po.allow_shape_mismatch = o->allow_shape_mismatch;
    po.tensor_set = tensor_set_mode(o->tensor_intersection, o->tensor_union);
    set_output_format(o->format, "", o->out_type, o->tensor_types, &po);
    po.shard_size = io::parse_shard_size(o->shard_size);
    exec::ExecOptions eo;
    eo.threads = parse_threads(o->threads);
    eo.seed = po.seed;
    eo.max_memory = parse_memory_size(o->max_memory);
    eo.shard_size = po.shard_size;
    exec::Recipe recipe = load_recipe(o->config, po, eo, {.strict = o->strict});
    check_gguf_only_flags(recipe.final_plan(), o->out_type, o->tensor_types);
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
