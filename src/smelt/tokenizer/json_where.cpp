// JSON access with file-and-path error messages (json_where.h).
#include "smelt/tokenizer/json_where.h"

#include <fstream>
#include <limits>
#include <sstream>

#include "smelt/error.h"

namespace smelt::tok {

Where Where::at(std::string_view key) const {
  return {file, path.empty() ? std::string(key) : path + "." + std::string(key)};
}

void Where::check_depth() const {
  size_t depth = 0;
  for (char c : path) depth += c == '[';
  if (depth > kMaxDepth) fail(fmt::format("components nested more than {} levels deep", kMaxDepth));
}

Where Where::at(size_t index) const { return {file, fmt::format("{}[{}]", path, index)}; }

void Where::fail(std::string_view what) const {
  if (path.empty()) smelt::fail("{}: {}", file, what);
  smelt::fail("{}: {}: {}", file, path, what);
}

std::string json_type_name(const Json& value) { return value.type_name(); }

const Json& expect_object(const Json& value, const Where& w) {
  if (!value.is_object()) w.fail("expected an object, got " + json_type_name(value));
  return value;
}

const Json& expect_array(const Json& value, const Where& w) {
  if (!value.is_array()) w.fail("expected an array, got " + json_type_name(value));
  return value;
}

std::string expect_string(const Json& value, const Where& w) {
  if (!value.is_string()) w.fail("expected a string, got " + json_type_name(value));
  return value.get<std::string>();
}

int64_t expect_int(const Json& value, const Where& w, int64_t min, int64_t max) {
  int64_t v = 0;
  if (value.is_number_unsigned()) {
    uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      w.fail(fmt::format("integer {} is out of range [{}, {}]", u, min, max));
    }
    v = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    v = value.get<int64_t>();
  } else {
    w.fail("expected an integer, got " + json_type_name(value));
  }
  if (v < min || v > max) w.fail(fmt::format("integer {} is out of range [{}, {}]", v, min, max));
  return v;
}

const Json& required(const Json& obj, std::string_view key, const Where& w) {
  expect_object(obj, w);
  auto it = obj.find(std::string(key));
  if (it == obj.end()) w.fail(fmt::format("missing required field \"{}\"", key));
  return *it;
}

std::optional<std::string> optional_string(const Json& obj, std::string_view key, const Where& w) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return std::nullopt;
  return expect_string(*it, w.at(key));
}

std::string required_string(const Json& obj, std::string_view key, const Where& w) {
  return expect_string(required(obj, key, w), w.at(key));
}

bool optional_bool(const Json& obj, std::string_view key, const Where& w, bool fallback) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) w.at(key).fail("expected a boolean, got " + json_type_name(*it));
  return it->get<bool>();
}

int64_t optional_int(const Json& obj, std::string_view key, const Where& w, int64_t fallback) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return fallback;
  return expect_int(*it, w.at(key), 0, std::numeric_limits<int64_t>::max());
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) smelt::fail("{}: cannot open file", path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) smelt::fail("{}: read error", path);
  try {
    return Json::parse(buffer.str());
  } catch (const Json::exception& e) {
    smelt::fail("{}: not valid JSON: {}", path, e.what());
  }
}

}  // namespace smelt::tok
