// What scoring and generation need from a model (docs/eval.md): a causal language model with a
// KV cache for one sequence. The forward pass (model.h) implements it; tests implement it with
// logits they construct.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace smelt::infer {

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual int vocab_size() const = 0;
  // The most positions the cache holds (the --ctx the session was made with).
  virtual int context_size() const = 0;
  // Positions in the cache.
  virtual int n_past() const = 0;
  // Keeps the first n positions (n <= n_past()); truncate(0) clears the cache.
  virtual void truncate(int n) = 0;
  // Appends `tokens` at positions n_past() ... and writes the logits of the last `n_logits` of
  // them (0 <= n_logits <= tokens.size()) to `logits`, n_logits x vocab_size() f32, row i being
  // the prediction after token tokens.size() - n_logits + i. Throws smelt::Error when the cache
  // would overflow context_size() or a token is outside the vocabulary.
  virtual void decode(std::span<const int32_t> tokens, int n_logits,
                      std::vector<float>& logits) = 0;
};

}  // namespace smelt::infer
