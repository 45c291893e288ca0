// Perplexity of a text exactly as llama.cpp's perplexity tool computes it (docs/eval.md): chunks
// of n_ctx tokens, each chunk's first token replaced by BOS, the second half of each chunk scored.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "smelt/infer/language_model.h"

namespace smelt::eval {

struct PerplexityOptions {
  int n_ctx = 512;
  // When set, each chunk's first token is replaced by this id for decoding (llama.cpp does so
  // when the vocabulary adds BOS).
  std::optional<int32_t> bos;
  // Called after each chunk with (chunks done, chunks in all, tokens scored so far); returning
  // false stops before the next chunk (the result then covers the chunks done).
  std::function<bool(size_t, size_t, size_t)> on_chunk;
  // The UTF-8 bytes of the text that the given tokens spell (for bits per byte); unset = 0.
  std::function<uint64_t(const std::vector<int32_t>&)> bytes_of;
};

struct PerplexityResult {
  int n_ctx = 0;                 // tokens per chunk
  size_t chunks = 0;             // chunks scored
  size_t chunks_total = 0;       // chunks the text holds
  size_t tokens = 0;             // tokens scored
  double nll_sum = 0;            // sum of -log p over the scored tokens
  double nll2_sum = 0;           // sum of squares (for the standard error)
  uint64_t bytes = 0;            // UTF-8 bytes of the scored tokens
  double ppl() const;            // exp(mean nll)
  double ppl_stderr() const;     // llama.cpp's ± : sqrt(var/(n-1)) * ppl
  double bits_per_byte() const;  // nll_sum / bytes / ln 2 (0 when bytes is 0)
};

// `tokens` is the whole text tokenized once (BOS already prepended when the vocabulary adds it,
// as llama.cpp tokenizes). Throws smelt::Error when there are fewer than 2 * n_ctx tokens or
// n_ctx exceeds the model's context.
PerplexityResult perplexity(infer::LanguageModel& lm, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& options);

}  // namespace smelt::eval
