// POSIX file helpers shared by the writers.
#include "smelt/io/file_util.h"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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

AtomicFile::AtomicFile(std::filesystem::path path, uint64_t size) : path_(std::move(path)) {
  temp_path_ = temp_name_for(path_);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", temp_path_.string(), errno_text());
  // Sizing the file up front makes every byte not written (padding) zero.
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    const std::string why = errno_text();
    ::close(fd_);
    fd_ = -1;
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
    fail("{}: cannot size file to {} bytes: {} (is the disk full?)", temp_path_.string(), size,
         why);
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
  }
}

void AtomicFile::pwrite(const void* data, uint64_t size, uint64_t offset) {
  pwrite_all(fd_, data, size, offset, temp_path_);
}

void AtomicFile::start_writeback() { ::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE); }

void AtomicFile::commit() {
  if (committed_) return;
  if (::fdatasync(fd_) != 0) fail("{}: fdatasync failed: {}", temp_path_.string(), errno_text());
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  std::filesystem::rename(temp_path_, path_, ec);
  if (ec) fail("{}: cannot rename into place: {}", path_.string(), ec.message());
  committed_ = true;
  fsync_dir(path_.parent_path());
}

}  // namespace smelt::io
