// JSON access for the tokenizer files: every read names the file and the JSON path of the value
// it checks, so a bad tokenizer.json is a one-line smelt::Error (docs/tokenizer.md).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace smelt::tok {

// Key order is kept so that an edited tokenizer.json is saved in its original layout.
using Json = nlohmann::ordered_json;

// A position in a JSON file ("tokenizer.json", "pre_tokenizer.pretokenizers[1].type").
struct Where {
  std::string file;
  std::string path;

  Where at(std::string_view key) const;
  // Throws when a Sequence component is nested more than kMaxDepth levels deep (a crafted file
  // must not exhaust the stack).
  void check_depth() const;
  static constexpr size_t kMaxDepth = 64;
  Where at(size_t index) const;
  // Throws smelt::Error "<file>: <path>: <what>".
  [[noreturn]] void fail(std::string_view what) const;
};

// The name of a JSON value's type, for "expected a string, got <type>" messages.
std::string json_type_name(const Json& value);

// Checks that `value` (found at `w`) is an object.
const Json& expect_object(const Json& value, const Where& w);
// Checks that `value` is an array.
const Json& expect_array(const Json& value, const Where& w);
// A string value.
std::string expect_string(const Json& value, const Where& w);
// An integer value in [min, max].
int64_t expect_int(const Json& value, const Where& w, int64_t min, int64_t max);

// obj[key], which must be present (null counts as present).
const Json& required(const Json& obj, std::string_view key, const Where& w);
// obj[key] as a string; absent or null gives nullopt.
std::optional<std::string> optional_string(const Json& obj, std::string_view key, const Where& w);
// obj[key] as a required string.
std::string required_string(const Json& obj, std::string_view key, const Where& w);
// obj[key] as a bool; absent or null gives `fallback`.
bool optional_bool(const Json& obj, std::string_view key, const Where& w, bool fallback);
// obj[key] as a non-negative integer; absent or null gives `fallback`.
int64_t optional_int(const Json& obj, std::string_view key, const Where& w, int64_t fallback);

// Parses JSON text into a Json exactly as Json::parse does (same values, key order, duplicate-key
// rule and parse_error exceptions), but in time linear in the object sizes: Json::parse inserts
// each key of an ordered_json object with a linear search, which makes a 150k-entry model.vocab
// take tens of seconds (docs/performance.md).
Json parse_json(std::string_view text);

// Reads and parses a JSON file (parse_json); a missing file or a syntax error throws naming the
// file.
Json read_json_file(const std::string& path);

}  // namespace smelt::tok
