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

}  // namespace smelt::io
