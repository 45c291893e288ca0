// `smelt convert MODEL OUT`: a PyTorch .bin (or any readable) model rewritten as safetensors.
#include "smelt/exec/convert.h"

#include <fmt/format.h>

#include <memory>
#include <string>

#include "cli/common.h"
#include "smelt/io/model_ref.h"

namespace smelt::cli {
namespace {

struct ConvertCliOptions {
  std::string model;
  std::string out;
  std::string shard_size = "5B";
  bool overwrite = false;
};

void run_convert(const ConvertCliOptions& o) {
  exec::ConvertOptions options;
  options.shard_size = io::parse_shard_size(o.shard_size);
  options.overwrite = o.overwrite;
  options.on_note = [](const std::string& text) { fmt::print(stderr, "note: {}\n", text); };
  const auto model = io::Model::open(o.model);
  exec::convert_to_safetensors(*model, o.out, options);
  uint64_t bytes = 0;
  for (const auto& t : model->tensors()) bytes += t.info->nbytes;
  fmt::print("wrote {} tensors ({}) to {}\n", model->tensors().size(), human_bytes(bytes), o.out);
}

}  // namespace

void add_convert(CLI::App& app) {
  auto o = std::make_shared<ConvertCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "Rewrite a model's weights as safetensors (dtypes and values unchanged).\n"
      "MODEL: a folder with pytorch_model*.bin (or safetensors) weights, or one .bin/.pt/.pth "
      "file.\nOUT: a new model folder (config and tokenizer files copied), or a .safetensors "
      "file when MODEL is a single file. See docs/pytorch.md.\n"
      "Examples:\n  smelt convert ./gpt2 ./gpt2-safetensors\n"
      "  smelt convert weights.bin weights.safetensors");
  cmd->add_option("model", o->model, "model reference")->required();
  cmd->add_option("out", o->out, "output folder, or .safetensors file for a single-file model")
      ->required();
  cmd->add_option("--out-shard-size", o->shard_size,
                  "largest shard in bytes (k/m/b decimal suffixes; folder output)")
      ->capture_default_str();
  cmd->add_flag("--overwrite", o->overwrite,
                "replace an existing output (only a folder of model files, or a file)");
  cmd->callback([o] { run_convert(*o); });
}

}  // namespace smelt::cli
