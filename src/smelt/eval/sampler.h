// Choosing the next token (docs/eval.md): greedy, or sampling with temperature, top-k and top-p
// from a seeded counter-based generator (the same seed gives the same text).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "smelt/tokenizer/tokenizer.h"

namespace smelt::eval {

struct SamplerOptions {
  double temperature = 0;  // 0: greedy
  int top_k = 0;           // 0: no limit
  double top_p = 1.0;      // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);
  // The next token from a row of n logits.
  int32_t sample(const float* logits, size_t n);

 private:
  SamplerOptions o_;
  uint64_t key_;
  uint64_t draws_ = 0;
};

// Turns generated ids into text to print as it comes: the decoded text grows token by token,
// and a tail that is not yet whole UTF-8 (a byte token of a multi-byte character) is held back.
class TextStream {
 public:
  explicit TextStream(const tok::Tokenizer& tokenizer) : tok_(tokenizer) {}
  // The text to print after `id` (may be empty).
  std::string push(int32_t id);
  // What is left to print at the end (a held-back tail).
  std::string finish();
  const std::string& text() const { return text_; }

 private:
  const tok::Tokenizer& tok_;
  std::vector<int32_t> ids_;
  std::string text_;   // decode(ids_)
  std::string shown_;  // the text printed so far
};

}  // namespace smelt::eval
