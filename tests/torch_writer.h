// Hand-built PyTorch checkpoints for tests: pickles written opcode by opcode, zip archives as
// torch.save writes them (docs/pytorch.md).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace smelt::testing {

// A pickle written opcode by opcode.
struct Pickle {
  std::string b = std::string("\x80\x02", 2);
  Pickle& op(char c) {
    b += c;
    return *this;
  }
  Pickle& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b += static_cast<char>((v >> (8 * i)) & 0xff);
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    b += "c" + module + "\n" + name + "\n";
    return *this;
  }
  Pickle& str(const std::string& s) {
    op('X').u32(static_cast<uint32_t>(s.size()));
    b += s;
    return *this;
  }
  Pickle& num(uint64_t v) {
    if (v < 256) return op('K').op(static_cast<char>(v));
    if (v < (1u << 31)) return op('J').u32(static_cast<uint32_t>(v));
    op('\x8a').op(8);
    for (int i = 0; i < 8; ++i) b += static_cast<char>((v >> (8 * i)) & 0xff);
    return *this;
  }
  Pickle& ints(const std::vector<uint64_t>& v) {
    op('(');
    for (uint64_t x : v) num(x);
    return op('t');
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
};

// One tensor of a hand-built state dict.
struct BinTensor {
  std::string name;
  std::string storage_class;  // "FloatStorage"
  std::string key;            // storage record
  uint64_t storage_numel = 0;
  uint64_t offset = 0;
  std::vector<uint64_t> shape, stride;
};

// The data.pkl of a zip-format state dict of `tensors`.
inline std::string state_dict_pickle(const std::vector<BinTensor>& tensors) {
  Pickle p;
  p.ordered_dict().op('(');
  for (const BinTensor& t : tensors) {
    p.str(t.name).global("torch._utils", "_rebuild_tensor_v2").op('(');
    p.op('(').str("storage").global("torch", t.storage_class).str(t.key).str("cpu");
    p.num(t.storage_numel).op('t').op('Q');
    p.num(t.offset).ints(t.shape).ints(t.stride).op('\x89').ordered_dict().op('t').op('R');
  }
  p.op('u').op('.');
  return p.b;
}

inline void le(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
}

// A zip archive of stored entries; `zip64` writes the ZIP64 extra fields and end records.
inline std::string zip(const std::vector<std::pair<std::string, std::string>>& entries,
                       bool zip64 = false, uint16_t method = 0) {
  std::string out, dir;
  for (const auto& [name, data] : entries) {
    const uint64_t local = out.size();
    le(out, 0x04034b50, 4), le(out, 20, 2), le(out, 0, 2), le(out, method, 2), le(out, 0, 4);
    le(out, 0, 4), le(out, data.size(), 4), le(out, data.size(), 4), le(out, name.size(), 2);
    le(out, 0, 2);
    out += name + data;
    std::string extra;
    if (zip64)
      le(extra, 1, 2), le(extra, 24, 2), le(extra, data.size(), 8), le(extra, data.size(), 8),
          le(extra, local, 8);
    const uint64_t big = zip64 ? 0xFFFFFFFF : 0;
    le(dir, 0x02014b50, 4), le(dir, 45, 2), le(dir, 45, 2), le(dir, 0, 2), le(dir, method, 2);
    le(dir, 0, 4), le(dir, 0, 4), le(dir, big ? big : data.size(), 4);
    le(dir, big ? big : data.size(), 4), le(dir, name.size(), 2), le(dir, extra.size(), 2);
    le(dir, 0, 2), le(dir, 0, 2), le(dir, 0, 2), le(dir, 0, 4), le(dir, big ? big : local, 4);
    dir += name + extra;
  }
  const uint64_t dir_offset = out.size();
  out += dir;
  if (zip64) {
    const uint64_t z = out.size();
    le(out, 0x06064b50, 4), le(out, 44, 8), le(out, 45, 2), le(out, 45, 2), le(out, 0, 4);
    le(out, 0, 4), le(out, entries.size(), 8), le(out, entries.size(), 8), le(out, dir.size(), 8);
    le(out, dir_offset, 8);
    le(out, 0x07064b50, 4), le(out, 0, 4), le(out, z, 8), le(out, 1, 4);
  }
  le(out, 0x06054b50, 4), le(out, 0, 2), le(out, 0, 2);
  le(out, zip64 ? 0xFFFF : entries.size(), 2), le(out, zip64 ? 0xFFFF : entries.size(), 2);
  le(out, zip64 ? 0xFFFFFFFF : dir.size(), 4), le(out, zip64 ? 0xFFFFFFFF : dir_offset, 4);
  le(out, 0, 2);
  return out;
}

// A torch.save-like archive holding `pickle` and the storage records.
inline std::string archive(const std::string& pickle,
                           const std::vector<std::pair<std::string, std::string>>& storages = {},
                           bool zip64 = false) {
  std::vector<std::pair<std::string, std::string>> e = {{"archive/data.pkl", pickle}};
  for (const auto& [key, bytes] : storages) e.emplace_back("archive/data/" + key, bytes);
  e.emplace_back("archive/version", "3\n");
  return zip(e, zip64);
}

}  // namespace smelt::testing
