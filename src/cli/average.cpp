// `smelt average CHECKPOINT... OUT`: checkpoint averaging (uniform tail average or EMA) as the
// equivalent linear merge, streamed and written exactly like `smelt merge` (docs/average.md).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "cli/progress.h"
#include "smelt/analysis/checkpoints.h"
#include "smelt/config/config.h"
#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/exec/merge.h"
#include "smelt/io/safetensors.h"
#include "smelt/plan/plan.h"

namespace smelt::cli {
namespace {

struct AverageCliOptions {
  std::vector<std::string> paths;  // checkpoints (or run folders), then OUT
  std::optional<size_t> last;
  std::optional<double> ema;
  std::string dtype;
  std::string shard_size = "5B";
  std::string threads = "0";
  std::string max_memory = "512M";
  bool copy_tokenizer = true;
  bool write_model_card = true;
  bool overwrite = false;
  bool dry_run = false;
  bool print_config = false;
  bool quiet = false;
};

// A YAML double-quoted scalar for `text` (JSON's escapes are valid YAML).
std::string yaml_string(const std::string& text) { return nlohmann::json(text).dump(); }

// The linear merge config equivalent to averaging `checkpoints` with `weights` (step order).
// Uniform averages use weight 1 and linear's normalize, exactly what a user would write; an EMA
// gives its weights, which already sum to 1, with normalize off (docs/average.md).
std::string average_config(const std::vector<analysis::Checkpoint>& checkpoints,
                           const std::vector<double>& weights, bool uniform,
                           const std::string& description, const std::string& dtype) {
  std::string yaml = fmt::format("# smelt average: {}\nmerge_method: linear\n", description);
  if (!uniform) yaml += "parameters:\n  normalize: false\n";
  if (!dtype.empty()) yaml += fmt::format("out_dtype: {}\n", yaml_string(dtype));
  yaml += "models:\n";
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    const auto& c = checkpoints[i];
    yaml += fmt::format(
        "  - model: {}{}\n    parameters:\n      weight: {}\n", yaml_string(c.path.string()),
        c.step ? fmt::format("  # step {}", *c.step) : std::string(), uniform ? 1.0 : weights[i]);
  }
  return yaml;
}

// Refuses an OUT that is or lies inside one of the inputs as given, run folders and checkpoints
// --last leaves out included: nothing is ever written into a training run (run_merge checks the
// checkpoints that are merged).
void check_out_outside_inputs(const std::string& out, const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  const fs::path target = fs::weakly_canonical(fs::absolute(out));
  for (const std::string& input : inputs) {
    const fs::path in = fs::weakly_canonical(fs::absolute(input));
    auto [end, _] = std::mismatch(in.begin(), in.end(), target.begin(), target.end());
    if (end == in.end()) {
      fail(
          "OUT {} lies inside the input {}; write the average outside the training run, e.g. "
          "beside it",
          out, input);
    }
  }
}

void run(const AverageCliOptions& o) {
  if (o.paths.size() < 2) {
    fail(
        "give the checkpoints (or a run folder) and then the output folder: smelt average "
        "CHECKPOINT... OUT");
  }
  std::vector<std::string> inputs = o.paths;
  const std::string out = inputs.back();
  inputs.pop_back();
  if (out.empty()) fail("OUT: the output path is empty; give the folder to write");
  std::vector<analysis::Checkpoint> all = analysis::find_checkpoints(inputs);
  check_out_outside_inputs(out, inputs);
  std::vector<analysis::Checkpoint> chosen = all;
  if (o.last) {
    if (*o.last > all.size()) {
      std::vector<std::string> found;
      for (const auto& c : all) found.push_back(c.path.string());
      fail("--last {}: only {} checkpoint(s) found ({}); give --last {} or less", *o.last,
           all.size(), fmt::join(found, ", "), all.size());
    }
    chosen.erase(chosen.begin(), chosen.end() - static_cast<ptrdiff_t>(*o.last));
  }
  if (chosen.size() < 2) {
    fail("averaging needs at least 2 checkpoints, {} given{}", chosen.size(),
         o.last ? fmt::format(" by --last {}", *o.last) : std::string());
  }
  if (o.ema && !(*o.ema > 0.0 && *o.ema < 1.0)) {
    fail("--ema {}: beta must lie strictly between 0 and 1 (e.g. 0.9)", *o.ema);
  }
  if (!o.dtype.empty() && !parse_torch_dtype(o.dtype)) {
    fail("--dtype {}: unknown; use bfloat16, float16 or float32", o.dtype);
  }
  const bool uniform = !o.ema;
  const std::vector<double> weights = uniform ? analysis::uniform_weights(chosen.size())
                                              : analysis::ema_weights(chosen.size(), *o.ema);
  const std::string description =
      uniform ? fmt::format("uniform average of {} checkpoints", chosen.size())
              : fmt::format("exponential moving average (beta {}) of {} checkpoints", *o.ema,
                            chosen.size());
  const std::string yaml = average_config(chosen, weights, uniform, description, o.dtype);
  if (o.print_config) {
    fmt::print("{}", yaml);
    return;
  }
  analysis::check_same_tensors(chosen);

  plan::PlanOptions po;
  po.shard_size = io::parse_shard_size(o.shard_size);
  exec::MergeOptions mo;
  mo.exec.threads = parse_threads(o.threads);
  mo.exec.max_memory = parse_memory_size(o.max_memory);
  mo.exec.shard_size = po.shard_size;
  mo.shard_size = po.shard_size;
  mo.copy_tokenizer = o.copy_tokenizer;
  mo.write_model_card = o.write_model_card;
  mo.overwrite = o.overwrite;
  mo.config_text = yaml;
  mo.on_note = [&](const std::string& text) {
    if (!o.quiet) fmt::print(stderr, "note: {}\n", text);
  };
  const config::MergeConfig cfg = config::parse_config(yaml, "smelt average");
  const plan::Plan p = plan::build_plan(cfg, po);
  if (!o.quiet || o.dry_run) {
    fmt::print(stderr, "{}:\n", description);
    for (size_t i = 0; i < chosen.size(); ++i) {
      fmt::print(stderr, "  {:>10}  weight {:<10.6g} {}\n",
                 chosen[i].step ? fmt::format("step {}", *chosen[i].step) : "-", weights[i],
                 chosen[i].path.string());
    }
    print_warnings(p);
  }
  if (o.dry_run) {
    exec::check_output_path(p, out, o.overwrite);
    print_plan_summary(p, mo.exec, mo.shard_size);
    return;
  }
  ProgressReporter progress(o.quiet);
  exec::Progress last;
  mo.exec.on_progress = [&](const exec::Progress& pr) {
    last = pr;
    progress.update(pr);
  };
  exec::run_merge(p, out, mo);
  progress.finish(last);
  if (!o.quiet) fmt::print(stderr, "wrote {}\n", out);
}

}  // namespace

void add_average(CLI::App& app) {
  auto o = std::make_shared<AverageCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "average",
      "Average the checkpoints of a training run (uniform, tail or EMA) into OUT, streamed like "
      "`smelt merge` of the equivalent linear config (docs/average.md).\n"
      "Examples:\n"
      "  smelt average ./run ./avg --last 3           (run = folder of checkpoint-<step>)\n"
      "  smelt average ./run ./ema --ema 0.9\n"
      "  smelt average ./ckpt-a ./ckpt-b ./avg --print-config   (the YAML it runs)");
  cmd->add_option("paths", o->paths,
                  "CHECKPOINT... OUT: checkpoint folders (or run folders of checkpoint-<step> "
                  "subfolders), then the output folder")
      ->required();
  cmd->add_option("--last", o->last, "average only the last N checkpoints (in step order)");
  cmd->add_option("--ema", o->ema,
                  "exponential moving average with this beta in (0, 1) instead of the uniform "
                  "mean: ema_t = beta*ema_{t-1} + (1-beta)*theta_t");
  cmd->add_option("--dtype,--out-dtype", o->dtype,
                  "output dtype (bfloat16, float16, float32); default: the checkpoints'");
  cmd->add_option("--out-shard-size", o->shard_size,
                  "largest shard in bytes (k/m/b decimal suffixes)")
      ->capture_default_str();
  cmd->add_option("-j,--threads", o->threads, "threads (0 = one per core)")->capture_default_str();
  cmd->add_option("--max-memory", o->max_memory, "bound on working memory, e.g. 256M or 2G")
      ->capture_default_str();
  cmd->add_flag("--copy-tokenizer,!--no-copy-tokenizer", o->copy_tokenizer,
                "copy the first checkpoint's tokenizer files (default on)");
  cmd->add_flag("--write-model-card,!--no-write-model-card", o->write_model_card,
                "write README.md and mergekit_config.yml (default on)");
  cmd->add_flag("--overwrite", o->overwrite, "replace an existing output folder of model files");
  cmd->add_flag("--dry-run", o->dry_run, "check and print the plan; write nothing");
  cmd->add_flag("--print-config", o->print_config,
                "print the equivalent linear merge config (for `smelt merge`) and stop");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress or notes");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
