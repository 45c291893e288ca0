// Checked access to the JSON files GGUF export reads (config.json, tokenizer files): one place
// for "missing, null or of the wrong kind" and for the size ceiling of a file read whole.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace smelt::io::gguf_json {

using nlohmann::json;

// obj[key], or nullptr when obj is not an object or the key is absent or null.
const json* find(const json& obj, const char* key);

// config.json values, checked: a positive integer below 2^32 (GGUF's u32 fields), and a positive
// finite number stored as f32. Throw smelt::Error naming the key and the value.
uint32_t positive_u32(const json& v, const char* key);
uint32_t required_u32(const json& config, const char* key);  // also throws when missing
std::optional<uint32_t> optional_u32(const json& config, const char* key);
float positive_f32(const json& v, const char* key);

// The bytes of `path`, refused beyond 1 GiB (real tokenizer files are tens of MB); throws
// smelt::Error naming the file.
std::string read_file(const std::filesystem::path& path);
// read_file parsed as JSON; throws smelt::Error naming the file when it is not valid JSON.
json read_json(const std::filesystem::path& path);

}  // namespace smelt::io::gguf_json
