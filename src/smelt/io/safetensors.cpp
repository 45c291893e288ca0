// safetensors header validation, pread-based reading, and the streaming (sharded) writer.
#include "smelt/io/safetensors.h"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::io {
namespace {

using nlohmann::json;

// JSON integers above this lose precision in common readers (and the schema caps at 2^48-1).
constexpr uint64_t kMaxJsonInteger = (uint64_t{1} << 53) - 1;

// Returns the offset of the first byte that breaks UTF-8 well-formedness, or npos.
size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t min;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

uint64_t checked_numel(const std::vector<uint64_t>& shape, bool* overflow) {
  uint64_t n = 1;
  *overflow = false;
  for (uint64_t d : shape) {
    if (d != 0 && n > UINT64_MAX / d) {
      *overflow = true;
      return 0;
    }
    n *= d;
  }
  return n;
}

// Reads a JSON value that must be a non-negative integer within kMaxJsonInteger.
uint64_t json_uint(const json& v, const std::string& label, const std::string& tensor,
                   const char* what) {
  if (!v.is_number_integer() && !v.is_number_unsigned()) {
    fail("{}: tensor '{}': {} must be non-negative integers, got {}", label, tensor, what,
         v.dump());
  }
  if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0) {
    fail("{}: tensor '{}': {} must be non-negative integers, got {}", label, tensor, what,
         v.dump());
  }
  const uint64_t x = v.get<uint64_t>();
  if (x > kMaxJsonInteger) {
    fail("{}: tensor '{}': {} value {} exceeds 2^53-1", label, tensor, what, x);
  }
  return x;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(std::string_view header_json, uint64_t file_size,
                                           const std::string& label) {
  if (const size_t bad = find_invalid_utf8(header_json); bad != std::string_view::npos) {
    fail(
        "{}: header is not valid UTF-8 (bad byte at header offset {}); the file is corrupt or "
        "not a safetensors file",
        label, bad);
  }
  // Parse while recording object keys per nesting level, to reject duplicates that a plain
  // parse would silently collapse.
  std::vector<std::set<std::string>> keys_at_depth;
  std::string duplicate;
  int duplicate_depth = -1;
  json root;
  try {
    root = json::parse(header_json.begin(), header_json.end(),
                       [&](int depth, json::parse_event_t event, json& parsed) {
                         if (event == json::parse_event_t::object_start) {
                           if (static_cast<size_t>(depth) >= keys_at_depth.size()) {
                             keys_at_depth.resize(static_cast<size_t>(depth) + 1);
                           }
                           keys_at_depth[static_cast<size_t>(depth)].clear();
                         } else if (event == json::parse_event_t::key && duplicate.empty()) {
                           const size_t level = static_cast<size_t>(depth) - 1;
                           if (level < keys_at_depth.size() &&
                               !keys_at_depth[level].insert(parsed.get<std::string>()).second) {
                             duplicate = parsed.get<std::string>();
                             duplicate_depth = depth;
                           }
                         }
                         return true;
                       });
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON ({}); the file is corrupt or not a safetensors file", label,
         e.what());
  }
  if (!duplicate.empty()) {
    if (duplicate_depth <= 1) {
      fail("{}: tensor '{}' appears twice in the header (duplicate keys are not allowed)", label,
           duplicate);
    }
    fail("{}: duplicate key '{}' inside a header entry", label, duplicate);
  }
  if (!root.is_object()) fail("{}: header must be a JSON object, got {}", label, root.type_name());

  SafetensorsHeader header;
  header.data_start = 8 + header_json.size();
  for (auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: __metadata__ must be an object of strings", label);
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) {
          fail("{}: __metadata__ key '{}' must map to a string, got {}", label, k, v.type_name());
        }
        header.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) fail("{}: tensor '{}': entry must be an object", label, name);
    for (auto& [k, v] : entry.items()) {
      if (k != "dtype" && k != "shape" && k != "data_offsets") {
        fail("{}: tensor '{}': unexpected key '{}' (only dtype, shape, data_offsets are allowed)",
             label, name, k);
      }
    }
    for (const char* k : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(k)) fail("{}: tensor '{}': missing key '{}'", label, name, k);
    }
    TensorInfo t;
    t.name = name;
    const json& dt = entry["dtype"];
    if (!dt.is_string()) fail("{}: tensor '{}': dtype must be a string", label, name);
    auto parsed = parse_dtype(dt.get<std::string>());
    if (!parsed) {
      fail("{}: tensor '{}': unknown dtype '{}'", label, name, dt.get<std::string>());
    }
    t.dtype = *parsed;
    const json& shape = entry["shape"];
    if (!shape.is_array()) fail("{}: tensor '{}': shape must be an array", label, name);
    for (const json& d : shape) t.shape.push_back(json_uint(d, label, name, "shape entries"));
    const json& offs = entry["data_offsets"];
    if (!offs.is_array() || offs.size() != 2) {
      fail("{}: tensor '{}': data_offsets must be [begin, end]", label, name);
    }
    const uint64_t begin = json_uint(offs[0], label, name, "data_offsets");
    const uint64_t end = json_uint(offs[1], label, name, "data_offsets");
    if (end < begin) {
      fail("{}: tensor '{}': data_offsets end {} is before begin {}", label, name, end, begin);
    }
    bool overflow = false;
    const uint64_t numel = checked_numel(t.shape, &overflow);
    if (overflow) fail("{}: tensor '{}': shape element count overflows", label, name);
    auto bytes = dtype_bytes(t.dtype, numel);
    if (!bytes) {
      fail("{}: tensor '{}': {} elements of {} are not a whole number of bytes or overflow", label,
           name, numel, dtype_name(t.dtype));
    }
    if (*bytes != end - begin) {
      fail("{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets span {}", label, name,
           fmt::format("[{}]", fmt::join(t.shape, ", ")), dtype_name(t.dtype), *bytes, end - begin);
    }
    t.offset = begin;  // relative for now
    t.nbytes = end - begin;
    header.tensors.push_back(std::move(t));
  }
  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
                   });
  uint64_t expected = 0;
  for (TensorInfo& t : header.tensors) {
    if (t.offset != expected) {
      fail(
          "{}: tensor '{}': data starts at byte {} but the previous tensor ends at {} ({}); "
          "tensors must tile the data buffer with no gaps or overlaps",
          label, t.name, t.offset, expected, t.offset > expected ? "gap" : "overlap");
    }
    expected += t.nbytes;
    t.offset += header.data_start;
  }
  if (header.data_start + expected != file_size) {
    if (header.data_start + expected > file_size) {
      fail("{}: file is truncated: the header describes {} data bytes but only {} remain", label,
           expected, file_size - std::min(file_size, header.data_start));
    }
    fail("{}: {} trailing bytes after the last tensor (not allowed)", label,
         file_size - header.data_start - expected);
  }
  return header;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const std::string label = path.string();
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) fail("{}: cannot open: {}", label, errno_text());
  struct stat st {};
  if (::fstat(f->fd_, &st) != 0) fail("{}: cannot stat: {}", label, errno_text());
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file", label);
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  if (f->file_size_ < 8) {
    fail("{}: file is {} bytes, too small for a safetensors header (8-byte length + JSON)", label,
         f->file_size_);
  }
  unsigned char len_bytes[8];
  if (pread_full(f->fd_, len_bytes, 8, 0) != 8) {
    fail("{}: cannot read header length: {}", label, errno_text());
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > kMaxHeaderBytes) {
    fail(
        "{}: header length {} exceeds the {}-byte ceiling; the file is corrupt or not a "
        "safetensors file",
        label, n, kMaxHeaderBytes);
  }
  if (n > f->file_size_ - 8) {
    fail(
        "{}: header length {} is beyond the end of the file ({} bytes); the file is truncated or "
        "not a safetensors file",
        label, n, f->file_size_);
  }
  std::string header(n, '\0');
  if (const int64_t r = pread_full(f->fd_, header.data(), n, 8); r != static_cast<int64_t>(n)) {
    fail("{}: cannot read header: {}", label, r < 0 ? errno_text() : "short read");
  }
  f->header_ = parse_safetensors_header(header, f->file_size_, label);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) {
    f->by_name_.emplace(f->header_.tensors[i].name, i);
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

void SafetensorsFile::read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const {
  if (offset > t.nbytes || size > t.nbytes - offset) {
    fail("{}: tensor '{}': read of {} bytes at {} is outside its {} bytes", path_.string(), t.name,
         size, offset, t.nbytes);
  }
  pread_exact(fd_, dst, size, t.offset + offset, path_, t.name);
}

uint64_t TensorSpec::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t TensorSpec::nbytes() const {
  bool overflow = false;
  const uint64_t n = checked_numel(shape, &overflow);
  auto b = overflow ? std::nullopt : dtype_bytes(dtype, n);
  if (!b) fail("tensor '{}': size in bytes overflows or is fractional", name);
  return *b;
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata,
                                     AtomicFileOptions file_options)
    : path_(std::move(path)), specs_(std::move(tensors)) {
  // Larger element types first (safetensors' own order) so every tensor is naturally aligned;
  // otherwise the caller's order is kept.
  std::vector<size_t> order(specs_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_bits(specs_[a].dtype) > dtype_bits(specs_[b].dtype);
  });
  std::string body = "{";
  {
    json meta = json::object();
    meta["format"] = "pt";
    for (const auto& [k, v] : metadata) meta[k] = v;
    body += "\"__metadata__\":" + meta.dump();
  }
  std::vector<uint64_t> relative(specs_.size());
  uint64_t pos = 0;
  for (size_t i : order) {
    const TensorSpec& s = specs_[i];
    if (!by_name_.emplace(s.name, i).second)
      fail("{}: tensor '{}' given twice", path_.string(), s.name);
    relative[i] = pos;
    const uint64_t nb = s.nbytes();
    json e = json::object();
    e["dtype"] = std::string(dtype_name(s.dtype));
    e["shape"] = s.shape;
    e["data_offsets"] = {pos, pos + nb};
    body += "," + json(s.name).dump() + ":" + e.dump();
    pos += nb;
  }
  body += "}";
  // Pad with spaces so the data buffer starts 8-aligned (as the reference writer does).
  while ((8 + body.size()) % 8 != 0) body += ' ';
  const uint64_t data_start = 8 + body.size();
  offsets_.resize(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) offsets_[i] = data_start + relative[i];
  {
    std::vector<std::string> names;
    std::vector<uint64_t> sizes;
    for (const TensorSpec& s : specs_) names.push_back(s.name), sizes.push_back(s.nbytes());
    ledger_ = std::make_unique<WriteLedger>(path_.string(), std::move(names), std::move(sizes));
  }

  file_ = std::make_unique<AtomicFile>(path_, data_start + pos, std::move(file_options));
  // Declaring every region lets the file write each block as soon as its bytes are in.
  file_->expect(0, data_start);
  for (size_t i = 0; i < specs_.size(); ++i) file_->expect(offsets_[i], specs_[i].nbytes());
  unsigned char len[8];
  uint64_t n = body.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  file_->pwrite(len, 8, 0);
  file_->pwrite(body.data(), body.size(), 8);
}

SafetensorsWriter::~SafetensorsWriter() = default;

std::optional<size_t> SafetensorsWriter::index_of(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

void SafetensorsWriter::write(size_t index, uint64_t offset, const void* data, uint64_t size) {
  ledger_->record(index, offset, size);
  file_->pwrite(data, size, offsets_[index] + offset);
  // Start writing dirty pages to disk as we go, so the final fdatasync has little left to do and
  // disk writes overlap reading and merging.
  constexpr uint64_t kWritebackEvery = uint64_t{64} << 20;
  if (since_writeback_.fetch_add(size, std::memory_order_relaxed) + size >= kWritebackEvery) {
    since_writeback_.store(0, std::memory_order_relaxed);
    file_->start_writeback();
  }
}

void SafetensorsWriter::finish() {
  if (finished_) return;
  ledger_->check_complete();
  file_->commit();
  finished_ = true;
}

uint64_t parse_shard_size(std::string_view text) {
  std::string_view digits = text;
  uint64_t mult = 1;
  if (!digits.empty()) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(digits.back())));
    if (c == 'k' || c == 'm' || c == 'b') {
      mult = c == 'k' ? 1'000 : c == 'm' ? 1'000'000 : 1'000'000'000;
      digits.remove_suffix(1);
    }
  }
  uint64_t v = 0;
  bool ok = !digits.empty() && digits.size() <= 18;
  for (char c : digits)
    ok = ok && c >= '0' && c <= '9', v = v * 10 + static_cast<uint64_t>(c - '0');
  if (!ok || v == 0 || v > UINT64_MAX / mult) {
    fail(
        "--out-shard-size: '{}' is not a size; use a positive number of bytes with an optional "
        "k/m/b suffix (decimal), e.g. 5B or 500M",
        text);
  }
  return v * mult;
}

ShardLayout plan_shards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_bytes) {
  ShardLayout layout;
  uint64_t current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t nb = tensors[i].nbytes();
    if (layout.shards.empty() ||
        (!layout.shards.back().empty() && current + nb > max_shard_bytes)) {
      layout.shards.emplace_back();
      current = 0;
    }
    layout.shards.back().push_back(i);
    current += nb;
  }
  if (layout.shards.empty()) layout.shards.emplace_back();
  layout.file_names = shard_file_names(layout.shards.size());
  return layout;
}

std::vector<std::string> shard_file_names(size_t n) {
  std::vector<std::string> names;
  for (size_t i = 0; i < n; ++i) {
    names.push_back(n == 1 ? std::string("model.safetensors")
                           : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n));
  }
  return names;
}

ShardedWriter::ShardedWriter(const std::filesystem::path& dir, std::vector<TensorSpec> tensors,
                             uint64_t max_shard_bytes,
                             const std::map<std::string, std::string>& metadata,
                             AtomicFileOptions file_options)
    : ShardedWriter(dir, tensors, plan_shards(tensors, max_shard_bytes), metadata,
                    std::move(file_options)) {}

ShardedWriter::ShardedWriter(const std::filesystem::path& dir, std::vector<TensorSpec> tensors,
                             ShardLayout layout, const std::map<std::string, std::string>& metadata,
                             AtomicFileOptions file_options)
    : dir_(dir), tensors_(std::move(tensors)), layout_(std::move(layout)) {
  location_.assign(tensors_.size(), {SIZE_MAX, 0});
  for (const auto& shard : layout_.shards) {
    for (size_t i : shard) {
      if (i >= tensors_.size() || location_[i].first != SIZE_MAX) {
        fail("internal: shard layout places tensor {} twice or out of range", i);
      }
      location_[i].first = 0;
    }
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (location_[i].first == SIZE_MAX) fail("internal: shard layout misses tensor {}", i);
  }
  for (size_t s = 0; s < layout_.shards.size(); ++s) {
    std::vector<TensorSpec> specs;
    for (size_t k = 0; k < layout_.shards[s].size(); ++k) {
      const size_t i = layout_.shards[s][k];
      specs.push_back(tensors_[i]);
      location_[i] = {s, k};
    }
    writers_.push_back(std::make_unique<SafetensorsWriter>(
        dir_ / layout_.file_names[s], std::move(specs), metadata, file_options));
  }
}

void ShardedWriter::write(size_t index, uint64_t offset, const void* data, uint64_t size) {
  const auto [s, k] = location_.at(index);
  writers_[s]->write(k, offset, data, size);
}

void ShardedWriter::finish() {
  for (auto& w : writers_) w->finish();
  if (layout_.shards.size() > 1) {
    json index;
    uint64_t total = 0;
    json weight_map = json::object();
    for (size_t s = 0; s < layout_.shards.size(); ++s) {
      for (size_t i : layout_.shards[s]) {
        total += tensors_[i].nbytes();
        weight_map[tensors_[i].name] = layout_.file_names[s];
      }
    }
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    write_file_atomic(dir_ / "model.safetensors.index.json", index.dump(2) + "\n");
  }
}

void write_file_atomic(const std::filesystem::path& path, std::string_view text) {
  const auto temp = temp_name_for(path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  // Errors name `path`, never the hidden temporary.
  if (fd < 0) fail("{}: cannot create: {}", path.string(), errno_text());
  try {
    pwrite_all(fd, text.data(), text.size(), 0, path);
    if (::fdatasync(fd) != 0) fail("{}: fdatasync failed: {}", path.string(), errno_text());
  } catch (...) {
    ::close(fd);
    std::filesystem::remove(temp);
    throw;
  }
  ::close(fd);
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::filesystem::remove(temp);
    fail("{}: cannot rename into place: {}", path.string(), ec.message());
  }
}

}  // namespace smelt::io
