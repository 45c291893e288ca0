// `smelt lora extract|combine`: LoRA adapters extracted from a fine-tune and its base, and
// several adapters combined into one (docs/lora_extract.md).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/common.h"
#include "cli/lora_bake.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/lora/combine.h"
#include "smelt/lora/extract.h"

namespace smelt::cli {
namespace {

struct ExtractCliOptions {
  std::string model, base, out;
  lora::ExtractOptions o;
  std::string threads = "0";
  std::string format = "auto";
  bool quiet = false;
};

// The command line shown in README.md: the options that change the result.
std::string invocation(const ExtractCliOptions& c) {
  const lora::ExtractOptions& o = c.o;
  std::string s = fmt::format("smelt lora extract --model {} --base {} {} --max-rank {}", c.model,
                              c.base, c.out, o.max_rank);
  if (!o.distribute_scale) s += " --no-distribute-scale";
  if (o.embed_lora) s += " --embed-lora";
  for (const auto& m : o.save_modules) s += " --save-module " + m;
  for (const auto& r : o.include_regex) s += " --include-regex '" + r + "'";
  for (const auto& r : o.exclude_regex) s += " --exclude-regex '" + r + "'";
  if (o.sv_epsilon > 0) s += fmt::format(" --sv-epsilon {}", o.sv_epsilon);
  if (o.skip_undecomposable) s += " --skip-undecomposable";
  if (o.format == "gguf") s += " --format gguf";
  if (o.randomized) {
    s += fmt::format(" --randomized --power-iters {} --oversample {} --seed {}", o.power_iters,
                     o.oversample, o.seed);
  }
  return s;
}

void run_extract(ExtractCliOptions& c) {
  lora::ExtractOptions& o = c.o;
  o.threads = parse_threads(c.threads);
  if (c.format == "auto") {
    o.format = std::filesystem::path(c.out).extension() == ".gguf" ? "gguf" : "peft";
  } else if (c.format == "peft" || c.format == "gguf") {
    o.format = c.format;
  } else {
    fail("--format '{}': use peft, gguf or auto", c.format);
  }
  o.invocation = invocation(c);
  o.on_note = [](const std::string& text) { fmt::print(stderr, "note: {}\n", text); };
  if (!c.quiet) {
    o.on_progress = [](size_t done, size_t total) {
      fmt::print(stderr, "\rdecomposed {}/{} modules", done, total);
      if (done == total) fmt::print(stderr, "\n");
    };
  }
  const auto ft = io::Model::open(c.model);
  const auto base = io::Model::open(c.base);
  const lora::ExtractResult r = lora::extract_lora(*ft, *base, c.out, o);
  std::vector<const lora::ModuleResult*> lora;
  size_t full = 0, skipped = 0;
  for (const auto& m : r.modules) {
    if (m.kind == "lora" || m.kind == "embedding") lora.push_back(&m);
    full += m.kind == "full";
    skipped += m.kind == "skipped";
  }
  fmt::print(
      "wrote a rank {} LoRA adapter ({}) to {}: {} modules decomposed, {} saved full "
      "rank, {} skipped\n",
      r.rank, human_bytes(r.adapter_bytes), c.out, lora.size(), full, skipped);
  if (lora.empty()) return;
  std::sort(lora.begin(), lora.end(),
            [](const auto* a, const auto* b) { return a->rel_error > b->rel_error; });
  const double median =
      lora.size() % 2
          ? lora[lora.size() / 2]->rel_error
          : (lora[lora.size() / 2 - 1]->rel_error + lora[lora.size() / 2]->rel_error) / 2;
  fmt::print("relative reconstruction error |D - BA|/|D|: median {:.3e}, worst {:.3e} ({})\n",
             median, lora[0]->rel_error, lora[0]->module);
  if (!c.quiet) {
    std::vector<std::vector<std::string>> rows;
    for (size_t i = 0; i < std::min<size_t>(5, lora.size()); ++i) {
      rows.push_back({lora[i]->module, std::to_string(lora[i]->rank),
                      fmt::format("{:.3e}", lora[i]->rel_error)});
    }
    if (o.format == "gguf") {
      fmt::print("worst modules:\n");
    } else {
      fmt::print("worst modules (all in {}/README.md):\n", c.out);
    }
    print_columns({"module", "rank", "rel_error"}, rows, 1);
  }
}

void add_extract(CLI::App& lora_app) {
  auto c = std::make_shared<ExtractCliOptions>();
  CLI::App* cmd = lora_app.add_subcommand(
      "extract",
      "Extract a PEFT LoRA adapter from a fine-tuned model and its base (mergekit-extract-lora):\n"
      "each 2-D weight's difference D = W_ft - W_base truncated by SVD to rank r.\n"
      "Examples:\n  smelt lora extract --model ./ft --base ./base ./ft-lora --max-rank 32\n"
      "  smelt lora extract --model ./ft --base ./base ./ft-lora --randomized -j 8\n"
      "  smelt lora extract --model ./ft --base ./base ft-lora.gguf --max-rank 32   # llama.cpp");
  cmd->add_option("--model", c->model, "the fine-tuned model")->required();
  cmd->add_option("--base,--base-model", c->base, "the model it was fine-tuned from")->required();
  cmd->add_option("out", c->out, "output adapter folder (a .gguf file with --format gguf)")
      ->required();
  cmd->add_option("--out-path", c->out, "output adapter (mergekit's spelling)");
  cmd->add_option("--format", c->format,
                  "peft (an adapter folder), gguf (one llama.cpp adapter file), or auto (gguf "
                  "when OUT ends in .gguf)")
      ->capture_default_str();
  cmd->add_option("--max-rank", c->o.max_rank, "largest rank of a module")->capture_default_str();
  cmd->add_flag("--distribute-scale,!--no-distribute-scale", c->o.distribute_scale,
                "A = sqrt(S) V^T and B = U sqrt(S) (default); off: A = S V^T, B = U");
  cmd->add_flag("--embed-lora,!--no-embed-lora", c->o.embed_lora,
                "decompose the input embeddings too (default: saved full rank)");
  cmd->add_option("--save-module", c->o.save_modules,
                  "save this module full rank (full name or last component; repeatable)");
  cmd->add_option("-i,--include-regex", c->o.include_regex,
                  "only modules whose name this regex finds (repeatable)");
  cmd->add_option("-e,--exclude-regex", c->o.exclude_regex,
                  "skip modules whose name this regex finds (repeatable)");
  cmd->add_option("--sv-epsilon", c->o.sv_epsilon, "drop singular values not above this")
      ->capture_default_str();
  cmd->add_flag("--skip-undecomposable", c->o.skip_undecomposable,
                "skip weights that are not 2-D (norms) instead of saving them full rank");
  cmd->add_flag("--randomized", c->o.randomized,
                "randomized SVD (Halko et al.): faster, approximate, seeded");
  cmd->add_option("--power-iters", c->o.power_iters, "randomized SVD: power iterations")
      ->capture_default_str();
  cmd->add_option("--oversample", c->o.oversample, "randomized SVD: extra sample columns")
      ->capture_default_str();
  cmd->add_option("--seed", c->o.seed, "randomized SVD: random seed")->capture_default_str();
  cmd->add_option("-j,--threads", c->threads, "modules decomposed at once (0 = one per core)")
      ->capture_default_str();
  cmd->add_flag("--overwrite", c->o.overwrite,
                "replace an existing output folder (only one holding model files)");
  cmd->add_flag("-q,--quiet", c->quiet, "print only the summary");
  cmd->callback([c] { run_extract(*c); });
}

struct CombineCliOptions {
  std::vector<std::string> paths;  // adapters..., OUT
  std::string weights;
  std::string type = "svd";
  std::optional<double> density;
  std::string majority_sign = "total";
  std::optional<size_t> svd_rank;
  std::optional<double> svd_clamp;
  uint64_t seed = 0;
  bool peft_svd_scaling = false;
  std::string threads = "0";
  bool overwrite = false;
};

std::vector<double> parse_weights(const std::string& text, size_t n) {
  std::vector<double> w;
  if (text.empty()) return std::vector<double>(n, 1.0);
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || !std::isfinite(v)) {
      fail("--weights: '{}' is not a number (give comma-separated numbers, one per adapter)", item);
    }
    w.push_back(v);
    start = comma + 1;
  }
  return w;
}

void run_combine(const CombineCliOptions& c) {
  if (c.paths.size() < 2) fail("combine needs at least one adapter and the output folder");
  std::vector<std::filesystem::path> adapters(c.paths.begin(), c.paths.end() - 1);
  lora::CombineOptions o;
  o.type = lora::parse_combination_type(c.type);
  o.weights = parse_weights(c.weights, adapters.size());
  o.density = c.density;
  if (c.majority_sign == "total") {
    o.majority_sign = lora::MajoritySign::kTotal;
  } else if (c.majority_sign == "frequency") {
    o.majority_sign = lora::MajoritySign::kFrequency;
  } else {
    fail("--majority-sign-method must be total or frequency (got '{}')", c.majority_sign);
  }
  o.svd_rank = c.svd_rank;
  o.svd_clamp = c.svd_clamp;
  o.seed = c.seed;
  o.peft_svd_scaling = c.peft_svd_scaling;
  o.threads = parse_threads(c.threads);
  o.overwrite = c.overwrite;
  o.on_note = [](const std::string& text) { fmt::print(stderr, "note: {}\n", text); };
  const lora::CombineResult r = lora::combine_lora(adapters, c.paths.back(), o);
  fmt::print("wrote a rank {} LoRA adapter ({} modules, type {}) to {}\n", r.rank, r.modules.size(),
             lora::combination_name(r.type), c.paths.back());
}

void add_combine(CLI::App& lora_app) {
  auto c = std::make_shared<CombineCliOptions>();
  CLI::App* cmd = lora_app.add_subcommand(
      "combine",
      "Combine PEFT LoRA adapters into one, as PEFT's add_weighted_adapter does.\n"
      "Types: linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd,\n"
      "dare_ties_svd, magnitude_prune, magnitude_prune_svd.\n"
      "Examples:\n  smelt lora combine a b --weights 0.7,0.3 --type cat ./ab\n"
      "  smelt lora combine a b --type ties_svd --density 0.5 --svd-rank 16 ./ab");
  cmd->add_option("paths", c->paths, "ADAPTER... OUT")->required()->expected(2, -1);
  cmd->add_option("--weights", c->weights, "comma-separated weights, one per adapter (default 1)");
  cmd->add_option("--type,--combination-type", c->type, "combination type")->capture_default_str();
  cmd->add_option("--density", c->density, "fraction of entries kept (pruning types)");
  cmd->add_option("--majority-sign-method", c->majority_sign, "total or frequency")
      ->capture_default_str();
  cmd->add_option("--svd-rank", c->svd_rank, "svd types: rank (default: largest input rank)");
  cmd->add_option("--svd-clamp", c->svd_clamp, "svd types: clamp factors at this quantile");
  cmd->add_option("--seed", c->seed, "DARE masks: random seed")->capture_default_str();
  cmd->add_flag("--peft-svd-scaling", c->peft_svd_scaling,
                "svd types: scale deltas by alpha/r twice, exactly as PEFT's code does");
  cmd->add_option("-j,--threads", c->threads, "modules combined at once (0 = one per core)")
      ->capture_default_str();
  cmd->add_flag("--overwrite", c->overwrite,
                "replace an existing output folder (only one holding model files)");
  cmd->callback([c] { run_combine(*c); });
}

}  // namespace

void add_lora(CLI::App& app) {
  CLI::App* lora_app = app.add_subcommand(
      "lora",
      "LoRA adapters: extract one from a fine-tune, combine several, bake Kohya LoRAs into a "
      "Stable Diffusion checkpoint (docs/lora.md)");
  lora_app->require_subcommand(1);
  add_extract(*lora_app);
  add_combine(*lora_app);
  add_lora_bake(*lora_app);
}

}  // namespace smelt::cli
