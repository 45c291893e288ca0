// POSIX file helpers shared by the writers.
#include "smelt/io/file_util.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "smelt/error.h"

namespace smelt::io {

std::string errno_text() { return std::strerror(errno); }

void pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset,
                const std::filesystem::path& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t w =
        ::pwrite(fd, p, std::min<uint64_t>(size, 1u << 30), static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {} (is the disk full?)", path.string(), errno_text());
    }
    p += w;
    size -= static_cast<uint64_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

void fsync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::filesystem::path temp_name_for(const std::filesystem::path& path) {
  std::random_device rd;
  return path.parent_path() / fmt::format(".{}.smelt-tmp-{:08x}", path.filename().string(), rd());
}

}  // namespace smelt::io
