// Ctrl-C and SIGTERM during a merge (docs/reliability.md): the first signal asks the running
// work to stop; workers notice between chunks, the merge unwinds, and every temporary file is
// removed before the process exits with 128 + the signal number. Outside interruptible work, or
// on a second signal, the process exits at once (temporaries left then are removed by the next
// run on the same output; see io/output_claim.h).
#pragma once

#include <atomic>

#include "smelt/error.h"

namespace smelt {

// Thrown by check_interrupted(); the CLI exits with exit_code().
class Interrupted : public Error {
 public:
  explicit Interrupted(int signal);
  int signal() const { return signal_; }
  int exit_code() const { return 128 + signal_; }

 private:
  int signal_;
};

// Call once at the start of main(), before any thread starts: blocks SIGINT, SIGTERM and SIGHUP
// in every thread and handles them on a thread of their own.
void install_interrupt_handler();

// While one of these lives, a first signal asks the work to stop instead of exiting at once.
class InterruptibleScope {
 public:
  InterruptibleScope();
  ~InterruptibleScope();
  InterruptibleScope(const InterruptibleScope&) = delete;
  InterruptibleScope& operator=(const InterruptibleScope&) = delete;
};

// The signal asked for, or 0.
int interrupt_signal();
// Throws Interrupted when a signal asked the work to stop.
inline void check_interrupted() {
  if (const int s = interrupt_signal()) throw Interrupted(s);
}

// For tests: ask the work to stop as if `signal` arrived (0 clears the request).
void request_interrupt(int signal);

}  // namespace smelt
