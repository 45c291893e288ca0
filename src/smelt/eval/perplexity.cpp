#include "smelt/eval/perplexity.h"

#include <cmath>

#include "smelt/error.h"
#include "smelt/eval/log_softmax.h"

namespace smelt::eval {

double PerplexityResult::ppl() const {
  return tokens ? std::exp(nll_sum / static_cast<double>(tokens)) : 0.0;
}

double PerplexityResult::ppl_stderr() const {
  if (tokens < 2) return 0.0;
  const double n = static_cast<double>(tokens);
  const double mean = nll_sum / n;
  const double var = nll2_sum / n - mean * mean;
  return std::sqrt(std::max(var, 0.0) / (n - 1)) * ppl();
}

double PerplexityResult::bits_per_byte() const {
  return bytes ? nll_sum / static_cast<double>(bytes) / std::log(2.0) : 0.0;
}

PerplexityResult perplexity(infer::LanguageModel& lm, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& o) {
  const int n_ctx = o.n_ctx;
  if (n_ctx < 4) fail("--ctx {}: the context must hold at least 4 tokens", n_ctx);
  if (n_ctx > lm.context_size()) {
    fail("--ctx {} is larger than the session's context of {} tokens", n_ctx, lm.context_size());
  }
  if (tokens.size() < 2 * static_cast<size_t>(n_ctx)) {
    fail(
        "the text is {} tokens long; perplexity with --ctx {} needs at least {} (two chunks, as "
        "llama.cpp's perplexity tool requires): give a longer text or a smaller --ctx",
        tokens.size(), n_ctx, 2 * n_ctx);
  }
  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.chunks_total = tokens.size() / static_cast<size_t>(n_ctx);
  const int first = n_ctx / 2;
  const size_t vocab = static_cast<size_t>(lm.vocab_size());
  std::vector<float> logits;
  for (size_t c = 0; c < r.chunks_total; ++c) {
    const size_t start = c * static_cast<size_t>(n_ctx);
    std::vector<int32_t> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(start),
                               tokens.begin() + static_cast<std::ptrdiff_t>(start + n_ctx));
    if (o.bos) chunk[0] = *o.bos;
    lm.truncate(0);
    // Logits of positions first ... n_ctx-1 (the last one predicts past the chunk, unused).
    lm.decode(chunk, n_ctx - first, logits);
    std::vector<int32_t> scored;
    for (int j = first; j < n_ctx - 1; ++j) {
      const float* row = logits.data() + static_cast<size_t>(j - first) * vocab;
      const int32_t next = tokens[start + static_cast<size_t>(j) + 1];
      const double nll = log_sum_exp(row, vocab) - static_cast<double>(row[next]);
      r.nll_sum += nll;
      r.nll2_sum += nll * nll;
      ++r.tokens;
      scored.push_back(next);
    }
    if (o.bytes_of) r.bytes += o.bytes_of(scored);
    ++r.chunks;
    if (o.on_chunk && !o.on_chunk(r.chunks, r.chunks_total, r.tokens)) break;
  }
  return r;
}

}  // namespace smelt::eval
