// `smelt merge CONFIG OUT`: run a mergekit YAML config end to end.
#include "smelt/exec/merge.h"

#include <fmt/format.h>

#include <thread>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "cli/progress.h"
#include "smelt/error.h"
#include "smelt/io/safetensors.h"

namespace smelt::cli {
namespace {

struct MergeCliOptions {
  std::string config;
  std::string out;
  std::string shard_size = "5B";
  std::string seed = "0";
  std::string threads = "0";  // 0 = one per core
  bool strict = false;
  bool copy_tokenizer = true;
  bool write_model_card = true;
  bool overwrite = false;
  bool dry_run = false;
  int verbose = 0;
  bool quiet = false;
  bool safe_serialization = true;
  bool allow_crimes = false;
  bool allow_shape_mismatch = false;
  bool tensor_intersection = false;
  bool tensor_union = false;
  std::string keep_intermediates;
  std::string max_memory = "512M";
  uint64_t chunk_elements = 0;  // hidden tuning knob (0 = default)
  std::string format = "auto";
  std::string out_type;
  std::vector<std::string> tensor_types;
  std::vector<std::string> ignored;  // mergekit flags that mean nothing here
};

// mergekit-yaml flags accepted so users' scripts run unchanged.
constexpr const char* kIgnoredFlags[] = {"--cuda",
                                         "--no-cuda",
                                         "--lazy-unpickle",
                                         "--no-lazy-unpickle",
                                         "--low-cpu-memory",
                                         "--no-low-cpu-memory",
                                         "--clone-tensors",
                                         "--no-clone-tensors",
                                         "--trust-remote-code",
                                         "--no-trust-remote-code",
                                         "--read-to-gpu",
                                         "--no-read-to-gpu",
                                         "--multi-gpu",
                                         "--no-multi-gpu",
                                         "--gpu-rich",
                                         "--async-write",
                                         "--no-async-write"};
constexpr const char* kIgnoredOptions[] = {"--transformers-cache", "--lora-merge-cache",
                                           "--lora-merge-dtype", "--device", "--write-threads"};

void run(const MergeCliOptions& o) {
  for (const auto& flag : o.ignored) {
    if (!o.quiet) {
      const bool lora = std::string_view(flag).starts_with("--lora-merge");
      fmt::print(stderr, "note: {} has no effect in smelt ({}); ignored\n", flag,
                 lora ? "MODEL+LORA adapters are applied as tensors are read, in the base "
                        "model's dtype; nothing is cached (docs/lora.md)"
                      : "it streams on the CPU in bounded memory");
    }
  }
  if (!o.safe_serialization) {
    fail(
        "--no-safe-serialization: smelt writes safetensors only (PyTorch pickle output is not "
        "supported)");
  }
  if (o.out.empty())
    fail("OUT: the output path is empty; give the folder (or .gguf file) to write");
  plan::PlanOptions po;
  po.seed = parse_seed(o.seed);
  po.shard_size = io::parse_shard_size(o.shard_size);
  po.allow_crimes = o.allow_crimes;
  po.allow_shape_mismatch = o.allow_shape_mismatch;
  po.tensor_set = tensor_set_mode(o.tensor_intersection, o.tensor_union);
  set_output_format(o.format, o.out, o.out_type, o.tensor_types, &po);
  exec::MergeOptions mo;
  mo.exec.threads = parse_threads(o.threads);
  mo.exec.seed = po.seed;
  mo.exec.max_memory = parse_memory_size(o.max_memory);
  mo.exec.shard_size = po.shard_size;
  if (o.chunk_elements) mo.exec.chunk_elements = o.chunk_elements;
  exec::Recipe recipe =
      load_recipe(o.config, po, mo.exec, {.strict = o.strict, .quiet = o.quiet}, &mo.config_text);
  check_gguf_only_flags(recipe.final_plan(), o.out_type, o.tensor_types);
  if (!o.quiet) {
    for (const auto& stage : recipe.plans) print_warnings(*stage);
  }
  const plan::Plan& p = recipe.final_plan();
  mo.shard_size = po.shard_size;
  mo.copy_tokenizer = o.copy_tokenizer;
  mo.write_model_card = o.write_model_card;
  mo.overwrite = o.overwrite;
  mo.on_note = [&](const std::string& text) {
    if (!o.quiet) fmt::print(stderr, "note: {}\n", text);
  };
  if (o.dry_run) {
    exec::check_output_path(p, o.out, o.overwrite);
    print_plan_summary(p, mo.exec, mo.shard_size);
    return;
  }
  if (o.verbose > 0) print_plan_summary(p, mo.exec, mo.shard_size);
  if (!o.keep_intermediates.empty()) {
    for (size_t i = 0; i + 1 < recipe.plans.size(); ++i) {
      const auto dir = std::filesystem::path(o.keep_intermediates) / recipe.names[i];
      if (!o.quiet) fmt::print(stderr, "writing stage '{}' to {}\n", recipe.names[i], dir.string());
      exec::MergeOptions stage = mo;
      stage.config_text.clear();
      exec::run_merge(*recipe.plans[i], dir, stage);
    }
  }
  ProgressReporter progress(o.quiet);
  exec::Progress last;
  mo.exec.on_progress = [&](const exec::Progress& pr) {
    last = pr;
    progress.update(pr);
  };
  exec::run_merge(p, o.out, mo);
  progress.finish(last);
  if (!o.quiet) fmt::print(stderr, "wrote {}\n", o.out);
}

}  // namespace

void add_merge(CLI::App& app) {
  auto o = std::make_shared<MergeCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "merge",
      "Run a mergekit YAML config and write the merged model to OUT.\n"
      "Examples:\n"
      "  smelt merge ties.yml ./merged\n"
      "  smelt merge ties.yml ./merged --random-seed 42 -j 8 --out-shard-size 2B\n"
      "  smelt merge ties.yml ./merged --dry-run      (check only; same as smelt plan)");
  cmd->add_option("config", o->config, "mergekit YAML config")->required();
  cmd->add_option("out", o->out, "output folder")->required();
  cmd->add_option("--out-shard-size", o->shard_size,
                  "largest shard in bytes (k/m/b decimal suffixes)")
      ->capture_default_str();
  cmd->add_option("--random-seed", o->seed,
                  "seed for random methods (DARE, DELLA; a non-negative integer)")
      ->capture_default_str();
  cmd->add_option("-j,--threads,--num-threads", o->threads,
                  "threads (0 = one per core; --max-memory may allow fewer)")
      ->capture_default_str();
  cmd->add_flag("--strict", o->strict,
                "unknown config keys are errors (by default warnings: mergekit ignores them)");
  cmd->add_flag("--copy-tokenizer,!--no-copy-tokenizer", o->copy_tokenizer,
                "copy the base (or first) model's tokenizer files (default on)");
  cmd->add_flag("--write-model-card,!--no-write-model-card", o->write_model_card,
                "write README.md and mergekit_config.yml (default on)");
  cmd->add_flag("--safe-serialization,!--no-safe-serialization", o->safe_serialization,
                "write safetensors (always on)");
  cmd->add_flag("--overwrite", o->overwrite,
                "replace an existing output: a folder holding only model files (weights, config, "
                "tokenizer, card), or a regular .gguf file; anything else is refused");
  cmd->add_option("--format", o->format,
                  "output format: safetensors, gguf, or auto (gguf when OUT ends in .gguf or the "
                  "inputs are GGUF files)")
      ->capture_default_str();
  cmd->add_option("--out-type", o->out_type,
                  "GGUF output: type of every tensor with 2+ dimensions (F32, F16, BF16, Q8_0, "
                  "Q4_0, Q4_K, Q5_K, Q6_K); default: each input tensor's type");
  cmd->add_option("--tensor-type", o->tensor_types,
                  "GGUF output: REGEX=TYPE for tensors whose name matches (repeatable; first match "
                  "wins)");
  cmd->add_option("--max-memory", o->max_memory,
                  "bound on working memory, e.g. 256M or 2G (the chunk size and the number of "
                  "workers adapt; never the output)")
      ->capture_default_str();
  cmd->add_option("--chunk-elements", o->chunk_elements, "largest chunk in elements (tuning)")
      ->group("");
  cmd->add_option("--keep-intermediates", o->keep_intermediates,
                  "multi-stage recipes: also write each named stage to DIR/<name>");
  cmd->add_flag(
      "--allow-shape-mismatch", o->allow_shape_mismatch,
      "task-vector methods: leave out a model whose tensor shape differs from the base's");
  cmd->add_flag("--allow-crimes,!--no-allow-crimes", o->allow_crimes,
                "allow merging models of different architectures");
  cmd->add_flag("-i,--tensor-intersection", o->tensor_intersection,
                "raw tensor files: skip tensors only some files have");
  cmd->add_flag("-u,--tensor-union", o->tensor_union,
                "raw tensor files: merge each tensor over the files that have it");
  cmd->add_flag("--dry-run", o->dry_run, "check the config and print the plan; write nothing");
  cmd->add_flag("-v,--verbose", o->verbose, "more output (repeatable)");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress or notes");
  for (const char* f : kIgnoredFlags) {
    cmd->add_flag_callback(
           f, [o, f] { o->ignored.push_back(f); },
           "accepted for mergekit "
           "compatibility; no effect")
        ->group("mergekit compatibility");
  }
  for (const char* f : kIgnoredOptions) {
    cmd->add_option_function<std::string>(
           f, [o, f](const std::string&) { o->ignored.push_back(f); },
           "accepted for mergekit compatibility; no effect")
        ->group("mergekit compatibility");
  }
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
