// ParameterSetting parsing, evaluation and precedence resolution (docs/config.md, "Parameter
// values" and "Precedence").
#include "smelt/config/parameter.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "smelt/config/suggest.h"
#include "smelt/error.h"

namespace smelt::config {
namespace {

// Conditional lists nested deeper than this are surely a mistake (and would recurse on evaluate).
constexpr int kMaxNesting = 16;
// Numbers plus {filter, value} entries in one setting; far above any real config.
constexpr size_t kMaxElements = 100'000;

constexpr char kExpected[] =
    "expected a number, a list of numbers (gradient) or a list of {filter, value}";

bool is_one_of(std::string_view s, std::initializer_list<std::string_view> options) {
  return std::find(options.begin(), options.end(), s) != options.end();
}

// Parses a YAML number written in plain style: decimal or 0x/0o/0b integers, decimal floats with
// optional exponent, .inf/.nan; '_' digit separators and a leading '+' are allowed (YAML 1.1).
bool parse_number(std::string_view text, YamlValue* out) {
  if (text.empty()) return false;
  std::string s;
  for (char c : text) {
    if (c != '_') s += c;
  }
  bool negative = false;
  std::string_view body = s;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  if (body.empty()) return false;
  if (is_one_of(body, {".inf", ".Inf", ".INF"})) {
    out->type = YamlType::kFloat;
    out->number = negative ? -std::numeric_limits<double>::infinity()
                           : std::numeric_limits<double>::infinity();
    return true;
  }
  if (s.size() == body.size() && is_one_of(body, {".nan", ".NaN", ".NAN"})) {
    out->type = YamlType::kFloat;
    out->number = std::numeric_limits<double>::quiet_NaN();
    return true;
  }
  if (!(std::isdigit(static_cast<unsigned char>(body[0])) || body[0] == '.')) return false;

  int base = 10;
  if (body.size() > 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'o' || body[1] == 'b')) {
    base = body[1] == 'x' ? 16 : body[1] == 'o' ? 8 : 2;
    body.remove_prefix(2);
  }
  uint64_t magnitude = 0;
  auto [end, ec] = std::from_chars(body.data(), body.data() + body.size(), magnitude, base);
  if (ec == std::errc() && end == body.data() + body.size() &&
      magnitude <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    out->type = YamlType::kInt;
    out->integer = negative ? -static_cast<int64_t>(magnitude) : static_cast<int64_t>(magnitude);
    out->number = static_cast<double>(out->integer);
    return true;
  }
  if (base != 10) return false;
  double value = 0.0;
  auto [fend, fec] = std::from_chars(body.data(), body.data() + body.size(), value);
  if (fend != body.data() + body.size()) return false;
  if (fec == std::errc::result_out_of_range) {
    value = std::numeric_limits<double>::infinity();
  } else if (fec != std::errc()) {
    return false;
  }
  out->type = YamlType::kFloat;
  out->number = negative ? -value : value;
  return true;
}

std::string number_text(double v) { return fmt::format("{}", v); }

// A filter as written in YAML flow style: plain when safe, quoted otherwise.
std::string filter_text(const std::string& filter) {
  const bool plain = !filter.empty() && std::all_of(filter.begin(), filter.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
  return plain ? filter : fmt::format("{:?}", filter);
}

// Reads one gradient element or scalar; throws for anything that is not a finite number/bool.
double read_number(const YAML::Node& node, const std::string& yaml_path, const char* expected) {
  const YamlValue v = read_yaml(node);
  if (v.type == YamlType::kBool || v.type == YamlType::kInt || v.type == YamlType::kFloat) {
    if (!std::isfinite(v.number)) {
      fail("{}: {} is not a finite number; use an ordinary number such as 0.5", yaml_path, v.text);
    }
    return v.number;
  }
  std::string hint = "write a number such as 0.5";
  if (v.type == YamlType::kString) hint = "remove the quotes if a number was meant";
  fail("{}: {}; got {}; {}", yaml_path, expected, describe_yaml(node), hint);
}

}  // namespace

YamlValue read_yaml(const YAML::Node& node) {
  YamlValue v;
  if (!node || node.IsNull()) return v;
  if (node.IsSequence()) {
    v.type = YamlType::kSequence;
    return v;
  }
  if (node.IsMap()) {
    v.type = YamlType::kMapping;
    return v;
  }
  v.text = node.Scalar();
  v.type = YamlType::kString;
  const std::string& tag = node.Tag();
  if (tag == "!" || tag == "tag:yaml.org,2002:str") return v;  // quoted, block or !!str
  if (tag == "tag:yaml.org,2002:null") {
    v.type = YamlType::kNull;
    return v;
  }
  if (is_one_of(v.text, {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"})) {
    v.type = YamlType::kBool;
    v.boolean = true;
    v.number = 1.0;
    return v;
  }
  if (is_one_of(v.text, {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"})) {
    v.type = YamlType::kBool;
    return v;
  }
  YamlValue number;
  if (parse_number(v.text, &number)) {
    number.text = v.text;
    return number;
  }
  return v;
}

std::string describe_yaml(const YAML::Node& node) {
  const YamlValue v = read_yaml(node);
  switch (v.type) {
    case YamlType::kNull:
      return "null";
    case YamlType::kBool:
      return fmt::format("boolean {}", v.boolean);
    case YamlType::kInt:
      return fmt::format("integer {}", v.text);
    case YamlType::kFloat:
      return fmt::format("number {}", v.text);
    case YamlType::kString:
      return fmt::format("string {:?}", v.text);
    case YamlType::kSequence:
      return "a list";
    case YamlType::kMapping:
      return "a mapping";
  }
  return "?";
}

ParameterValue ParameterValue::from_yaml(const YAML::Node& node, const std::string& yaml_path) {
  size_t remaining = kMaxElements;
  return parse(node, yaml_path, 0, &remaining);
}

ParameterValue ParameterValue::scalar(double value, std::string yaml_path) {
  ParameterValue p;
  p.kind_ = Kind::kScalar;
  p.scalar_ = value;
  p.yaml_path_ = std::move(yaml_path);
  return p;
}

ParameterValue ParameterValue::parse(const YAML::Node& node, const std::string& yaml_path,
                                     int depth, size_t* remaining) {
  if (depth > kMaxNesting) {
    fail("{}: conditional lists nested more than {} deep; flatten the filters", yaml_path,
         kMaxNesting);
  }
  const size_t count = node.IsSequence() ? node.size() : 1;
  if (count > *remaining) {
    fail(
        "{}: more than {} numbers and {{filter, value}} entries (counting YAML aliases "
        "expanded); simplify the value",
        yaml_path, kMaxElements);
  }
  *remaining -= count;
  ParameterValue p;
  p.yaml_path_ = yaml_path;
  const YamlValue v = read_yaml(node);

  if (v.type == YamlType::kMapping) {
    fail(
        "{}: a single {{filter, value}} mapping is not a parameter value; put it in a list "
        "(`- filter: ...` on its own line, or [{{filter: mlp, value: 0.5}}]) and add a last "
        "entry without filter as the fallback",
        yaml_path);
  }
  if (v.type != YamlType::kSequence) {
    p.kind_ = Kind::kScalar;
    p.scalar_ = read_number(node, yaml_path, kExpected);
    return p;
  }

  if (node.size() == 0) {
    fail(
        "{}: empty list; give a number, a list of numbers (gradient) or a list of {{filter, "
        "value}}",
        yaml_path);
  }
  size_t mappings = 0;
  for (const YAML::Node& element : node) {
    if (element.IsMap()) ++mappings;
  }
  if (mappings == 0) {
    p.kind_ = Kind::kGradient;
    for (size_t i = 0; i < node.size(); ++i) {
      const std::string path = fmt::format("{}[{}]", yaml_path, i);
      if (node[i].IsSequence()) {
        fail(
            "{}: a gradient holds numbers, not lists; got a list; flatten it, or use a list of "
            "{{filter, value}} to give different gradients to different tensors",
            path);
      }
      p.gradient_.push_back(read_number(node[i], path, "expected a number (gradient element)"));
    }
    return p;
  }
  if (mappings != node.size()) {
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsMap()) {
        fail(
            "{}[{}]: expected a {{filter, value}} entry like the other list elements; got {}; a "
            "list holds either only numbers (a gradient) or only {{filter, value}} entries",
            yaml_path, i, describe_yaml(node[i]));
      }
    }
  }
  p.kind_ = Kind::kConditional;
  for (size_t i = 0; i < node.size(); ++i) {
    p.conditions_.push_back(
        parse_condition(node[i], fmt::format("{}[{}]", yaml_path, i), depth, remaining));
  }
  return p;
}

ParameterCondition ParameterValue::parse_condition(const YAML::Node& node,
                                                   const std::string& yaml_path, int depth,
                                                   size_t* remaining) {
  static const std::vector<std::string> kKeys = {"filter", "value"};
  ParameterCondition c;
  c.yaml_path = yaml_path;
  bool has_value = false;
  std::set<std::string> seen;
  for (const auto& entry : node) {
    const std::string key = entry.first.Scalar();
    if (!seen.insert(key).second) {
      fail("{}.{}: duplicate key; keep only one", yaml_path, key);
    }
    if (key == "filter") {
      const YamlValue f = read_yaml(entry.second);
      if (f.type == YamlType::kNull) continue;
      if (f.type != YamlType::kString) {
        fail(
            "{}.filter: expected a string (a substring of tensor names) or null; got {}; quote "
            "it, e.g. filter: \"{}\"",
            yaml_path, describe_yaml(entry.second), f.text);
      }
      c.filter = f.text;
    } else if (key == "value") {
      c.value = parse(entry.second, yaml_path + ".value", depth + 1, remaining);
      has_value = true;
    } else {
      const std::string suggestion = closest_match(key, kKeys);
      fail("{}.{}: unknown key in a {{filter, value}} entry; {}", yaml_path, key,
           suggestion.empty() ? "the keys are filter and value"
                              : fmt::format("did you mean '{}'?", suggestion));
    }
  }
  if (!has_value) {
    fail("{}: {{filter, value}} entry without 'value'; add value: <number or gradient>", yaml_path);
  }
  return c;
}

std::optional<double> ParameterValue::evaluate(std::string_view tensor_name, double t) const {
  switch (kind_) {
    case Kind::kScalar:
      return scalar_;
    case Kind::kGradient: {
      const size_t n = gradient_.size();
      if (n == 0) return std::nullopt;
      t = std::clamp(t, 0.0, 1.0);
      const double s = t * static_cast<double>(n - 1);
      const size_t i0 = static_cast<size_t>(std::floor(s));
      const size_t i1 = std::min(n - 1, i0 + 1);
      const double f = s - static_cast<double>(i0);
      return (1.0 - f) * gradient_[i0] + f * gradient_[i1];
    }
    case Kind::kConditional:
      for (const ParameterCondition& c : conditions_) {
        const bool matches =
            !c.filter || *c.filter == "*" ||
            (!tensor_name.empty() && tensor_name.find(*c.filter) != std::string_view::npos);
        if (matches) return c.value.evaluate(tensor_name, t);
      }
      return std::nullopt;
  }
  return std::nullopt;
}

std::string ParameterValue::describe() const {
  switch (kind_) {
    case Kind::kScalar:
      return number_text(scalar_);
    case Kind::kGradient: {
      std::vector<std::string> parts;
      for (double v : gradient_) parts.push_back(number_text(v));
      return fmt::format("[{}]", fmt::join(parts, ", "));
    }
    case Kind::kConditional: {
      std::vector<std::string> parts;
      for (const ParameterCondition& c : conditions_) {
        if (c.filter) {
          parts.push_back(
              fmt::format("{{filter: {}, value: {}}}", filter_text(*c.filter), c.value.describe()));
        } else {
          parts.push_back(fmt::format("{{value: {}}}", c.value.describe()));
        }
      }
      return fmt::format("[{}]", fmt::join(parts, ", "));
    }
  }
  return "";
}

ParameterSettings parse_parameter_settings(const YAML::Node& node, const std::string& yaml_path) {
  ParameterSettings settings;
  if (!node || node.IsNull()) return settings;
  if (!node.IsMap()) {
    fail(
        "{}: expected a mapping of parameter names to values; got {}; write e.g. "
        "parameters: {{weight: 0.5}}",
        yaml_path, describe_yaml(node));
  }
  for (const auto& entry : node) {
    const YamlValue key = read_yaml(entry.first);
    if (key.type == YamlType::kSequence || key.type == YamlType::kMapping || key.text.empty()) {
      fail("{}: parameter names must be plain strings; got {}", yaml_path,
           describe_yaml(entry.first));
    }
    const std::string path = fmt::format("{}.{}", yaml_path, key.text);
    if (settings.count(key.text)) fail("{}: duplicate parameter; keep only one", path);
    settings.emplace(key.text, ParameterValue::from_yaml(entry.second, path));
  }
  return settings;
}

std::optional<ResolvedParameter> resolve_parameter(
    const std::vector<const ParameterSettings*>& levels, std::string_view name,
    std::string_view tensor_name, double t) {
  for (const ParameterSettings* level : levels) {
    if (!level) continue;
    auto it = level->find(std::string(name));
    if (it == level->end()) continue;
    if (std::optional<double> v = it->second.evaluate(tensor_name, t)) {
      return ResolvedParameter{*v, &it->second};
    }
  }
  return std::nullopt;
}

}  // namespace smelt::config
