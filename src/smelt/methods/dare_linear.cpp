// dare_linear (docs/methods.md): task vectors randomly dropped and L1-rescaled, then summed.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"

namespace smelt::methods {

std::unique_ptr<Method> make_dare_linear() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "dare_linear",
      .pretty_name = "Linear DARE",
      .reference_url = "https://arxiv.org/abs/2311.03099",
      .sparsification = &random_sparsification(),
      .consensus = Consensus::kNone,
      .default_normalize = false,
      .default_rescale = true,
  });
}

}  // namespace smelt::methods
