// A model ready to score: its forward pass, its tokenizer and its special tokens (docs/eval.md).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "smelt/infer/model.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::eval {

struct EvalModel {
  std::string label;  // the name shown in tables (the argument as given)
  std::unique_ptr<infer::Model> model;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  // The token encode(text, add_special_tokens) puts before the text, if any: llama.cpp's
  // add_bos, which perplexity's chunks start with.
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;  // generation stops at these
};

// Opens a model folder or .gguf file with its tokenizer (the folder's tokenizer files, or the
// GGUF's own vocabulary); `path` may also be `MODEL+LORA` (a PEFT adapter applied to the model's
// weights: io/model_ref.h). Throws smelt::Error naming the model when it has no tokenizer.
EvalModel open_eval_model(const std::string& path, const infer::LoadOptions& options);

// Sets bos and eos of a model and tokenizer pair (by encoding a probe text with and without
// special tokens; eos from the model's config, else the tokenizer's EOS-looking special tokens).
void resolve_special_tokens(EvalModel& m);

}  // namespace smelt::eval
