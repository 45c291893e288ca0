// `smelt moe CONFIG OUT`: assemble a mixture-of-experts model from dense models with a
// mergekit-moe config (docs/moe.md).
#include <fmt/format.h>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "cli/progress.h"
#include "smelt/config/moe_config.h"
#include "smelt/error.h"
#include "smelt/exec/merge.h"
#include "smelt/io/safetensors.h"
#include "smelt/moe/gate_vectors.h"
#include "smelt/plan/gguf_output.h"
#include "smelt/plan/moe_plan.h"

namespace smelt::cli {
namespace {

struct MoeCliOptions {
  std::string config;
  std::string out;
  std::string seed = "0";
  std::string threads = "0";
  std::string max_memory = "512M";
  std::string shard_size = "5B";
  bool overwrite = false;
  bool quiet = false;
  bool copy_tokenizer = true;
  bool write_model_card = true;
  bool allow_same_model = false;
  bool dry_run = false;
  std::string format = "auto";
  std::string out_type;
  std::vector<std::string> tensor_types;
  std::vector<std::string> ignored;
};

constexpr const char* kIgnoredFlags[] = {
    "--load-in-4bit",  "--load-in-8bit",      "--cuda",          "--no-cuda",
    "--lazy-unpickle", "--trust-remote-code", "--low-cpu-memory"};
constexpr const char* kIgnoredOptions[] = {"--device", "--transformers-cache"};

void run(const MoeCliOptions& o) {
  for (const auto& flag : o.ignored) {
    if (!o.quiet) {
      fmt::print(stderr,
                 "note: {} has no effect in smelt moe (it runs and streams on the CPU); "
                 "ignored\n",
                 flag);
    }
  }
  if (o.out.empty()) fail("OUT: the output path is empty; give the folder to write");
  plan::PlanOptions output;
  set_output_format(o.format, o.out, o.out_type, o.tensor_types, &output);
  if (output.format == plan::OutputFormat::kAuto) output.format = plan::OutputFormat::kSafetensors;
  const config::MoeConfig cfg = config::load_moe_config(o.config);
  // The config's own warnings (unknown keys, ignored prompts) before any model is opened.
  if (!o.quiet) {
    for (const std::string& w : cfg.warnings) fmt::print(stderr, "warning: {}\n", w);
  }
  plan::MoePlanOptions po;
  po.seed = parse_seed(o.seed);
  po.allow_same_model = o.allow_same_model;
  const size_t threads = parse_threads(o.threads);
  // Every model is opened and checked first; prompt routers then run the base model.
  config::MoeOutput family = config::MoeOutput::kMixtral;
  plan::Plan plan = plan::build_moe_plan(cfg, po, &family);
  if (output.format == plan::OutputFormat::kGguf && family != config::MoeOutput::kMixtral &&
      family != config::MoeOutput::kQwen2) {
    fail(
        "OUT: GGUF output of a {} model is not supported yet (Mixtral and Qwen MoE are); write "
        "a folder",
        config::moe_output_name(family));
  }
  const bool prompts = cfg.gate_mode != "random" && cfg.gate_mode != "uniform_random";
  if (prompts && !o.dry_run) {
    const auto& base = plan.models[static_cast<size_t>(plan.base_model)];
    if (!o.quiet)
      fmt::print(stderr, "computing the routers ({}) from {} experts' prompts...\n", cfg.gate_mode,
                 cfg.experts.size());
    // The shared expert's prompts, when it has some, give it a router row too (Qwen MoE): it
    // is computed as one more expert, so its errors are renamed after its YAML key.
    moe::GateVectors gates;
    try {
      const io::ResolvedModel& r = base.model->resolved();
      gates = moe::compute_gate_vectors(plan::gate_config(cfg), r.root, threads, r.lora_dir);
    } catch (const Error& e) {
      const std::string what = e.what();
      const std::string as_expert = fmt::format("experts[{}]", cfg.experts.size());
      if (what.starts_with(as_expert)) fail("shared_experts[0]{}", what.substr(as_expert.size()));
      throw;
    }
    if (!o.quiet && !gates.degenerate_layers.empty()) {
      fmt::print(stderr,
                 "warning: layer{} {} {} degenerate routing parameters (condition number above "
                 "5): your prompts may be too similar; one or more experts will be "
                 "underused\n",
                 gates.degenerate_layers.size() == 1 ? "" : "s",
                 fmt::join(gates.degenerate_layers, ", "),
                 gates.degenerate_layers.size() == 1 ? "has" : "have");
    }
    po.gate_vectors = &gates.values;
    plan = plan::build_moe_plan(cfg, po, &family);
  }
  // GGUF output: llama.cpp's names, the experts stacked per layer (docs/moe.md).
  plan::assign_gguf_output(plan, output);
  if (!o.quiet) print_warnings(plan);
  exec::MergeOptions mo;
  mo.exec.threads = threads;
  mo.exec.seed = po.seed;
  mo.exec.max_memory = parse_memory_size(o.max_memory);
  mo.shard_size = io::parse_shard_size(o.shard_size);
  mo.exec.shard_size = mo.shard_size;
  mo.copy_tokenizer = o.copy_tokenizer;
  mo.write_model_card = o.write_model_card;
  mo.overwrite = o.overwrite;
  mo.config_text = cfg.yaml_text;
  mo.on_note = [&](const std::string& text) {
    if (!o.quiet) fmt::print(stderr, "note: {}\n", text);
  };
  if (o.dry_run) {
    exec::check_output_path(plan, o.out, o.overwrite);
    print_plan_summary(plan, mo.exec, mo.shard_size);
    return;
  }
  ProgressReporter progress(o.quiet);
  exec::Progress last;
  mo.exec.on_progress = [&](const exec::Progress& pr) {
    last = pr;
    progress.update(pr);
  };
  exec::run_merge(plan, o.out, mo);
  progress.finish(last);
  if (!o.quiet) fmt::print(stderr, "wrote {}\n", o.out);
}

}  // namespace

void add_moe(CLI::App& app) {
  auto o = std::make_shared<MoeCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "moe",
      "Assemble a mixture-of-experts model (Mixtral, DeepSeek MoE, Qwen MoE or Qwen3 MoE) from\n"
      "dense models (a mergekit-moe config).\n"
      "Routers from prompts (gate_mode hidden, hidden_avg, cheap_embed) run the base model on\n"
      "the CPU; random and uniform_random need no prompts (docs/moe.md).\n"
      "Examples:\n"
      "  smelt moe moe.yml ./mixtral\n"
      "  smelt moe moe.yml ./mixtral --random-seed 42 -j 8\n"
      "  smelt moe moe.yml mixtral.gguf --out-type Q8_0");
  cmd->add_option("config", o->config, "mergekit-moe YAML config")->required();
  cmd->add_option("out", o->out, "output folder, or a .gguf file (llama.cpp's Mixtral layout)")
      ->required();
  cmd->add_option("--format", o->format, "output format: auto (by OUT's name), safetensors, gguf");
  cmd->add_option("--out-type", o->out_type,
                  "GGUF output: ggml type of the 2-D tensors (F16, BF16, Q8_0, Q4_K, ...)");
  cmd->add_option("--tensor-type", o->tensor_types, "GGUF output: REGEX=TYPE per tensor name")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--random-seed", o->seed, "seed of the random router (a non-negative integer)")
      ->capture_default_str();
  cmd->add_option("-j,--threads,--num-threads", o->threads,
                  "threads (0 = one per core; --max-memory may allow fewer)")
      ->capture_default_str();
  cmd->add_option("--max-memory", o->max_memory, "bound on working memory, e.g. 256M or 2G")
      ->capture_default_str();
  cmd->add_option("--out-shard-size", o->shard_size,
                  "largest shard in bytes (k/m/b decimal suffixes)")
      ->capture_default_str();
  cmd->add_flag("--overwrite", o->overwrite,
                "replace an existing output folder holding only model files");
  cmd->add_flag("--copy-tokenizer,!--no-copy-tokenizer", o->copy_tokenizer,
                "copy the base model's tokenizer files (default on)");
  cmd->add_flag("--write-model-card,!--no-write-model-card", o->write_model_card,
                "write README.md and mergekit_moe_config.yml (default on)");
  cmd->add_flag("--i-understand-this-is-not-useful-without-training", o->allow_same_model,
                "allow every expert to be the same model");
  cmd->add_flag("--dry-run", o->dry_run, "check the config and print the plan; write nothing");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress or notes");
  for (const char* f : kIgnoredFlags) {
    cmd->add_flag_callback(
           f, [o, f] { o->ignored.push_back(f); },
           "accepted for mergekit-moe compatibility; no effect")
        ->group("mergekit compatibility");
  }
  for (const char* f : kIgnoredOptions) {
    cmd->add_option_function<std::string>(
           f, [o, f](const std::string&) { o->ignored.push_back(f); },
           "accepted for mergekit-moe compatibility; no effect")
        ->group("mergekit compatibility");
  }
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
