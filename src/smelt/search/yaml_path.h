// Addressing one value of a YAML config by a path such as `models[1].parameters.weight` or
// `parameters.t` (docs/search.md): what `smelt sweep --vary` and the search verbs change.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>
#include <string_view>

namespace smelt::search {

// Sets the scalar at `path` in `root` (a deep copy is the caller's business: YAML::Node shares).
// Every step must exist and the value there must be a scalar (a typo must not become a new key
// that changes nothing). Throws smelt::Error naming the path, the step that failed and the keys
// that exist there (with a "did you mean" for a near miss), or an index out of range.
void set_yaml_value(YAML::Node root, std::string_view path, double value);

// A deep copy of a YAML document.
YAML::Node clone_yaml(const YAML::Node& node);

// The document as YAML text.
std::string yaml_text(const YAML::Node& node);

}  // namespace smelt::search
