// Entry point of the `smelt` binary: dispatches to one verb per file and turns errors into
// messages and exit codes.
#include <fmt/core.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>

#include "cli/common.h"
#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/io/model_ref.h"
#include "smelt/kernels/quant.h"

namespace smelt::cli {

std::string type_name(const io::TensorInfo& t) {
  if (t.ggml_type >= 0) return kernels::ggml_type_name(static_cast<kernels::GgmlType>(t.ggml_type));
  return std::string(dtype_name(t.dtype));
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1000.0 && u < 5) v /= 1000.0, ++u;
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string human_count(uint64_t n) {
  const char* units[] = {"", "K", "M", "B", "T"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1000.0 && u < 4) v /= 1000.0, ++u;
  return u == 0 ? fmt::format("{}", n) : fmt::format("{:.2f}{}", v, units[u]);
}

}  // namespace smelt::cli

namespace {

// The verb argv[1] names, checked before CLI11 parses: CLI11 would answer an unknown verb with
// "A subcommand is required" and exit code 106. Returns the error message, or "" when argv[1] is
// a verb or a flag (--help, --version). Hidden verbs (dev) are accepted but not listed.
std::string unknown_verb_message(CLI::App& app, const char* word) {
  if (word[0] == '-') return "";
  std::vector<std::string> listed, all;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->check_name(word)) return "";
    all.push_back(sub->get_name());
    if (!sub->get_group().empty()) listed.push_back(sub->get_name());
  }
  const std::string guess = smelt::config::closest_match(word, listed);
  return fmt::format("unknown verb '{}'; {}verbs: {}", word,
                     guess.empty() ? "" : fmt::format("did you mean '{}'? ", guess),
                     fmt::join(listed, ", "));
}

// "PATH1: PATH2: cause" for a std::filesystem error: the paths it names and the OS's reason,
// without the library's "filesystem error: <function>" prefix.
std::string filesystem_error_message(const std::filesystem::filesystem_error& e) {
  std::string where;
  if (!e.path1().empty()) where = fmt::format("{}: ", e.path1().string());
  if (!e.path2().empty()) where += fmt::format("{}: ", e.path2().string());
  return where + e.code().message();
}

}  // namespace

int main(int argc, char** argv) {
  smelt::install_interrupt_handler();
  CLI::App app{
      "smelt: merge neural network models (mergekit-compatible), fast and in bounded memory.\n\n"
      "Examples:\n"
      "  smelt merge config.yml ./merged      run a mergekit YAML config\n"
      "  smelt plan config.yml                 check a config and show what a merge would do\n"
      "  smelt moe moe.yml ./mixtral           assemble a mixture of experts (mergekit-moe)\n"
      "  smelt inspect ./model                 list a model's tensors\n"
      "  smelt download org/name@main          fetch a model from the Hugging Face Hub\n"
      "  smelt convert ./model ./model-st      PyTorch .bin weights to safetensors\n"
      "  smelt tokenize ./model \"Hello\"        run a model's tokenizer\n"
      "  smelt eval ./model --text wiki.txt    perplexity and task scores on the CPU\n"
      "  smelt generate ./model -p \"Hi\"        continue a prompt\n"
      "  smelt soup a b c -o soup --greedy --tasks val.jsonl\n"
      "  smelt sweep m.yml --vary parameters.t=0:1:11 --tasks val.jsonl\n"
      "  smelt interpolate base ft --tasks t.jsonl --plot lmc.svg\n"
      "  smelt evolve genome.yml --storage-path run   search merge parameters (mergekit-evolve)\n"
      "  smelt average ./run ./avg --last 3    average a training run's last checkpoints\n"
      "  smelt diff ./ft ./base --layers       how far two models are apart, per layer\n"
      "  smelt tokensurgeon ./m ./donor ./out  give a model another model's tokenizer\n"
      "  smelt lora extract --model ./ft --base ./base ./lora   a LoRA adapter from a fine-tune\n",
      "smelt"};
  app.set_version_flag("--version", std::string("smelt ") + SMELT_VERSION);
  app.require_subcommand(1);
  smelt::cli::add_merge(app);
  smelt::cli::add_moe(app);
  smelt::cli::add_plan(app);
  smelt::cli::add_inspect(app);
  smelt::cli::add_convert(app);
  smelt::cli::add_download(app);
  smelt::cli::add_tokenize(app);
  smelt::cli::add_eval(app);
  smelt::cli::add_generate(app);
  smelt::cli::add_soup(app);
  smelt::cli::add_sweep(app);
  smelt::cli::add_interpolate(app);
  smelt::cli::add_evolve(app);
  smelt::cli::add_average(app);
  smelt::cli::add_diff(app);
  smelt::cli::add_tokensurgeon(app);
  smelt::cli::add_lora(app);
  smelt::cli::add_dev(app);
  // Hub ids missing from the cache are downloaded by every verb, as mergekit does (docs/hub.md).
  smelt::io::set_hub_download(true);
  if (argc < 2) {
    // Bare `smelt`: the help, as `smelt --help` prints it, with exit code 0 (asking what smelt
    // does is not an error).
    fmt::print("{}", app.help());
    return 0;
  }
  if (const std::string message = unknown_verb_message(app, argv[1]); !message.empty()) {
    fmt::print(stderr, "smelt: error: {}\n", message);
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const smelt::Interrupted& e) {
    std::fflush(stdout);
    fmt::print(stderr, "smelt: {}\n", e.what());
    return e.exit_code();
  } catch (const smelt::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "smelt: error: {}\n", e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // An OS error on a path no check caught before (permissions, a vanished file): the user's
    // environment, not a bug in smelt.
    std::fflush(stdout);
    fmt::print(stderr, "smelt: error: {}\n", filesystem_error_message(e));
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "smelt: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "smelt: internal error: {}\n", e.what());
    return 3;
  }
  return 0;
}
