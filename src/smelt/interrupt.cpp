// See interrupt.h.
#include "smelt/interrupt.h"

#include <fmt/format.h>
#include <pthread.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <thread>

namespace smelt {
namespace {

std::atomic<int> g_signal{0};
std::atomic<int> g_scopes{0};

// What a signal does: inside an InterruptibleScope the first one asks the work to stop (and says
// so); otherwise, or the second time, the process exits at once. Async-signal-safe (lock-free
// atomics, write, _exit), so it also runs as a signal handler.
void on_signal(int sig) {
  int none = 0;
  if (g_scopes.load() > 0 && g_signal.compare_exchange_strong(none, sig)) {
    const char msg[] = "\nsmelt: stopping (press Ctrl-C again to quit at once)\n";
    if (::write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
      // Nothing to do: stderr is gone.
    }
    return;
  }
  ::_exit(128 + sig);
}

void signal_loop(sigset_t set) {
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    on_signal(sig);
  }
}

}  // namespace

Interrupted::Interrupted(int signal)
    : Error(fmt::format("interrupted by {}; nothing was written at the output and temporary files "
                        "were removed",
                        signal == SIGINT ? "Ctrl-C" : strsignal(signal))),
      signal_(signal) {}

void install_interrupt_handler() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  // Threads started before main (OpenBLAS starts its pool when the library loads) do not block
  // the signals, and the kernel may deliver one to them: a handler makes that thread do what the
  // signal thread does, instead of the default action (a silent exit).
  struct sigaction action {};
  action.sa_handler = on_signal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &action, nullptr);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(signal_loop, set).detach();
}

InterruptibleScope::InterruptibleScope() { g_scopes.fetch_add(1); }
InterruptibleScope::~InterruptibleScope() { g_scopes.fetch_sub(1); }

int interrupt_signal() { return g_signal.load(std::memory_order_relaxed); }

void request_interrupt(int signal) { g_signal.store(signal); }

}  // namespace smelt
