// Checked JSON values and whole-file reads for GGUF export.
#include "smelt/io/gguf_json.h"

#include <fstream>
#include <limits>

#include "smelt/error.h"

namespace smelt::io::gguf_json {
namespace fs = std::filesystem;

namespace {

// Tokenizer files larger than this are refused before reading (real ones are tens of MB).
constexpr uintmax_t kMaxTokenizerFileBytes = uintmax_t{1} << 30;

}  // namespace

std::string read_file(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail("{}: cannot read ({})", path.string(), ec.message());
  if (size > kMaxTokenizerFileBytes) {
    fail("{}: {} bytes is larger than the {} bytes a tokenizer file may have", path.string(), size,
         kMaxTokenizerFileBytes);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  if (static_cast<uintmax_t>(in.gcount()) != size) fail("{}: short read", path.string());
  return bytes;
}

json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", path.string(), e.what());
  }
}

const json* find(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// A positive integer that fits GGUF's u32 fields.
uint32_t positive_u32(const json& v, const char* key) {
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 ||
      v.get<int64_t>() > std::numeric_limits<uint32_t>::max()) {
    fail("config.json: '{}' must be a positive integer below 2^32 (it is {})", key, v.dump());
  }
  return static_cast<uint32_t>(v.get<int64_t>());
}

uint32_t required_u32(const json& config, const char* key) {
  const json* v = find(config, key);
  if (!v) fail("config.json: '{}' is missing; GGUF export needs it", key);
  return positive_u32(*v, key);
}

std::optional<uint32_t> optional_u32(const json& config, const char* key) {
  const json* v = find(config, key);
  if (!v) return std::nullopt;
  return positive_u32(*v, key);
}

// A positive finite number stored as f32.
float positive_f32(const json& v, const char* key) {
  if (!v.is_number()) fail("config.json: '{}' must be a number (it is {})", key, v.dump());
  const double d = v.get<double>();
  if (!std::isfinite(d) || d <= 0 || d > std::numeric_limits<float>::max()) {
    fail("config.json: '{}' must be a positive finite number (it is {})", key, v.dump());
  }
  return static_cast<float>(d);
}

}  // namespace smelt::io::gguf_json
