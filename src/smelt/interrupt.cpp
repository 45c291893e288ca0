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

void signal_loop(sigset_t set) {
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (g_scopes.load() > 0 && g_signal.load() == 0) {
      g_signal.store(sig);
      const char msg[] = "\nsmelt: stopping (press Ctrl-C again to quit at once)\n";
      if (::write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        // Nothing to do: stderr is gone.
      }
      continue;
    }
    ::_exit(128 + sig);
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
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(signal_loop, set).detach();
}

InterruptibleScope::InterruptibleScope() { g_scopes.fetch_add(1); }
InterruptibleScope::~InterruptibleScope() { g_scopes.fetch_sub(1); }

int interrupt_signal() { return g_signal.load(std::memory_order_relaxed); }

void request_interrupt(int signal) { g_signal.store(signal); }

}  // namespace smelt
