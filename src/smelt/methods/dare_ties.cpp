// dare_ties (docs/methods.md): task vectors randomly dropped and L1-rescaled, then sign election.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"

namespace smelt::methods {

std::unique_ptr<Method> make_dare_ties() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "dare_ties",
      .pretty_name = "DARE TIES",
      .reference_url = "https://arxiv.org/abs/2311.03099",
      .sparsification = &random_sparsification(),
      .consensus = Consensus::kSum,
      .default_normalize = false,
      .default_rescale = true,
  });
}

}  // namespace smelt::methods
