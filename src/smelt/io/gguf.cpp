// GGUF parsing (every length checked against the bytes that remain, as ggml's gguf.cpp does),
// split-model discovery, and the streaming GGUF writer.
#include "smelt/io/gguf.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <random>
#include <unordered_set>

#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::io {

static_assert(std::endian::native == std::endian::little,
              "GGUF integers are little-endian; a big-endian port needs byte swaps here");

namespace {

constexpr uint32_t kGgufTypeCount = 13;
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;          // key length, 1-byte key, tag, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset
constexpr uint32_t kMaxDims = 4;
constexpr size_t kReadChunk = 1 << 20;

// Bytes of one scalar of `t`; 0 for string and array.
uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    default:
      return 0;
  }
}

bool valid_type(uint32_t t) { return t < kGgufTypeCount; }

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }

uint64_t pad_to(uint64_t x, uint64_t alignment) {
  return (x + alignment - 1) / alignment * alignment;
}

// Which part of the file an error is about, formatted only when an error is raised.
struct Where {
  const char* kind;       // "header", "key", "tensor"
  std::string_view name;  // key or tensor name when known
  uint64_t index = 0;     // its position, used when the name is not known yet
  std::string str() const {
    if (std::string_view(kind) == "header") return "header";
    if (!name.empty()) return fmt::format("{} '{}'", kind, name);
    return fmt::format("{} #{}", kind, index);
  }
};

// Printable rendering of up to 4 magic bytes.
std::string show_bytes(const unsigned char* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7F) {
      s += static_cast<char>(p[i]);
    } else {
      s += fmt::format("\\x{:02x}", p[i]);
    }
  }
  return s;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Values.

std::string gguf_type_name(GgufType type) {
  static constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};
  const auto t = static_cast<uint32_t>(type);
  return valid_type(t) ? kNames[t] : fmt::format("type {}", t);
}

namespace gguf_detail {

void append_scalar(std::string& out, GgufType type, const void* v) {
  out.append(static_cast<const char*>(v), scalar_size(type));
}

void append_string(std::string& out, std::string_view s) {
  put_u64(out, s.size());
  out.append(s);
}

GgufValue make_value(GgufType type, GgufType elem, uint64_t count, std::string bytes);

}  // namespace gguf_detail

// Builds values from validated bytes; also the file parser (friend of GgufValue and GgufFile).
class GgufParser {
 public:
  static GgufValue value(GgufType type, GgufType elem, uint64_t count, std::string bytes) {
    GgufValue v;
    v.type_ = type;
    v.elem_type_ = type == GgufType::kArray ? elem : GgufType::kU8;
    v.count_ = type == GgufType::kArray ? count : 1;
    v.bytes_ = std::move(bytes);
    if (type == GgufType::kArray && elem == GgufType::kString) {
      v.string_offsets_.reserve(count);
      uint64_t pos = 0;
      for (uint64_t i = 0; i < count; ++i) {
        v.string_offsets_.push_back(pos);
        pos += 8 + load<uint64_t>(v.bytes_.data() + pos);
      }
    }
    return v;
  }

  GgufParser(int fd, uint64_t size, std::string label)
      : fd_(fd), size_(size), label_(std::move(label)) {}

  void parse(GgufFile& f);

 private:
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void truncated(uint64_t need, const Where& where, std::string_view what) const {
    fail(
        "{}: {}: {} needs {} bytes at offset {} but only {} remain; the file is truncated or "
        "corrupt",
        label_, where.str(), what, need, pos_, remaining());
  }

  // Copies n bytes at the cursor to dst, through a 1 MiB buffer for the many small reads.
  void read(void* dst, uint64_t n, const Where& where, std::string_view what) {
    if (n > remaining()) truncated(n, where, what);
    char* out = static_cast<char*>(dst);
    while (n > 0) {
      if (pos_ < buf_pos_ || pos_ >= buf_pos_ + buf_.size()) {
        if (n >= kReadChunk) {  // large reads bypass the buffer
          pread_all(out, n, where);
          pos_ += n;
          return;
        }
        fill(where);
      }
      const uint64_t in_buf = buf_pos_ + buf_.size() - pos_;
      const uint64_t take = std::min(n, in_buf);
      std::memcpy(out, buf_.data() + (pos_ - buf_pos_), take);
      out += take;
      pos_ += take;
      n -= take;
    }
  }

  void fill(const Where& where) {
    const uint64_t len = std::min<uint64_t>(kReadChunk, remaining());
    buf_.resize(len);
    pread_all(buf_.data(), len, where);
    buf_pos_ = pos_;
  }

  // Reads n bytes at the cursor (without moving it), retrying short reads.
  void pread_all(char* dst, uint64_t n, const Where& where) const {
    const int64_t r = pread_full(fd_, dst, n, pos_);
    if (r != static_cast<int64_t>(n)) {
      fail("{}: {}: read failed: {} (was the file changed while being read?)", label_, where.str(),
           r < 0 ? errno_text() : "unexpected end of file");
    }
  }

  uint32_t u32(const Where& where, std::string_view what) {
    uint32_t v;
    read(&v, 4, where, what);
    return v;
  }
  uint64_t u64(const Where& where, std::string_view what) {
    uint64_t v;
    read(&v, 8, where, what);
    return v;
  }

  // A gguf_string: u64 length (checked against ggml's ceiling and the bytes left) + bytes.
  std::string string(const Where& where, std::string_view what) {
    const uint64_t len = u64(where, what);
    check_string_length(len, where, what);
    std::string s(len, '\0');
    read(s.data(), len, where, what);
    return s;
  }

  void check_string_length(uint64_t len, const Where& where, std::string_view what) const {
    if (len > kGgufMaxStringLength) {
      fail("{}: {}: {} length {} exceeds the {}-byte ceiling; the file is corrupt", label_,
           where.str(), what, len, kGgufMaxStringLength);
    }
    if (len > remaining()) {
      fail(
          "{}: {}: {} length {} exceeds the {} bytes remaining in the file; the file is "
          "truncated or corrupt",
          label_, where.str(), what, len, remaining());
    }
  }

  GgufValue read_value(const Where& where);
  void read_tensor_info(GgufFile& f, uint64_t index, std::vector<uint64_t>& relative);

  int fd_;
  uint64_t size_;
  std::string label_;
  uint64_t pos_ = 0;
  std::vector<char> buf_;
  uint64_t buf_pos_ = 0;
};

GgufValue gguf_detail::make_value(GgufType type, GgufType elem, uint64_t count, std::string bytes) {
  return GgufParser::value(type, elem, count, std::move(bytes));
}

GgufValue GgufValue::of(std::string_view s) {
  std::string bytes;
  gguf_detail::append_string(bytes, s);
  return GgufParser::value(GgufType::kString, GgufType::kU8, 1, std::move(bytes));
}

GgufValue GgufValue::empty_array(GgufType elem) {
  if (!valid_type(static_cast<uint32_t>(elem)) || elem == GgufType::kArray) {
    fail("GGUF arrays cannot hold elements of {}", gguf_type_name(elem));
  }
  return GgufParser::value(GgufType::kArray, elem, 0, "");
}

std::optional<uint64_t> GgufValue::as_uint() const {
  const char* p = bytes_.data();
  switch (type_) {
    case GgufType::kU8:
      return load<uint8_t>(p);
    case GgufType::kU16:
      return load<uint16_t>(p);
    case GgufType::kU32:
      return load<uint32_t>(p);
    case GgufType::kU64:
      return load<uint64_t>(p);
    case GgufType::kI8:
    case GgufType::kI16:
    case GgufType::kI32:
    case GgufType::kI64: {
      const int64_t v = *as_int();
      if (v < 0) return std::nullopt;
      return static_cast<uint64_t>(v);
    }
    default:
      return std::nullopt;
  }
}

std::optional<int64_t> GgufValue::as_int() const {
  const char* p = bytes_.data();
  switch (type_) {
    case GgufType::kI8:
      return load<int8_t>(p);
    case GgufType::kI16:
      return load<int16_t>(p);
    case GgufType::kI32:
      return load<int32_t>(p);
    case GgufType::kI64:
      return load<int64_t>(p);
    case GgufType::kU8:
    case GgufType::kU16:
    case GgufType::kU32:
    case GgufType::kU64: {
      const uint64_t v = *as_uint();
      if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<int64_t>(v);
    }
    default:
      return std::nullopt;
  }
}

std::optional<double> GgufValue::as_float() const {
  if (type_ == GgufType::kF32) return load<float>(bytes_.data());
  if (type_ == GgufType::kF64) return load<double>(bytes_.data());
  return std::nullopt;
}

std::optional<bool> GgufValue::as_bool() const {
  if (type_ != GgufType::kBool) return std::nullopt;
  return bytes_[0] != 0;
}

std::optional<std::string_view> GgufValue::as_string() const {
  if (type_ != GgufType::kString) return std::nullopt;
  return std::string_view(bytes_).substr(8);
}

GgufValue GgufValue::at(uint64_t i) const {
  if (!is_array()) fail("GGUF value of type {} is not an array", gguf_type_name(type_));
  if (i >= count_) fail("GGUF array index {} is out of range (size {})", i, count_);
  if (elem_type_ == GgufType::kString) {
    const uint64_t off = string_offsets_[i];
    const uint64_t len = load<uint64_t>(bytes_.data() + off);
    return GgufParser::value(GgufType::kString, GgufType::kU8, 1, bytes_.substr(off, 8 + len));
  }
  const uint64_t sz = scalar_size(elem_type_);
  return GgufParser::value(elem_type_, GgufType::kU8, 1, bytes_.substr(i * sz, sz));
}

std::optional<std::vector<std::string_view>> GgufValue::string_array() const {
  if (!is_array() || elem_type_ != GgufType::kString) return std::nullopt;
  std::vector<std::string_view> out;
  out.reserve(count_);
  const std::string_view all(bytes_);
  for (uint64_t off : string_offsets_) {
    out.push_back(all.substr(off + 8, load<uint64_t>(bytes_.data() + off)));
  }
  return out;
}

std::string GgufValue::to_string() const {
  switch (type_) {
    case GgufType::kBool:
      return *as_bool() ? "true" : "false";
    case GgufType::kF32:
      return fmt::format("{}", load<float>(bytes_.data()));
    case GgufType::kF64:
      return fmt::format("{}", *as_float());
    case GgufType::kString:
      return std::string(*as_string());
    case GgufType::kI8:
    case GgufType::kI16:
    case GgufType::kI32:
    case GgufType::kI64:
      return fmt::format("{}", *as_int());
    case GgufType::kArray:
      break;
    default:
      return fmt::format("{}", *as_uint());
  }
  if (count_ <= 8 && elem_type_ != GgufType::kString) {
    std::string s = "[";
    for (uint64_t i = 0; i < count_; ++i) s += (i ? ", " : "") + at(i).to_string();
    return s + "]";
  }
  return fmt::format("[array of {} {}]", count_, gguf_type_name(elem_type_));
}

std::string GgufKv::encode() const {
  std::string out;
  out.reserve(8 + key.size() + 16 + value.payload().size());
  gguf_detail::append_string(out, key);
  put_u32(out, static_cast<uint32_t>(value.type()));
  if (value.is_array()) {
    put_u32(out, static_cast<uint32_t>(value.elem_type()));
    put_u64(out, value.size());
  }
  out += value.payload();
  return out;
}

void gguf_set_kv(std::vector<GgufKv>& kvs, std::string key, GgufValue value) {
  for (GgufKv& kv : kvs) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  kvs.push_back({std::move(key), std::move(value)});
}

bool gguf_remove_kv(std::vector<GgufKv>& kvs, std::string_view key) {
  const auto it =
      std::find_if(kvs.begin(), kvs.end(), [&](const GgufKv& kv) { return kv.key == key; });
  if (it == kvs.end()) return false;
  kvs.erase(it);
  return true;
}

// ------------------------------------------------------------------------------------------------
// Parsing.

GgufValue GgufParser::read_value(const Where& where) {
  const uint32_t tag = u32(where, "value type");
  if (!valid_type(tag)) fail("{}: {}: invalid value type {}", label_, where.str(), tag);
  const auto type = static_cast<GgufType>(tag);
  if (type == GgufType::kString) {
    const uint64_t len = u64(where, "string value");
    check_string_length(len, where, "string value");
    std::string bytes(8 + len, '\0');
    std::memcpy(bytes.data(), &len, 8);
    read(bytes.data() + 8, len, where, "string value");
    return value(type, GgufType::kU8, 1, std::move(bytes));
  }
  if (type != GgufType::kArray) {
    std::string bytes(scalar_size(type), '\0');
    read(bytes.data(), bytes.size(), where, "value");
    if (type == GgufType::kBool && static_cast<uint8_t>(bytes[0]) > 1) {
      fail("{}: {}: bool value is {}, not 0 or 1; the file is corrupt", label_, where.str(),
           static_cast<uint8_t>(bytes[0]));
    }
    return value(type, GgufType::kU8, 1, std::move(bytes));
  }
  const uint32_t elem_tag = u32(where, "array element type");
  if (elem_tag == static_cast<uint32_t>(GgufType::kArray)) {
    fail("{}: {}: arrays of arrays are not supported (ggml's reader rejects them)", label_,
         where.str());
  }
  if (!valid_type(elem_tag)) {
    fail("{}: {}: invalid array element type {}", label_, where.str(), elem_tag);
  }
  const auto elem = static_cast<GgufType>(elem_tag);
  const uint64_t count = u64(where, "array length");
  if (count > kGgufMaxArrayElements) {
    fail("{}: {}: array length {} exceeds the ceiling of {} elements; the file is corrupt", label_,
         where.str(), count, kGgufMaxArrayElements);
  }
  // Strings take at least their 8-byte length each; count <= 2^30 so this cannot overflow.
  const uint64_t min_bytes = count * (elem == GgufType::kString ? 8 : scalar_size(elem));
  if (min_bytes > remaining()) {
    fail(
        "{}: {}: array of {} {} needs at least {} bytes but only {} remain in the file; the "
        "file is truncated or corrupt",
        label_, where.str(), count, gguf_type_name(elem), min_bytes, remaining());
  }
  std::string bytes;
  if (elem != GgufType::kString) {
    bytes.resize(min_bytes);
    read(bytes.data(), min_bytes, where, "array");
    if (elem == GgufType::kBool) {
      for (uint64_t i = 0; i < count; ++i) {
        if (static_cast<uint8_t>(bytes[i]) > 1) {
          fail("{}: {}: bool element {} is {}, not 0 or 1; the file is corrupt", label_,
               where.str(), i, static_cast<uint8_t>(bytes[i]));
        }
      }
    }
    return value(type, elem, count, std::move(bytes));
  }
  bytes.reserve(min_bytes);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t len = u64(where, "array string");
    check_string_length(len, where, "array string");
    const size_t at = bytes.size();
    bytes.resize(at + 8 + len);
    std::memcpy(bytes.data() + at, &len, 8);
    read(bytes.data() + at + 8, len, where, "array string");
  }
  return value(type, elem, count, std::move(bytes));
}

void GgufParser::read_tensor_info(GgufFile& f, uint64_t index, std::vector<uint64_t>& relative) {
  using kernels::GgmlType;
  Where where{"tensor", {}, index};
  TensorInfo t;
  t.name = string(where, "tensor name");
  where.name = t.name;
  if (t.name.size() > kGgufMaxTensorNameLength) {
    fail("{}: {}: name is {} bytes long; ggml allows at most {}", label_, where.str(),
         t.name.size(), kGgufMaxTensorNameLength);
  }
  const uint32_t n_dims = u32(where, "dimension count");
  if (n_dims > kMaxDims) {
    fail("{}: {}: {} dimensions; GGUF tensors have at most {}", label_, where.str(), n_dims,
         kMaxDims);
  }
  uint64_t ne[kMaxDims] = {1, 1, 1, 1};
  for (uint32_t j = 0; j < n_dims; ++j) {
    ne[j] = u64(where, "dimension");
    if (ne[j] > static_cast<uint64_t>(INT64_MAX)) {
      fail("{}: {}: dimension {} has invalid size {} (negative as ggml's int64)", label_,
           where.str(), j, static_cast<int64_t>(ne[j]));
    }
  }
  // The element count must fit in int64 (as in ggml); a zero dimension makes any shape fit.
  uint64_t numel = 1;
  const bool empty = std::find(ne, ne + kMaxDims, 0) != ne + kMaxDims;
  for (uint32_t j = 0; j < kMaxDims && !empty; ++j) {
    if (numel > static_cast<uint64_t>(INT64_MAX) / ne[j]) {
      fail("{}: {}: element count of shape ({}, {}, {}, {}) overflows int64", label_, where.str(),
           ne[0], ne[1], ne[2], ne[3]);
    }
    numel *= ne[j];
  }
  if (empty) numel = 0;
  const uint32_t type_id = u32(where, "ggml type");
  const auto type = static_cast<GgmlType>(static_cast<int32_t>(type_id));
  const kernels::GgmlTypeTraits* traits = kernels::ggml_type_traits(type);
  if (traits == nullptr) {
    fail("{}: unsupported ggml type {} for tensor '{}'", label_, static_cast<int32_t>(type_id),
         t.name);
  }
  if (ne[0] % traits->block_elems != 0) {
    fail("{}: {}: rows of {} elements are not a whole number of {}-element {} blocks", label_,
         where.str(), ne[0], traits->block_elems, traits->name);
  }
  // numel fits in int64 when non-zero, so numel/block*bytes overflows only past 2^64.
  const uint64_t blocks = numel / traits->block_elems;
  if (blocks != 0 && traits->block_bytes > UINT64_MAX / blocks) {
    fail("{}: {}: size in bytes overflows", label_, where.str());
  }
  t.nbytes = blocks * traits->block_bytes;
  const uint64_t offset = u64(where, "data offset");
  t.ggml_type = static_cast<int32_t>(type_id);
  t.dtype = kernels::ggml_type_dtype(type).value_or(DType::kU8);
  t.shape.assign(n_dims, 0);
  for (uint32_t j = 0; j < n_dims; ++j) t.shape[j] = ne[n_dims - 1 - j];
  f.tensors_.push_back(std::move(t));
  relative.push_back(offset);
}

void GgufParser::parse(GgufFile& f) {
  const Where header{"header", {}, 0};
  unsigned char magic[4];
  if (size_ < 4) {
    fail("{}: file is {} bytes, too small to be a GGUF file (no 4-byte magic)", label_, size_);
  }
  read(magic, 4, header, "magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    fail("{}: not a GGUF file: it starts with '{}', expected 'GGUF'", label_, show_bytes(magic, 4));
  }
  const uint32_t version = u32(header, "version");
  if (version == 0) fail("{}: header: bad GGUF version 0; the file is corrupt", label_);
  if ((version & 0xFFFF) == 0) {
    fail(
        "{}: header: GGUF version {} (0x{:08x}) is implausibly large; the file was probably "
        "written with the other byte order (big-endian), which smelt does not read",
        label_, version, version);
  }
  if (version == 1) {
    fail(
        "{}: header: GGUF version 1 is no longer supported (ggml dropped it); convert the model "
        "again with a current llama.cpp",
        label_);
  }
  if (version > kGgufVersion) {
    fail("{}: header: GGUF version {} is newer than the versions smelt reads (2 and 3)", label_,
         version);
  }
  f.version_ = version;
  const uint64_t n_tensors = u64(header, "tensor count");
  const uint64_t n_kv = u64(header, "key/value count");
  if (n_kv > remaining() / kMinKvBytes) {
    fail(
        "{}: header: {} key/value pairs cannot fit in the {} bytes that follow (each takes at "
        "least {}); the file is corrupt or truncated",
        label_, n_kv, remaining(), kMinKvBytes);
  }
  if (n_tensors > remaining() / kMinTensorInfoBytes) {
    fail(
        "{}: header: {} tensor infos cannot fit in the {} bytes that follow (each takes at least "
        "{}); the file is corrupt or truncated",
        label_, n_tensors, remaining(), kMinTensorInfoBytes);
  }

  // No reserve() from the claimed counts: memory must grow only with bytes actually read.
  std::unordered_set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    Where where{"key", {}, i};
    std::string key = string(where, "key");
    if (key.empty()) fail("{}: key #{} is empty", label_, i);
    where.name = key;
    if (!keys.insert(key).second) fail("{}: {}: duplicate key", label_, where.str());
    GgufValue v = read_value(where);
    f.kvs_.push_back({std::move(key), std::move(v)});
  }
  for (const GgufKv& kv : f.kvs_) {
    if (kv.key != "general.alignment") continue;
    if (kv.value.type() != GgufType::kU32) {
      fail("{}: key 'general.alignment' must be of type u32 but is {}", label_,
           gguf_type_name(kv.value.type()));
    }
    const auto a = static_cast<uint32_t>(*kv.value.as_uint());
    if (a == 0 || (a & (a - 1)) != 0) {
      fail("{}: key 'general.alignment': alignment {} is not a power of two", label_, a);
    }
    f.alignment_ = a;
  }

  if (n_tensors > remaining() / kMinTensorInfoBytes) {
    fail(
        "{}: header: {} tensor infos cannot fit in the {} bytes after the key/value pairs (each "
        "takes at least {}); the file is corrupt or truncated",
        label_, n_tensors, remaining(), kMinTensorInfoBytes);
  }
  std::vector<uint64_t> relative;
  std::unordered_set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    read_tensor_info(f, i, relative);
    if (!names.insert(f.tensors_.back().name).second) {
      fail("{}: tensor '{}': duplicate tensor name", label_, f.tensors_.back().name);
    }
  }

  // The data section starts at the next multiple of the alignment (as in ggml, only when there
  // are tensors to place there).
  const uint64_t data_start = n_tensors > 0 ? pad_to(pos_, f.alignment_) : pos_;
  if (data_start > size_) {
    fail(
        "{}: the data section would start at offset {}, beyond the end of the file ({} bytes); "
        "the file is truncated",
        label_, data_start, size_);
  }
  f.data_start_ = data_start;
  const uint64_t data_bytes = size_ - data_start;
  uint64_t prev_end = 0;
  const TensorInfo* prev = nullptr;
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    TensorInfo& t = f.tensors_[i];
    const uint64_t off = relative[i];
    if (off % f.alignment_ != 0) {
      fail("{}: tensor '{}': data offset {} is not a multiple of the alignment {}", label_, t.name,
           off, f.alignment_);
    }
    if (off < prev_end) {
      fail(
          "{}: tensor '{}': data offset {} overlaps tensor '{}', which ends at {}; tensor data "
          "must follow tensor-info order without overlap",
          label_, t.name, off, prev->name, prev_end);
    }
    if (off > data_bytes || t.nbytes > data_bytes - off) {
      fail(
          "{}: tensor '{}': data [{}, {}) of the data section extends beyond the end of the file "
          "(the data section holds {} bytes); the file is truncated",
          label_, t.name, off, off + t.nbytes, data_bytes);
    }
    t.offset = data_start + off;
    prev_end = off + t.nbytes;
    prev = &t;
  }
}

// ------------------------------------------------------------------------------------------------
// GgufFile.

std::shared_ptr<GgufFile> GgufFile::open(const std::filesystem::path& path) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const std::string label = path.string();
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) fail("{}: cannot open: {}", label, errno_text());
  struct stat st {};
  if (::fstat(f->fd_, &st) != 0) fail("{}: cannot stat: {}", label, errno_text());
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file", label);
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  try {
    GgufParser(f->fd_, f->file_size_, label).parse(*f);
  } catch (const std::bad_alloc&) {
    fail("{}: out of memory while reading the GGUF header; the file is corrupt or too large",
         label);
  } catch (const std::length_error&) {
    fail("{}: a GGUF header length is too large to allocate; the file is corrupt", label);
  }
  for (size_t i = 0; i < f->kvs_.size(); ++i) {
    f->kv_by_key_.emplace(f->kvs_[i].key, i);
    f->metadata_.emplace(f->kvs_[i].key, f->kvs_[i].value.to_string());
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i)
    f->tensor_by_name_.emplace(f->tensors_[i].name, i);
  return f;
}

GgufFile::~GgufFile() {
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* GgufFile::find(std::string_view name) const {
  const auto it = tensor_by_name_.find(name);
  return it == tensor_by_name_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufFile::find_kv(std::string_view key) const {
  const auto it = kv_by_key_.find(key);
  return it == kv_by_key_.end() ? nullptr : &kvs_[it->second].value;
}

void GgufFile::read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const {
  if (offset > t.nbytes || size > t.nbytes - offset) {
    fail("{}: tensor '{}': read of {} bytes at {} is outside its {} bytes", path_.string(), t.name,
         size, offset, t.nbytes);
  }
  pread_exact(fd_, dst, size, t.offset + offset, path_, t.name);
}

// ------------------------------------------------------------------------------------------------
// Split models.

namespace {

struct SplitName {
  std::string prefix;  // everything before "-NNNNN-of-MMMMM.gguf", directory included
  uint32_t no = 0;     // 1-based, from the name
  uint32_t count = 0;
};

std::optional<SplitName> parse_split_name(const std::filesystem::path& path) {
  const std::string s = path.string();
  constexpr std::string_view kTail = ".gguf";
  constexpr size_t kSuffix = 1 + 5 + 4 + 5 + 5;  // "-NNNNN-of-MMMMM.gguf"
  if (s.size() < kSuffix || s.compare(s.size() - kTail.size(), kTail.size(), kTail) != 0) {
    return std::nullopt;
  }
  const std::string_view tail = std::string_view(s).substr(s.size() - kSuffix);
  const auto digits = [&](size_t from) {
    uint32_t v = 0;
    for (size_t i = from; i < from + 5; ++i) {
      if (tail[i] < '0' || tail[i] > '9') return -1;
      v = v * 10 + static_cast<uint32_t>(tail[i] - '0');
    }
    return static_cast<int>(v);
  };
  if (tail[0] != '-' || tail.substr(6, 4) != "-of-") return std::nullopt;
  const int no = digits(1);
  const int count = digits(10);
  if (no < 0 || count < 0) return std::nullopt;
  return SplitName{s.substr(0, s.size() - kSuffix), static_cast<uint32_t>(no),
                   static_cast<uint32_t>(count)};
}

std::filesystem::path split_path(const std::string& prefix, uint32_t no, uint32_t count) {
  return fmt::format("{}-{:05d}-of-{:05d}.gguf", prefix, no, count);
}

}  // namespace

std::vector<std::filesystem::path> gguf_split_paths(const std::filesystem::path& path) {
  const auto name = parse_split_name(path);
  if (!name) return {path};
  if (name->count == 0 || name->no == 0 || name->no > name->count) {
    fail("{}: the file name says part {} of {}, which is not a valid split part", path.string(),
         name->no, name->count);
  }
  std::vector<std::filesystem::path> parts;
  for (uint32_t i = 1; i <= name->count; ++i) {
    parts.push_back(split_path(name->prefix, i, name->count));
    std::error_code ec;
    if (!std::filesystem::exists(parts.back(), ec)) {
      fail("{}: part {} of {} of this split GGUF model is missing (expected beside it)",
           parts.back().string(), i, name->count);
    }
  }
  return parts;
}

std::vector<std::shared_ptr<GgufFile>> open_gguf_model(const std::filesystem::path& path) {
  const std::vector<std::filesystem::path> paths = gguf_split_paths(path);
  std::vector<std::shared_ptr<GgufFile>> parts;
  for (const auto& p : paths) parts.push_back(GgufFile::open(p));
  const uint64_t n = parts.size();
  bool any_split_kv = false;
  for (const auto& f : parts) any_split_kv |= f->find_kv("split.count") != nullptr;
  if (!any_split_kv) {
    if (n > 1) {
      fail(
          "{}: the file name says this is part of a {}-part model, but it has no split.count "
          "key; the parts may not belong together",
          parts[0]->path().string(), n);
    }
    return parts;
  }
  uint64_t total_tensors = 0;
  std::unordered_map<std::string_view, size_t> owner;
  for (uint64_t i = 0; i < n; ++i) {
    const GgufFile& f = *parts[i];
    const std::string label = f.path().string();
    const GgufValue* count = f.find_kv("split.count");
    const GgufValue* no = f.find_kv("split.no");
    if (count == nullptr || !count->as_uint()) {
      fail(
          "{}: key 'split.count' is missing or not an unsigned integer in this part of a split "
          "model",
          label);
    }
    if (*count->as_uint() != n) {
      fail("{}: key 'split.count' is {} but {} part file(s) were found for this model{}", label,
           *count->as_uint(), n,
           n == 1 ? " (a split model's parts are named <name>-00001-of-0000N.gguf)" : "");
    }
    if (no == nullptr || !no->as_uint()) {
      fail(
          "{}: key 'split.no' is missing or not an unsigned integer in this part of a split "
          "model",
          label);
    }
    if (*no->as_uint() != i) {
      fail("{}: key 'split.no' is {} but this is part {} (split.no counts from 0)", label,
           *no->as_uint(), i + 1);
    }
    for (const TensorInfo& t : f.tensors()) {
      const auto [it, inserted] = owner.emplace(t.name, i);
      if (!inserted) {
        fail("{}: tensor '{}' also appears in {}", label, t.name,
             parts[it->second]->path().string());
      }
    }
    total_tensors += f.tensors().size();
  }
  if (const GgufValue* tc = parts[0]->find_kv("split.tensors.count")) {
    if (!tc->as_uint() || *tc->as_uint() != total_tensors) {
      fail(
          "{}: key 'split.tensors.count' is {} but the {} part(s) hold {} tensors; a part is "
          "missing or corrupt",
          parts[0]->path().string(), tc->to_string(), n, total_tensors);
    }
  }
  return parts;
}

// ------------------------------------------------------------------------------------------------
// Writer.

uint64_t GgufTensorSpec::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t GgufTensorSpec::nbytes() const {
  const kernels::GgmlTypeTraits* traits = kernels::ggml_type_traits(type);
  if (traits == nullptr) {
    fail("tensor '{}': unsupported ggml type {}", name, static_cast<int32_t>(type));
  }
  const uint64_t row = shape.empty() ? 1 : shape.back();
  if (row % traits->block_elems != 0) {
    fail("tensor '{}': last dimension {} is not a whole number of {}-element {} blocks", name, row,
         traits->block_elems, traits->name);
  }
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (d != 0 && n > static_cast<uint64_t>(INT64_MAX) / d) {
      fail("tensor '{}': element count overflows", name);
    }
    n *= d;
  }
  const auto b = kernels::ggml_type_bytes(type, n);
  if (!b) fail("tensor '{}': size in bytes overflows", name);
  return *b;
}

GgufWriter::GgufWriter(std::filesystem::path path, std::vector<GgufKv> kvs,
                       std::vector<GgufTensorSpec> tensors, uint32_t alignment,
                       AtomicFileOptions file_options)
    : path_(std::move(path)), kvs_(std::move(kvs)), specs_(std::move(tensors)) {
  const std::string label = path_.string();
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    fail("{}: GGUF alignment {} is not a power of two", label, alignment);
  }
  bool has_alignment = false;
  for (GgufKv& kv : kvs_) {
    if (kv.key == "general.alignment") {
      kv.value = GgufValue::of(alignment);
      has_alignment = true;
    }
  }
  if (!has_alignment && alignment != kGgufDefaultAlignment) {
    kvs_.push_back({"general.alignment", GgufValue::of(alignment)});
  }
  std::unordered_set<std::string_view> keys;
  for (const GgufKv& kv : kvs_) {
    if (kv.key.empty()) fail("{}: a GGUF key is empty", label);
    if (!keys.insert(kv.key).second) fail("{}: key '{}' given twice", label, kv.key);
  }

  std::string header = "GGUF";
  put_u32(header, kGgufVersion);
  put_u64(header, specs_.size());
  put_u64(header, kvs_.size());
  for (const GgufKv& kv : kvs_) header += kv.encode();
  nbytes_.resize(specs_.size());
  std::vector<uint64_t> relative(specs_.size());
  uint64_t pos = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const GgufTensorSpec& s = specs_[i];
    if (!by_name_.emplace(s.name, i).second) fail("{}: tensor '{}' given twice", label, s.name);
    if (s.name.size() > kGgufMaxTensorNameLength) {
      fail("{}: tensor '{}': name is {} bytes long; ggml allows at most {}", label, s.name,
           s.name.size(), kGgufMaxTensorNameLength);
    }
    if (s.shape.size() > kMaxDims) {
      fail("{}: tensor '{}': {} dimensions; GGUF tensors have at most {}", label, s.name,
           s.shape.size(), kMaxDims);
    }
    nbytes_[i] = s.nbytes();
    relative[i] = pos;
    gguf_detail::append_string(header, s.name);
    put_u32(header, static_cast<uint32_t>(s.shape.size()));
    for (size_t j = s.shape.size(); j-- > 0;) put_u64(header, s.shape[j]);
    put_u32(header, static_cast<uint32_t>(s.type));
    put_u64(header, pos);
    const uint64_t padded = pad_to(nbytes_[i], alignment);
    if (padded < nbytes_[i] || pos > UINT64_MAX - padded) {
      fail("{}: total data size overflows", label);
    }
    pos += padded;
  }
  const uint64_t data_start = pad_to(header.size(), alignment);
  header.resize(data_start, '\0');
  offsets_.resize(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) offsets_[i] = data_start + relative[i];
  {
    std::vector<std::string> names;
    for (const GgufTensorSpec& s : specs_) names.push_back(s.name);
    ledger_ = std::make_unique<WriteLedger>(label, std::move(names), nbytes_);
  }

  file_ = std::make_unique<AtomicFile>(path_, data_start + pos, std::move(file_options));
  // Declaring every region (padding between tensors is never written) lets the file write each
  // block as soon as its bytes are in.
  file_->expect(0, header.size());
  for (size_t i = 0; i < specs_.size(); ++i) file_->expect(offsets_[i], nbytes_[i]);
  file_->pwrite(header.data(), header.size(), 0);
}

GgufWriter::~GgufWriter() = default;

std::optional<size_t> GgufWriter::index_of(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

void GgufWriter::write(size_t index, uint64_t offset, const void* data, uint64_t size) {
  ledger_->record(index, offset, size);
  file_->pwrite(data, size, offsets_[index] + offset);
}

void GgufWriter::finish() {
  if (finished_) return;
  ledger_->check_complete();
  file_->commit();
  finished_ = true;
}

}  // namespace smelt::io
