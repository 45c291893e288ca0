// Parameter look-ups shared by every merge method.
#include "smelt/methods/method.h"

#include "smelt/error.h"

namespace smelt::methods {

double ResolvedParams::global_value(const std::string& name) const {
  const auto it = global.find(name);
  // The planner resolves every declared global parameter (defaults included), so a miss means a
  // method asked for a parameter it did not declare: a bug in smelt, reported as such.
  if (it == global.end()) fail("internal error: global parameter '{}' was not resolved", name);
  return it->second;
}

std::optional<double> ResolvedParams::model_value(size_t input, const std::string& name) const {
  if (input >= per_model.size()) return std::nullopt;
  const auto it = per_model[input].find(name);
  if (it == per_model[input].end()) return std::nullopt;
  return it->second;
}

}  // namespace smelt::methods
