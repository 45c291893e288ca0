// Internal to smelt/methods: the factory of every method (one per method file, listed in
// registry.cpp) and the helpers that method files share.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "smelt/methods/method.h"
#include "smelt/methods/partials.h"

namespace smelt::methods {

// One factory per method file, in registry order. A new method adds a file defining make_<name>,
// a declaration here and one line in registry.cpp.
std::unique_ptr<Method> make_linear();
std::unique_ptr<Method> make_slerp();
std::unique_ptr<Method> make_nuslerp();
std::unique_ptr<Method> make_passthrough();
std::unique_ptr<Method> make_model_stock();
std::unique_ptr<Method> make_arcee_fusion();
std::unique_ptr<Method> make_karcher();
std::unique_ptr<Method> make_task_arithmetic();
std::unique_ptr<Method> make_ties();
std::unique_ptr<Method> make_dare_ties();
std::unique_ptr<Method> make_dare_linear();
std::unique_ptr<Method> make_breadcrumbs();
std::unique_ptr<Method> make_breadcrumbs_ties();
std::unique_ptr<Method> make_della();
std::unique_ptr<Method> make_della_linear();
std::unique_ptr<Method> make_multislerp();
std::unique_ptr<Method> make_nearswap();
std::unique_ptr<Method> make_sce();
std::unique_ptr<Method> make_ram();
std::unique_ptr<Method> make_ramplus_tl();

// Input `input`'s value of per-model parameter `name`, or `fallback` when it has none (the
// planner normally fills declared defaults; this keeps methods total when it did not).
inline double model_value_or(const TensorContext& ctx, size_t input, const std::string& name,
                             double fallback) {
  return ctx.params->model_value(input, name).value_or(fallback);
}

}  // namespace smelt::methods
