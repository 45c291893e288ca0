// The central directory of a zip archive (PyTorch's .bin container, docs/pytorch.md): entry names
// and the byte ranges of their stored data, every field bounds-checked against the file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::io {

// Most entries, and the largest central directory (bytes), an archive may have.
inline constexpr uint64_t kMaxZipEntries = 1'000'000;
inline constexpr uint64_t kMaxZipDirectoryBytes = 256ull << 20;

// One stored (uncompressed) entry of a zip archive.
struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // absolute offset of the entry's first data byte
  uint64_t size = 0;         // data bytes (stored: compressed == uncompressed)
};

// Reads `size` bytes at absolute offset `pos` of the archive into `dst` (throws on failure).
using ZipReadFn = std::function<void(void* dst, uint64_t size, uint64_t pos)>;

// Parses the end-of-central-directory record (ZIP64 included), the central directory and each
// entry's local header of an archive of `file_size` bytes read through `read`. Guarantees every
// returned entry's data lies inside the file and names are unique. Throws smelt::Error naming
// `label` (the file), the entry and the offset for anything else: a compressed or encrypted
// entry, a multi-disk archive, a field pointing outside the file, more than kMaxZipEntries.
std::vector<ZipEntry> read_zip_directory(const ZipReadFn& read, uint64_t file_size,
                                         const std::string& label);

}  // namespace smelt::io
