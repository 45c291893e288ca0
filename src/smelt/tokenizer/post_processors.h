// Post-processors of tokenizer.json ("post_processor"): TemplateProcessing, BertProcessing,
// RobertaProcessing, ByteLevel (no change to ids), Sequence (docs/tokenizer.md).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "smelt/tokenizer/json_where.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence (called when add_special_tokens is set).
  virtual void process(Encoding& encoding) const = 0;
  // How many ids process() adds (truncation leaves room for them).
  virtual size_t added_tokens() const = 0;
};

// Builds the post-processor described at `w` (null gives nullptr); unknown types and template
// special tokens missing from "special_tokens" throw naming the JSON path.
std::unique_ptr<PostProcessor> make_post_processor(const Json& value, const Where& w);

// One special token a template inserts: its ids and token strings.
struct SpecialPiece {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
};
// A processor that puts `before` ahead of the sequence and `after` behind it (the BOS/EOS rule of
// tokenizer_config.json's add_bos_token / add_eos_token).
std::unique_ptr<PostProcessor> make_wrap_processor(SpecialPiece before, SpecialPiece after);

}  // namespace smelt::tok
