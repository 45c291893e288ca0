// The table of merge methods smelt knows, by mergekit name.
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/methods/factories.h"
#include "smelt/methods/method.h"

namespace smelt::methods {
namespace {

struct Registration {
  std::string_view name;  // must equal the method's name()
  std::unique_ptr<Method> (*make)();
};

// One line per method, in mergekit's registry order (docs/methods.md).
constexpr Registration kRegistry[] = {
    {"linear", make_linear},
    {"slerp", make_slerp},
    {"nuslerp", make_nuslerp},
    {"passthrough", make_passthrough},
    {"model_stock", make_model_stock},
    {"arcee_fusion", make_arcee_fusion},
    {"karcher", make_karcher},
    {"task_arithmetic", make_task_arithmetic},
    {"ties", make_ties},
    {"dare_ties", make_dare_ties},
    {"dare_linear", make_dare_linear},
    {"breadcrumbs", make_breadcrumbs},
    {"breadcrumbs_ties", make_breadcrumbs_ties},
    {"della", make_della},
    {"della_linear", make_della_linear},
    {"multislerp", make_multislerp},
    {"nearswap", make_nearswap},
    {"sce", make_sce},
    {"ram", make_ram},
    {"ramplus_tl", make_ramplus_tl},
};

// The method objects, built on first use (thread-safe) and alive until exit, so find_method's
// pointers never dangle. Leaked on purpose: no destruction-order hazards at exit.
const std::vector<std::unique_ptr<Method>>& instances() {
  static const auto* methods = [] {
    auto* list = new std::vector<std::unique_ptr<Method>>;
    for (const Registration& r : kRegistry) list->push_back(r.make());
    return list;
  }();
  return *methods;
}

}  // namespace

const Method* find_method(std::string_view name) {
  const auto& methods = instances();
  for (size_t i = 0; i < std::size(kRegistry); ++i) {
    if (kRegistry[i].name == name) return methods[i].get();
  }
  return nullptr;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const Registration& r : kRegistry) names.emplace_back(r.name);
  return names;
}

}  // namespace smelt::methods
