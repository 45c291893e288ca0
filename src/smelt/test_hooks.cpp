// See test_hooks.h.
#include "smelt/test_hooks.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

namespace smelt::test_hooks {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

void reached(std::string_view point) {
  static const std::string crash_at = env("SMELT_TEST_CRASH_AT");
  static const std::string pause_at = env("SMELT_TEST_PAUSE_AT");
  static const std::string pause_file = env("SMELT_TEST_PAUSE_FILE");
  static std::atomic<bool> paused{false};
  if (!crash_at.empty() && crash_at == point) std::raise(SIGKILL);
  if (!pause_at.empty() && pause_at == point && !pause_file.empty() && !paused.exchange(true)) {
    const int fd = ::open(pause_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) ::close(fd);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (::access(pause_file.c_str(), F_OK) == 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

}  // namespace smelt::test_hooks
