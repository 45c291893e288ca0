// `smelt lora bake CKPT LORA... [--weights W,...] OUT`: Kohya / A1111 LoRA files baked into a
// single-file Stable Diffusion checkpoint. (PEFT adapters need no verb: `MODEL+ADAPTER` works
// wherever a model does, and `smelt convert MODEL+ADAPTER OUT` writes the baked model.)
#include "cli/lora_bake.h"

#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/lora/kohya.h"

namespace smelt::cli {
namespace {

struct LoraBakeCliOptions {
  std::vector<std::string> paths;  // CKPT LORA... OUT
  std::string weights_text;
  std::string threads = "0";
  bool overwrite = false;
  bool quiet = false;
};

void run_lora_bake(const LoraBakeCliOptions& o) {
  if (o.paths.size() < 3) {
    fail("lora bake: give CKPT, at least one LORA and OUT ({} path{} given)", o.paths.size(),
         o.paths.size() == 1 ? "" : "s");
  }
  lora::KohyaBakeOptions options;
  options.checkpoint = o.paths.front();
  options.out = o.paths.back();
  options.loras.assign(o.paths.begin() + 1, o.paths.end() - 1);
  for (size_t p = 0; !o.weights_text.empty() && p <= o.weights_text.size();) {
    const size_t comma = std::min(o.weights_text.find(',', p), o.weights_text.size());
    const std::string item = o.weights_text.substr(p, comma - p);
    size_t used = 0;
    double w = 0;
    try {
      w = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size()) {
      fail("lora bake: --weights '{}': '{}' is not a number", o.weights_text, item);
    }
    options.weights.push_back(w);
    p = comma + 1;
  }
  options.overwrite = o.overwrite;
  options.threads = parse_threads(o.threads);
  const lora::KohyaBakeReport r = lora::bake_kohya(options);
  if (!o.quiet) {
    fmt::print("baked {} LoRA module{} from {} file{} into {} of {} tensors: {}\n", r.modules,
               r.modules == 1 ? "" : "s", options.loras.size(),
               options.loras.size() == 1 ? "" : "s", r.tensors_changed, r.tensors,
               options.out.string());
  }
}

}  // namespace

void add_lora_bake(CLI::App& lora_verb) {
  auto o = std::make_shared<LoraBakeCliOptions>();
  CLI::App* cmd = lora_verb.add_subcommand(
      "bake",
      "Bake Kohya / A1111 LoRA files (lora_unet_*, lora_te*_) into a single-file Stable "
      "Diffusion checkpoint: W + weight * alpha/r * up @ down, rounded once to each tensor's "
      "dtype. (PEFT adapters: write MODEL+ADAPTER wherever a model goes.)");
  cmd->add_option("paths", o->paths, "CKPT LORA... OUT (OUT a new .safetensors file)")
      ->required()
      ->expected(3, -1);
  // One comma-separated value (`--weights 0.5,-1`), so that OUT is never taken for a weight.
  cmd->add_option("--weights", o->weights_text,
                  "multipliers, one per LORA, comma-separated: 0.8,0.5 (default 1 each)");
  cmd->add_option("-j,--threads", o->threads, "threads (0 = every core)")->capture_default_str();
  cmd->add_flag("--overwrite", o->overwrite, "replace an existing OUT file");
  cmd->add_flag("-q,--quiet", o->quiet, "print nothing on success");
  cmd->callback([o] { run_lora_bake(*o); });
}

}  // namespace smelt::cli
