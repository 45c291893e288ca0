// task_arithmetic (docs/methods.md): the base plus the weighted sum of task vectors.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"

namespace smelt::methods {

std::unique_ptr<Method> make_task_arithmetic() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "task_arithmetic",
      .pretty_name = "Task Arithmetic",
      .reference_url = "https://arxiv.org/abs/2212.04089",
      .sparsification = nullptr,
      .consensus = Consensus::kNone,
      .default_normalize = false,
      .default_rescale = false,
  });
}

}  // namespace smelt::methods
