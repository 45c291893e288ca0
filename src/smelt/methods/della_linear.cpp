// della_linear (docs/methods.md): task vectors kept with a probability that grows with their
// magnitude rank, L1-rescaled, then summed.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"
#include "smelt/methods/sparsify_ranked.h"

namespace smelt::methods {

std::unique_ptr<Method> make_della_linear() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "della_linear",
      .pretty_name = "Linear DELLA",
      .reference_url = "https://arxiv.org/abs/2406.11617",
      .sparsification = &della_sparsification(),
      .consensus = Consensus::kNone,
      .default_normalize = false,
      .default_rescale = true,
  });
}

}  // namespace smelt::methods
