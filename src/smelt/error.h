// Error type used across smelt: every failure a user can cause carries a message that names the
// file, tensor or YAML key involved and what to do about it.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace smelt {

// An error caused by the user's input (a file, a config, a flag). The CLI prints what() and exits
// with a non-zero code; it is never a crash.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace smelt
