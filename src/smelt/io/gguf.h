// GGUF (v2/v3) reading with every byte validated before use, split-model discovery, and streaming
// writing (header first, tensor data to precomputed offsets, file visible only once complete).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "smelt/io/file_util.h"
#include "smelt/io/tensor_file.h"
#include "smelt/io/write_ledger.h"
#include "smelt/kernels/ggml_type.h"

namespace smelt::io {

// Ceilings of ggml's reader (gguf.cpp), applied to every file.
inline constexpr uint64_t kGgufMaxStringLength = uint64_t{1} << 30;
inline constexpr uint64_t kGgufMaxArrayElements = uint64_t{1} << 30;
inline constexpr uint64_t kGgufMaxTensorNameLength = 63;  // GGML_MAX_NAME - 1
inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr uint32_t kGgufVersion = 3;  // what GgufWriter writes

// Metadata value types (the u32 tag before each value).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// "u8", "i32", "f32", "bool", "string", "array", ...; "type N" for an invalid tag.
std::string gguf_type_name(GgufType type);

// One metadata value, held as its exact encoded bytes (everything after the type tag, or after
// element type and count for arrays), so that copying it to another file is byte-for-byte and a
// value can never be malformed: values come only from the builders below or a validated file.
class GgufValue {
 public:
  GgufValue() = default;  // an empty u8 array; assign a real value before use

  // Scalar builders: the C++ type picks the GGUF type (uint8_t -> u8, ..., int64_t -> i64,
  // float -> f32, double -> f64, bool -> bool, std::string/string_view/const char* -> string).
  template <typename T>
  static GgufValue of(const T& v);
  static GgufValue of(std::string_view s);
  static GgufValue of(const char* s) { return of(std::string_view(s)); }
  // Array builders: elements of one of the scalar C++ types above.
  template <typename T>
  static GgufValue array(const std::vector<T>& elements);
  // An empty array of `elem` (which must be a scalar type).
  static GgufValue empty_array(GgufType elem);

  GgufType type() const { return type_; }
  bool is_array() const { return type_ == GgufType::kArray; }
  GgufType elem_type() const { return elem_type_; }  // arrays only
  uint64_t size() const { return count_; }           // array element count (1 for scalars)

  // Scalar readers; nullopt when the value is not a scalar of a matching kind or out of range.
  // as_uint accepts u8..u64 and non-negative i8..i64; as_int accepts every integer type that
  // fits in int64; as_float accepts f32 and f64; as_bool only bool.
  std::optional<uint64_t> as_uint() const;
  std::optional<int64_t> as_int() const;
  std::optional<double> as_float() const;
  std::optional<bool> as_bool() const;
  std::optional<std::string_view> as_string() const;

  // Element `i` of an array as a scalar value (throws smelt::Error when out of range or when
  // this is not an array). String elements are located through an index built at construction.
  GgufValue at(uint64_t i) const;
  // All elements of a string array (views into this value); nullopt for other values.
  std::optional<std::vector<std::string_view>> string_array() const;

  // Short text form for listings: scalars in full, arrays of up to 8 numbers inline
  // ("[1, 2, 3]"), other arrays summarized ("[array of 32000 string]").
  std::string to_string() const;

  // The encoded payload (after the type tag for scalars; after tag, element type and count for
  // arrays), exactly as in the file.
  const std::string& payload() const { return bytes_; }

  bool operator==(const GgufValue& o) const {
    return type_ == o.type_ && elem_type_ == o.elem_type_ && count_ == o.count_ &&
           bytes_ == o.bytes_;
  }

 private:
  friend class GgufParser;
  GgufType type_ = GgufType::kArray;
  GgufType elem_type_ = GgufType::kU8;
  uint64_t count_ = 0;
  std::string bytes_;
  std::vector<uint64_t> string_offsets_;  // string arrays: offset of each element's length
};

// One key/value pair of the metadata section.
struct GgufKv {
  std::string key;
  GgufValue value;
  // The complete encoded pair (key length, key, type tag, payload) as it appears in a file.
  std::string encode() const;
  bool operator==(const GgufKv& o) const = default;
};

// Replaces the value of `key` in `kvs` (keeping its position), or appends it.
void gguf_set_kv(std::vector<GgufKv>& kvs, std::string key, GgufValue value);
// Removes `key` from `kvs`; returns whether it was there.
bool gguf_remove_kv(std::vector<GgufKv>& kvs, std::string_view key);

// A GGUF file opened for reading. Everything in the header is checked as ggml's gguf.cpp checks
// it (magic, version 2 or 3 with a byte-order hint, string/array ceilings, every length against
// the bytes that remain, KV and tensor counts against the bytes that remain, duplicate keys and
// tensor names, no nested arrays, bools 0/1, general.alignment a u32 power of two, at most 4
// dimensions, known tensor types, rows a whole number of blocks, sizes without overflow) plus:
// tensor data offsets aligned, in tensor-info order without overlap (gaps allowed) and inside
// the file. Every error names the file and the key or tensor.
//
// TensorInfo per tensor: shape in PyTorch order (ne reversed); ggml_type = the id; dtype = the
// smelt DType for F32/F16/BF16/F64/I8/I16/I32/I64 and kU8 for block-quantized types; absolute
// offset; nbytes. Reads use pread into caller buffers.
class GgufFile : public TensorFile {
 public:
  // Opens and validates `path`. Throws smelt::Error on any violation.
  static std::shared_ptr<GgufFile> open(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const override { return path_; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  // Every KV rendered with GgufValue::to_string.
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  uint64_t file_size() const override { return file_size_; }
  const TensorInfo* find(std::string_view name) const override;
  void read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const override;

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  // Absolute offset of the data section (tensor offsets in the file are relative to it).
  uint64_t data_start() const { return data_start_; }
  // The KVs in file order.
  const std::vector<GgufKv>& kvs() const { return kvs_; }
  // nullptr when absent.
  const GgufValue* find_kv(std::string_view key) const;

 private:
  friend class GgufParser;
  GgufFile() = default;
  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_start_ = 0;
  std::vector<GgufKv> kvs_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::unordered_map<std::string_view, size_t> kv_by_key_;
  std::unordered_map<std::string_view, size_t> tensor_by_name_;
};

// The part files of the GGUF model at `path`, in order. A file whose name does not end in
// "-NNNNN-of-MMMMM.gguf" is a single-file model. Otherwise `path` may be any part; the parts are
// "<prefix>-00001-of-MMMMM.gguf" ... (llama.cpp's llama_split_path), and each must exist. Throws
// smelt::Error naming the missing part.
std::vector<std::filesystem::path> gguf_split_paths(const std::filesystem::path& path);

// Opens every part of the model at `path` (see gguf_split_paths) and checks them against each
// other: split.count equals the number of parts in every part (when any part carries it),
// split.no is each part's 0-based index, split.tensors.count (when present) equals the total
// number of tensors, and no tensor name appears in two parts. Without split KVs a single file is
// returned as is. Throws smelt::Error naming the part and the key.
std::vector<std::shared_ptr<GgufFile>> open_gguf_model(const std::filesystem::path& path);

// What the writer needs to know about a tensor before any data exists.
struct GgufTensorSpec {
  std::string name;
  kernels::GgmlType type = kernels::GgmlType::kF32;
  std::vector<uint64_t> shape;  // PyTorch order (outermost first); at most 4 dimensions
  uint64_t numel() const;
  // Bytes of the tensor's data; throws smelt::Error on overflow, an unknown type, or a last
  // dimension that is not a whole number of blocks.
  uint64_t nbytes() const;
};

// Writes one GGUF v3 file. The header (KVs in the given order, tensor infos in the given order,
// padding) is written at construction into a temporary file beside `path`; tensor data is then
// written from any thread at precomputed offsets (tensors in order, each padded with zeros to
// `alignment`); finish() checks every byte was written, fdatasyncs and renames into place.
// Destroying an unfinished writer removes the temporary file, so a partial file never appears.
//
// `alignment` must be a power of two. general.alignment is kept consistent with it: an existing
// general.alignment KV is rewritten as u32 `alignment` in place; otherwise one is appended when
// `alignment` differs from the default 32. Throws smelt::Error for empty or duplicate keys,
// duplicate tensor names, names longer than 63 bytes, more than 4 dimensions, unknown types, or
// rows that are not whole blocks.
class GgufWriter {
 public:
  GgufWriter(std::filesystem::path path, std::vector<GgufKv> kvs,
             std::vector<GgufTensorSpec> tensors, uint32_t alignment = kGgufDefaultAlignment,
             AtomicFileOptions file_options = {});
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Index of `name` in the spec list; nullopt when absent.
  std::optional<size_t> index_of(std::string_view name) const;
  const std::vector<GgufTensorSpec>& tensors() const { return specs_; }
  const std::vector<GgufKv>& kvs() const { return kvs_; }
  // Writes `size` bytes at `offset` bytes into tensor `index`'s data. Thread-safe.
  void write(size_t index, uint64_t offset, const void* data, uint64_t size);
  // Completes the file (see class comment). Throws if any tensor byte is missing.
  void finish();
  const std::filesystem::path& path() const { return path_; }
  // Absolute file offset where tensor `index`'s data begins.
  uint64_t data_offset(size_t index) const { return offsets_[index]; }

 private:
  std::filesystem::path path_;
  std::unique_ptr<AtomicFile> file_;
  bool finished_ = false;
  std::vector<GgufKv> kvs_;
  std::vector<GgufTensorSpec> specs_;
  std::vector<uint64_t> nbytes_;
  std::vector<uint64_t> offsets_;        // absolute
  std::unique_ptr<WriteLedger> ledger_;  // every byte written exactly once
  std::unordered_map<std::string, size_t> by_name_;
};

// ------------------------------------------------------------------------------------------------
// Implementation details of the builders.

namespace gguf_detail {

template <typename T>
constexpr GgufType scalar_type() {
  if constexpr (std::is_same_v<T, bool>)
    return GgufType::kBool;
  else if constexpr (std::is_same_v<T, uint8_t>)
    return GgufType::kU8;
  else if constexpr (std::is_same_v<T, int8_t>)
    return GgufType::kI8;
  else if constexpr (std::is_same_v<T, uint16_t>)
    return GgufType::kU16;
  else if constexpr (std::is_same_v<T, int16_t>)
    return GgufType::kI16;
  else if constexpr (std::is_same_v<T, uint32_t>)
    return GgufType::kU32;
  else if constexpr (std::is_same_v<T, int32_t>)
    return GgufType::kI32;
  else if constexpr (std::is_same_v<T, float>)
    return GgufType::kF32;
  else if constexpr (std::is_same_v<T, uint64_t>)
    return GgufType::kU64;
  else if constexpr (std::is_same_v<T, int64_t>)
    return GgufType::kI64;
  else if constexpr (std::is_same_v<T, double>)
    return GgufType::kF64;
  else if constexpr (std::is_same_v<T, std::string>)
    return GgufType::kString;
  else
    static_assert(sizeof(T) == 0, "not a GGUF scalar type");
}

// Appends the little-endian encoding of `v` (length-prefixed for strings) to `out`.
void append_scalar(std::string& out, GgufType type, const void* v);
void append_string(std::string& out, std::string_view s);
GgufValue make_value(GgufType type, GgufType elem, uint64_t count, std::string bytes);

}  // namespace gguf_detail

template <typename T>
GgufValue GgufValue::of(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return of(std::string_view(v));
  } else {
    constexpr GgufType t = gguf_detail::scalar_type<T>();
    std::string bytes;
    if constexpr (std::is_same_v<T, bool>) {
      const uint8_t b = v ? 1 : 0;
      gguf_detail::append_scalar(bytes, t, &b);
    } else {
      gguf_detail::append_scalar(bytes, t, &v);
    }
    return gguf_detail::make_value(t, GgufType::kU8, 1, std::move(bytes));
  }
}

template <typename T>
GgufValue GgufValue::array(const std::vector<T>& elements) {
  constexpr GgufType t = gguf_detail::scalar_type<T>();
  std::string bytes;
  for (const auto& e : elements) {
    if constexpr (std::is_same_v<T, std::string>) {
      gguf_detail::append_string(bytes, e);
    } else if constexpr (std::is_same_v<T, bool>) {
      const uint8_t b = e ? 1 : 0;
      gguf_detail::append_scalar(bytes, t, &b);
    } else {
      gguf_detail::append_scalar(bytes, t, &e);
    }
  }
  return gguf_detail::make_value(GgufType::kArray, t, elements.size(), std::move(bytes));
}

}  // namespace smelt::io
