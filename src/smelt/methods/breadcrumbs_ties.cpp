// breadcrumbs_ties (docs/methods.md): task vectors trimmed of their smallest and largest entries,
// then sign election.
#include "smelt/methods/factories.h"
#include "smelt/methods/gta.h"
#include "smelt/methods/sparsify_ranked.h"

namespace smelt::methods {

std::unique_ptr<Method> make_breadcrumbs_ties() {
  return std::make_unique<GtaMethod>(GtaVariant{
      .name = "breadcrumbs_ties",
      .pretty_name = "Model Breadcrumbs with TIES",
      .reference_url = "https://arxiv.org/abs/2312.06795",
      .sparsification = &magnitude_outliers_sparsification(),
      .consensus = Consensus::kSum,
      .default_normalize = false,
      .default_rescale = false,
  });
}

}  // namespace smelt::methods
