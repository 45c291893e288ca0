// Zip central directory parsing for PyTorch .bin archives (docs/pytorch.md, "Zip container").
#include "smelt/io/zip_reader.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "smelt/error.h"

namespace smelt::io {
namespace {

constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint64_t kEocdSize = 22;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kZip64EocdSize = 56;
constexpr uint64_t kCentralSize = 46;
constexpr uint64_t kLocalSize = 30;

uint16_t u16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t u64(const unsigned char* p) {
  return static_cast<uint64_t>(u32(p)) | (static_cast<uint64_t>(u32(p + 4)) << 32);
}

// Printable form of an entry name for messages (names come from the file).
std::string shown(std::string_view name) {
  std::string s;
  for (unsigned char c : name.substr(0, 200)) {
    if (c >= 0x20 && c < 0x7f) {
      s += static_cast<char>(c);
    } else {
      s += fmt::format("\\x{:02x}", c);
    }
  }
  if (name.size() > 200) s += "...";
  return s;
}

}  // namespace

std::vector<ZipEntry> read_zip_directory(const ZipReadFn& read, uint64_t file_size,
                                         const std::string& label) {
  if (file_size < kEocdSize) fail("{}: too small ({} bytes) to be a zip archive", label, file_size);
  // The end record sits in the last 22 + 65535 (comment) bytes; search it backwards.
  const uint64_t tail_size = std::min<uint64_t>(file_size, kEocdSize + 0xFFFF);
  const uint64_t tail_start = file_size - tail_size;
  std::vector<unsigned char> tail(tail_size);
  read(tail.data(), tail_size, tail_start);
  uint64_t eocd = UINT64_MAX;
  for (uint64_t i = tail_size - kEocdSize + 1; i-- > 0;) {
    if (u32(&tail[i]) == kEocdSig && i + kEocdSize + u16(&tail[i + 20]) == tail_size) {
      eocd = i;
      break;
    }
  }
  if (eocd == UINT64_MAX) {
    fail("{}: no zip end-of-central-directory record found; the file is truncated or not a zip",
         label);
  }
  const unsigned char* e = &tail[eocd];
  const uint64_t eocd_abs = tail_start + eocd;
  if (u16(e + 4) != 0 || u16(e + 6) != 0) {
    fail("{}: a multi-disk (split) zip archive is not supported", label);
  }
  uint64_t entries = u16(e + 10);
  uint64_t dir_size = u32(e + 12);
  uint64_t dir_offset = u32(e + 16);
  if (entries == 0xFFFF || dir_size == 0xFFFFFFFF || dir_offset == 0xFFFFFFFF) {
    if (eocd_abs < kZip64LocatorSize) {
      fail("{}: zip end record asks for ZIP64 but there is no room for its locator", label);
    }
    unsigned char loc[kZip64LocatorSize];
    read(loc, sizeof(loc), eocd_abs - kZip64LocatorSize);
    if (u32(loc) != kZip64LocatorSig) {
      fail("{}: ZIP64 locator missing before the end record at offset {}", label, eocd_abs);
    }
    const uint64_t z64 = u64(loc + 8);
    if (z64 > file_size || file_size - z64 < kZip64EocdSize) {
      fail("{}: ZIP64 end record offset {} lies outside the file ({} bytes)", label, z64,
           file_size);
    }
    unsigned char z[kZip64EocdSize];
    read(z, sizeof(z), z64);
    if (u32(z) != kZip64EocdSig) fail("{}: no ZIP64 end record at offset {}", label, z64);
    if (u32(z + 16) != 0 || u32(z + 20) != 0) {
      fail("{}: a multi-disk (split) zip archive is not supported", label);
    }
    entries = u64(z + 32);
    dir_size = u64(z + 40);
    dir_offset = u64(z + 48);
  }
  if (entries > kMaxZipEntries) {
    fail("{}: zip archive claims {} entries, more than the limit of {}", label, entries,
         kMaxZipEntries);
  }
  if (dir_offset > file_size || dir_size > file_size - dir_offset) {
    fail("{}: zip central directory ({} bytes at offset {}) lies outside the file ({} bytes)",
         label, dir_size, dir_offset, file_size);
  }
  if (dir_size > kMaxZipDirectoryBytes) {
    fail("{}: zip central directory of {} bytes exceeds the limit of {}", label, dir_size,
         kMaxZipDirectoryBytes);
  }
  if (entries * kCentralSize > dir_size) {
    fail("{}: zip central directory of {} bytes cannot hold the {} entries it claims", label,
         dir_size, entries);
  }
  std::vector<unsigned char> dir(dir_size);
  read(dir.data(), dir_size, dir_offset);

  std::vector<ZipEntry> out;
  std::set<std::string> names;
  uint64_t pos = 0;
  for (uint64_t n = 0; n < entries; ++n) {
    const uint64_t at = dir_offset + pos;
    if (dir_size - pos < kCentralSize || u32(&dir[pos]) != kCentralSig) {
      fail("{}: zip central directory entry {} at offset {} is truncated or corrupt", label, n, at);
    }
    const unsigned char* h = &dir[pos];
    const uint16_t flags = u16(h + 8);
    const uint16_t method = u16(h + 10);
    uint64_t comp = u32(h + 20);
    uint64_t uncomp = u32(h + 24);
    const uint64_t name_len = u16(h + 28), extra_len = u16(h + 30), comment_len = u16(h + 32);
    const uint16_t disk = u16(h + 34);
    uint64_t local = u32(h + 42);
    if (dir_size - pos - kCentralSize < name_len + extra_len + comment_len) {
      fail("{}: zip central directory entry {} at offset {} runs past the directory", label, n, at);
    }
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(h + kCentralSize), name_len);
    // ZIP64 extended information: the 8-byte fields present are those whose 32-bit field is
    // saturated, in this order.
    const unsigned char* x = h + kCentralSize + name_len;
    for (uint64_t k = 0; k + 4 <= extra_len;) {
      const uint16_t id = u16(x + k), len = u16(x + k + 2);
      if (k + 4 + len > extra_len) {
        fail("{}: zip entry '{}': extra field runs past its end", label, shown(entry.name));
      }
      if (id == 0x0001) {
        const unsigned char* f = x + k + 4;
        uint64_t left = len;
        auto take = [&](uint64_t* v) {
          if (left < 8) {
            fail("{}: zip entry '{}': ZIP64 extra field too short", label, shown(entry.name));
          }
          *v = u64(f);
          f += 8;
          left -= 8;
        };
        if (uncomp == 0xFFFFFFFF) take(&uncomp);
        if (comp == 0xFFFFFFFF) take(&comp);
        if (local == 0xFFFFFFFF) take(&local);
      }
      k += 4 + len;
    }
    pos += kCentralSize + name_len + extra_len + comment_len;
    if (disk != 0 && disk != 0xFFFF) {
      fail("{}: zip entry '{}' is on disk {}; split archives are not supported", label,
           shown(entry.name), disk);
    }
    if (flags & 0x1) {
      fail("{}: zip entry '{}' is encrypted; PyTorch checkpoints never are", label,
           shown(entry.name));
    }
    if (method != 0) {
      fail(
          "{}: zip entry '{}' is compressed (method {}); smelt reads only stored entries, as "
          "torch.save writes them. Re-save the checkpoint with torch.save",
          label, shown(entry.name), method);
    }
    if (comp != uncomp) {
      fail("{}: zip entry '{}' is stored but its sizes differ ({} vs {})", label, shown(entry.name),
           comp, uncomp);
    }
    if (local > file_size || file_size - local < kLocalSize) {
      fail("{}: zip entry '{}': local header offset {} lies outside the file ({} bytes)", label,
           shown(entry.name), local, file_size);
    }
    unsigned char lh[kLocalSize];
    read(lh, sizeof(lh), local);
    if (u32(lh) != kLocalSig) {
      fail("{}: zip entry '{}': no local header at offset {}", label, shown(entry.name), local);
    }
    // The data follows the local header's own name and extra field (torch pads the extra field
    // to align data to 64 bytes), whose lengths may differ from the central directory's.
    const uint64_t data = local + kLocalSize + u16(lh + 26) + u16(lh + 28);
    if (data > file_size || uncomp > file_size - data) {
      fail("{}: zip entry '{}': {} data bytes at offset {} run past the end of the file ({} bytes)",
           label, shown(entry.name), uncomp, data, file_size);
    }
    if (!names.insert(entry.name).second) {
      fail("{}: zip entry '{}' appears twice", label, shown(entry.name));
    }
    entry.data_offset = data;
    entry.size = uncomp;
    out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace smelt::io
