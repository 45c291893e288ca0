// della (docs/methods.md): task vectors kept with a probability that grows with their magnitude
// rank, L1-rescaled, then sign election.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"
#include "smelt/methods/sparsify_ranked.h"

namespace smelt::methods {

std::unique_ptr<Method> make_della() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "della",
      .pretty_name = "DELLA",
      .reference_url = "https://arxiv.org/abs/2406.11617",
      .sparsification = &della_sparsification(),
      .consensus = Consensus::kSum,
      .default_normalize = true,
      .default_rescale = true,
  });
}

}  // namespace smelt::methods
