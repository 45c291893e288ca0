// Decoders of tokenizer.json ("decoder"): ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace,
// WordPiece, BPEDecoder, Sequence, as the reference library chains them (docs/tokenizer.md).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "smelt/tokenizer/json_where.h"

namespace smelt::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings; the decoded text is their concatenation afterwards.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Builds the decoder described at `w` (null gives nullptr); an unknown type throws naming it.
std::unique_ptr<Decoder> make_decoder(const Json& value, const Where& w);

}  // namespace smelt::tok
