// Entry point of the `smelt` binary: dispatches to one verb per file and turns errors into
// messages and exit codes.
#include <fmt/core.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>

#include "cli/common.h"
#include "smelt/error.h"
#include "smelt/interrupt.h"
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

int main(int argc, char** argv) {
  smelt::install_interrupt_handler();
  CLI::App app{
      "smelt: merge neural network models (mergekit-compatible), fast and in bounded memory.\n\n"
      "Examples:\n"
      "  smelt merge config.yml ./merged      run a mergekit YAML config\n"
      "  smelt plan config.yml                 check a config and show what a merge would do\n"
      "  smelt inspect ./model                 list a model's tensors\n",
      "smelt"};
  app.set_version_flag("--version", std::string("smelt ") + SMELT_VERSION);
  app.require_subcommand(1);
  smelt::cli::add_inspect(app);
  smelt::cli::add_merge(app);
  smelt::cli::add_plan(app);
  smelt::cli::add_dev(app);
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
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "smelt: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "smelt: internal error: {}\n", e.what());
    return 3;
  }
  return 0;
}
