// Normalizers of tokenizer.json ("normalizer"): NFC, NFD, NFKC, NFKD, Lowercase, Strip, Replace,
// Prepend, BertNormalizer, StripAccents, Sequence, as the reference library defines them
// (docs/tokenizer.md).
#pragma once

#include <memory>
#include <string>

#include "smelt/tokenizer/json_where.h"

namespace smelt::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites valid UTF-8 `text` in place.
  virtual void normalize(std::string& text) const = 0;
};

// Builds the normalizer described at `w` (null gives nullptr); an unknown "type" throws naming
// the type and its JSON path.
std::unique_ptr<Normalizer> make_normalizer(const Json& value, const Where& w);

}  // namespace smelt::tok
