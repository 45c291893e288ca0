// Progress reporting on stderr: a redrawn bar on a terminal, plain periodic lines otherwise.
// Rate and ETA come from bytes written, not tensor counts.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "smelt/exec/executor.h"

namespace smelt::cli {

class ProgressReporter {
 public:
  // quiet: print nothing.
  explicit ProgressReporter(bool quiet);
  void update(const exec::Progress& p);
  // Ends the bar line (prints a final summary line).
  void finish(const exec::Progress& p);

 private:
  std::string line(const exec::Progress& p, double elapsed) const;

  bool quiet_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace smelt::cli
