// Terminal progress bar and plain progress lines.
#include "cli/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include "cli/common.h"

namespace smelt::cli {

ProgressReporter::ProgressReporter(bool quiet)
    : quiet_(quiet),
      tty_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

std::string ProgressReporter::line(const exec::Progress& p, double elapsed) const {
  const double frac = p.bytes_total ? double(p.bytes_done) / double(p.bytes_total) : 1.0;
  const double rate = elapsed > 0 ? double(p.bytes_done) / elapsed : 0;
  const double eta = rate > 0 ? double(p.bytes_total - p.bytes_done) / rate : 0;
  std::string bar;
  if (tty_) {
    const int width = 24, filled = static_cast<int>(frac * width);
    bar = "[" + std::string(filled, '#') + std::string(width - filled, ' ') + "] ";
  }
  return fmt::format("{}{:3.0f}%  {}/{} tensors  {}/{}  {}/s  ETA {:.0f}s", bar, frac * 100,
                     p.tensors_done, p.tensors_total, human_bytes(p.bytes_done),
                     human_bytes(p.bytes_total), human_bytes(static_cast<uint64_t>(rate)), eta);
}

void ProgressReporter::update(const exec::Progress& p) {
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (tty_) {
    if (since < 0.1 && p.tensors_done != p.tensors_total) return;
    fmt::print(stderr, "\r\033[K{}", line(p, elapsed));
  } else {
    if (since < 5.0) return;
    fmt::print(stderr, "{}\n", line(p, elapsed));
  }
  last_ = now;
}

void ProgressReporter::finish(const exec::Progress& p) {
  if (quiet_) return;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) fmt::print(stderr, "\r\033[K");
  fmt::print(stderr, "merged {} tensors, {} in {:.2f}s ({}/s)\n", p.tensors_total,
             human_bytes(p.bytes_total), elapsed,
             human_bytes(elapsed > 0 ? static_cast<uint64_t>(double(p.bytes_total) / elapsed) : 0));
}

}  // namespace smelt::cli
