// Small POSIX file helpers shared by the writers: full pwrite, directory fsync, temporary names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace smelt::io {

// strerror(errno) as a string.
std::string errno_text();
// Writes all `size` bytes at `offset` (retrying short writes); throws smelt::Error naming `path`.
void pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset,
                const std::filesystem::path& path);
// fsyncs a directory so a rename inside it is durable (best effort).
void fsync_dir(const std::filesystem::path& dir);
// A hidden, unique temporary name beside `path` (".<name>.smelt-tmp-XXXXXXXX").
std::filesystem::path temp_name_for(const std::filesystem::path& path);

// A file of known size written under a hidden temporary name beside `path` (from any thread, at
// any offset) and renamed into place by commit() after fdatasync, so a partial file never
// appears under `path`. Destroyed uncommitted, it removes the temporary file.
class AtomicFile {
 public:
  AtomicFile(std::filesystem::path path, uint64_t size);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Writes `size` bytes at `offset`. Thread-safe.
  void pwrite(const void* data, uint64_t size, uint64_t offset);
  // Starts writeback of the dirty pages written so far (asynchronous), so that commit() has
  // little left to flush and disk writes overlap computing.
  void start_writeback();
  // fdatasync, rename into place, fsync the folder. Idempotent.
  void commit();
  bool committed() const { return committed_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace smelt::io
