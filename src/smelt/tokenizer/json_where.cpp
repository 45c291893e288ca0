// JSON access with file-and-path error messages (json_where.h).
#include "smelt/tokenizer/json_where.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

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

namespace {

// An open-addressing hash index of an ordered_json object's keys: each slot holds an entry's
// position + 1 (0: empty). The keys stay in the object; the index holds no copies.
class KeyIndex {
 public:
  bool empty() const { return slots_.empty(); }
  // The position of `key` in `obj`; when absent, obj.size(), recorded as the position of the entry
  // the caller appends next.
  size_t find_or_add(const Json::object_t& obj, std::string_view key) {
    if ((obj.size() + 1) * 2 > slots_.size()) rebuild(obj, std::max<size_t>(64, slots_.size() * 2));
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i] == 0) {
        slots_[i] = obj.size() + 1;
        return obj.size();
      }
      if (entry(obj, slots_[i] - 1).first == key) return slots_[i] - 1;
    }
  }
  static const Json::object_t::value_type& entry(const Json::object_t& obj, size_t pos) {
    return *(obj.begin() + static_cast<std::ptrdiff_t>(pos));
  }

 private:
  static size_t hash(std::string_view key) { return std::hash<std::string_view>{}(key); }
  void rebuild(const Json::object_t& obj, size_t size) {
    slots_.assign(size, 0);
    const size_t mask = size - 1;
    for (size_t pos = 0; pos < obj.size(); ++pos) {
      size_t i = hash(entry(obj, pos).first) & mask;
      while (slots_[i] != 0) i = (i + 1) & mask;
      slots_[i] = pos + 1;
    }
  }
  std::vector<size_t> slots_;  // a power of two in size, at most half full
};

// A SAX handler that builds the same document as nlohmann's DOM parser. That parser adds each
// object key with ordered_map::operator[], a linear search; here an object past kIndexFrom keys
// gets a hash index of its keys. A repeated key keeps its first position and takes the last value,
// as operator[] followed by an assignment does.
class DomBuilder {
 public:
  explicit DomBuilder(Json& root) : root_(root) {}

  bool null() { return put(Json(nullptr)); }
  bool boolean(bool v) { return put(Json(v)); }
  bool number_integer(Json::number_integer_t v) { return put(Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) { return put(Json(v)); }
  bool number_float(Json::number_float_t v, const Json::string_t& /*text*/) { return put(Json(v)); }
  bool string(Json::string_t& v) { return put(Json(std::move(v))); }
  bool binary(Json::binary_t& v) { return put(Json(std::move(v))); }
  bool start_object(size_t /*size*/) { return open(Json::value_t::object); }
  bool start_array(size_t /*size*/) { return open(Json::value_t::array); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(Json::string_t& k) {
    Frame& f = stack_.back();
    auto& obj = f.node->get_ref<Json::object_t&>();
    size_t pos = obj.size();
    if (!f.index.empty() || obj.size() >= kIndexFrom) {
      pos = f.index.find_or_add(obj, k);
    } else {
      for (size_t i = 0; i < obj.size(); ++i) {
        if (KeyIndex::entry(obj, i).first == k) {
          pos = i;
          break;
        }
      }
    }
    if (pos == obj.size()) obj.emplace_back(std::move(k), Json());
    slot_ = &(obj.begin() + static_cast<std::ptrdiff_t>(pos))->second;
    return true;
  }

  template <class Exception>
  bool parse_error(size_t /*position*/, const std::string& /*token*/, const Exception& ex) {
    throw ex;
  }

 private:
  static constexpr size_t kIndexFrom = 16;
  struct Frame {
    Json* node;
    KeyIndex index;  // empty until the object has kIndexFrom keys
  };

  // Stores a value where the parser is: the root, the next array element or the slot of the last
  // key. Only the innermost open container grows, so the pointers on the stack stay valid.
  Json* place(Json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Json* top = stack_.back().node;
    if (top->is_array()) {
      auto& arr = top->get_ref<Json::array_t&>();
      arr.push_back(std::move(v));
      return &arr.back();
    }
    *slot_ = std::move(v);
    return slot_;
  }
  bool put(Json&& v) {
    place(std::move(v));
    return true;
  }
  bool open(Json::value_t type) {
    stack_.push_back({place(Json(type)), {}});
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  Json& root_;
  std::vector<Frame> stack_;
  Json* slot_ = nullptr;
};

}  // namespace

Json parse_json(std::string_view text) {
  Json result;
  DomBuilder builder(result);
  Json::sax_parse(text, &builder);
  return result;
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) smelt::fail("{}: cannot open file", path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) smelt::fail("{}: read error", path);
  try {
    return parse_json(buffer.str());
  } catch (const Json::exception& e) {
    smelt::fail("{}: not valid JSON: {}", path, e.what());
  }
}

}  // namespace smelt::tok
