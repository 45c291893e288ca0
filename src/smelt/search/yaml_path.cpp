#include "smelt/search/yaml_path.h"

#include <fmt/format.h>

#include <cctype>
#include <vector>

#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/report/svg_plot.h"

namespace smelt::search {
namespace {

struct Step {
  std::string key;  // a map key, or "" for an index step
  size_t index = 0;
};

std::vector<Step> parse_path(std::string_view path) {
  std::vector<Step> steps;
  size_t i = 0;
  auto bad = [&](std::string_view why) {
    fail("'{}': {} (write a path such as models[1].parameters.weight or parameters.t)", path, why);
  };
  if (path.empty()) bad("the path is empty");
  while (i < path.size()) {
    if (path[i] == '[') {
      const size_t close = path.find(']', i);
      if (close == std::string_view::npos) bad("a '[' is not closed");
      const std::string_view digits = path.substr(i + 1, close - i - 1);
      if (digits.empty() || digits.size() > 9) bad("an index must be a number");
      size_t v = 0;
      for (const char c : digits) {
        if (!std::isdigit(static_cast<unsigned char>(c))) bad("an index must be a number");
        v = v * 10 + static_cast<size_t>(c - '0');
      }
      steps.push_back({"", v});
      i = close + 1;
      if (i < path.size() && path[i] == '.') {
        ++i;
        if (i == path.size()) bad("the path ends with '.'");
      }
      continue;
    }
    size_t end = i;
    while (end < path.size() && path[end] != '.' && path[end] != '[') ++end;
    if (end == i) bad("an empty key");
    steps.push_back({std::string(path.substr(i, end - i)), 0});
    i = end;
    if (i < path.size() && path[i] == '.') {
      ++i;
      if (i == path.size()) bad("the path ends with '.'");
    }
  }
  return steps;
}

std::string where_text(const std::vector<Step>& steps, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (steps[i].key.empty()) {
      s += fmt::format("[{}]", steps[i].index);
    } else {
      if (!s.empty()) s += '.';
      s += steps[i].key;
    }
  }
  return s.empty() ? "the top level" : s;
}

}  // namespace

void set_yaml_value(YAML::Node root, std::string_view path, double value) {
  const std::vector<Step> steps = parse_path(path);
  YAML::Node node = root;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& st = steps[i];
    const std::string where = where_text(steps, i);
    if (st.key.empty()) {
      if (!node.IsSequence()) {
        fail("'{}': {} is not a list, so [{}] cannot index it", path, where, st.index);
      }
      if (st.index >= node.size()) {
        fail("'{}': {} has {} entr{}, so [{}] is out of range", path, where, node.size(),
             node.size() == 1 ? "y" : "ies", st.index);
      }
      node.reset(node[st.index]);
      continue;
    }
    if (!node.IsMap()) {
      fail("'{}': {} is not a map, so it has no key '{}'", path, where, st.key);
    }
    YAML::Node child = node[st.key];
    if (!child.IsDefined()) {
      std::vector<std::string> keys;
      for (const auto& kv : node) keys.push_back(kv.first.as<std::string>());
      const std::string guess = config::closest_match(st.key, keys);
      fail("'{}': {} has no key '{}'; {}keys there: {}", path, where, st.key,
           guess.empty() ? "" : fmt::format("did you mean '{}'? ", guess), fmt::join(keys, ", "));
    }
    node.reset(child);
  }
  if (!node.IsScalar()) {
    fail("'{}' is {} in the config, not a single number: vary a scalar value", path,
         node.IsSequence() ? "a list (a gradient or a list of filters)" : "a map");
  }
  node = report::format_number(value);
}

YAML::Node clone_yaml(const YAML::Node& node) { return YAML::Clone(node); }

std::string yaml_text(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

}  // namespace smelt::search
