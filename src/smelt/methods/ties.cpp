// ties (docs/methods.md): task vectors trimmed to their largest-magnitude entries, then sign
// election.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"

namespace smelt::methods {

std::unique_ptr<Method> make_ties() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "ties",
      .pretty_name = "TIES",
      .reference_url = "https://arxiv.org/abs/2306.01708",
      .sparsification = &magnitude_sparsification(),
      .consensus = Consensus::kSum,
      .default_normalize = true,
      .default_rescale = false,
  });
}

}  // namespace smelt::methods
