// ramplus_tl (docs/methods.md): RAM with each model's unique entries boosted by how much of its
// change it shares with other models, measured per tensor.
#include "smelt/methods/factories.h"
#include "smelt/methods/ram.h"

namespace smelt::methods {

std::unique_ptr<Method> make_ramplus_tl() {
  return std::make_unique<RamMethod>(RamVariant{
      .name = "ramplus_tl",
      .pretty_name = "Reinforced Agent Merging Plus (Tensor-Local)",
      .tensor_local_boost = true,
  });
}

}  // namespace smelt::methods
