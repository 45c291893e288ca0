// mergekit ParameterSetting values (scalar, gradient, conditional list), their evaluation for one
// tensor at one gradient position, and the precedence rule that picks a value across levels.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/error.h"

namespace smelt::config {

// How PyYAML's safe_load (which mergekit uses) types a YAML node, with one friendly extension:
// plain scalars such as `1e-5` that YAML 1.2 reads as numbers are numbers here too.
enum class YamlType { kNull, kBool, kInt, kFloat, kString, kSequence, kMapping };

// A typed YAML node: `boolean` is set for kBool, `number` for kBool/kInt/kFloat (bools as 1/0),
// `integer` for kInt, `text` for every scalar (as written).
struct YamlValue {
  YamlType type = YamlType::kNull;
  bool boolean = false;
  double number = 0.0;
  int64_t integer = 0;
  std::string text;
};

// Types `node` (quoted scalars are always strings; plain ones are null, bool, int, float or
// string by YAML 1.1 rules, as PyYAML does).
YamlValue read_yaml(const YAML::Node& node);

// Describes what a node is for error messages: `null`, `boolean true`, `integer 3`,
// `string "abc"`, `a list`, `a mapping`.
std::string describe_yaml(const YAML::Node& node);

struct ParameterCondition;

// One ParameterSetting: a scalar (numbers; booleans become 1/0), a gradient (a list of numbers,
// interpolated over t in [0, 1]), or a conditional list of {filter, value} entries whose values
// may themselves be scalars, gradients or conditional lists.
class ParameterValue {
 public:
  enum class Kind { kScalar, kGradient, kConditional };

  // Parses a ParameterSetting; `yaml_path` (e.g. "models[1].parameters.weight") names the node
  // in errors. Throws smelt::Error "<yaml_path>: <problem>; <what to do>" for strings, nulls,
  // empty lists, mixed lists, and a single {filter, value} mapping outside a list.
  static ParameterValue from_yaml(const YAML::Node& node, const std::string& yaml_path);
  // A scalar value not read from YAML (defaults, tests).
  static ParameterValue scalar(double value, std::string yaml_path = "");

  // The value for tensor `tensor_name` at gradient position t (clamped to [0, 1]); nullopt when a
  // conditional list has no entry matching the tensor. An entry matches when its filter is null,
  // "*", or a substring of a non-empty tensor name; the first match decides, even if its own
  // (nested conditional) value then matches nothing.
  std::optional<double> evaluate(std::string_view tensor_name, double t) const;

  // The value in YAML flow style, e.g. `0.5`, `[1, 0.7, 0.1]`, `[{filter: mlp, value: 0.5},
  // {value: 0}]`.
  std::string describe() const;

  Kind kind() const { return kind_; }
  // Where the value was written ("models[1].parameters.weight"); empty when not from YAML.
  const std::string& yaml_path() const { return yaml_path_; }
  double scalar_value() const { return scalar_; }                    // kScalar only
  const std::vector<double>& gradient() const { return gradient_; }  // kGradient only
  const std::vector<ParameterCondition>& conditions() const { return conditions_; }  // kConditional

 private:
  // `remaining` counts the numbers and entries still allowed, so YAML aliases cannot blow a small
  // file up into an exponentially large value.
  static ParameterValue parse(const YAML::Node& node, const std::string& yaml_path, int depth,
                              size_t* remaining);
  static ParameterCondition parse_condition(const YAML::Node& node, const std::string& yaml_path,
                                            int depth, size_t* remaining);

  Kind kind_ = Kind::kScalar;
  double scalar_ = 0.0;
  std::vector<double> gradient_;
  std::vector<ParameterCondition> conditions_;
  std::string yaml_path_;
};

// One entry of a conditional list: `filter` (nullopt = YAML null or absent) and its value.
struct ParameterCondition {
  std::optional<std::string> filter;
  ParameterValue value;
  std::string yaml_path;  // "models[0].parameters.weight[1]"
};

// A `parameters:` mapping: parameter name -> setting.
using ParameterSettings = std::map<std::string, ParameterValue>;

// Parses a `parameters:` mapping found at `yaml_path` (e.g. "slices[0].parameters"). A null or
// absent node gives an empty map. Throws smelt::Error for a non-mapping, a duplicate name, or a
// bad value (see ParameterValue::from_yaml).
ParameterSettings parse_parameter_settings(const YAML::Node& node, const std::string& yaml_path);

// The value that decided a parameter and where it came from.
struct ResolvedParameter {
  double value = 0.0;
  const ParameterValue* setting = nullptr;  // its yaml_path() names the config line
};

// mergekit's precedence rule (docs/config.md, "Precedence"): scans `levels` (highest precedence
// first; null pointers are skipped) and returns the first level that sets `name` to a value present
// for `tensor_name` at t. A level whose conditional list matches nothing falls through to the next.
// nullopt when no level gives a value (the caller then applies the method's default).
std::optional<ResolvedParameter> resolve_parameter(
    const std::vector<const ParameterSettings*>& levels, std::string_view name,
    std::string_view tensor_name, double t);

}  // namespace smelt::config
