#include "smelt/eval/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "smelt/error.h"
#include "smelt/eval/log_softmax.h"
#include "smelt/kernels/random.h"

namespace smelt::eval {

Sampler::Sampler(const SamplerOptions& options)
    : o_(options), key_(kernels::stream_key(options.seed, "smelt generate")) {
  if (!(o_.temperature >= 0) || !std::isfinite(o_.temperature))
    fail("--temperature must be a number >= 0");
  if (o_.top_k < 0) fail("--top-k must be >= 0");
  if (!(o_.top_p > 0 && o_.top_p <= 1)) fail("--top-p must be in (0, 1]");
}

int32_t Sampler::sample(const float* logits, size_t n) {
  if (o_.temperature == 0) return argmax(logits, n);
  // Candidates by decreasing logit (ties: lower id first), cut to top-k.
  std::vector<int32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  const size_t k = o_.top_k > 0 ? std::min(n, static_cast<size_t>(o_.top_k)) : n;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), by_logit);
  ids.resize(k);
  std::vector<double> p(k);
  const double mx = logits[ids[0]];
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += p[i] = std::exp((logits[ids[i]] - mx) / o_.temperature);
  // top-p: the smallest prefix whose probability reaches p.
  size_t keep = k;
  if (o_.top_p < 1) {
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      cum += p[i] / sum;
      if (cum >= o_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[i];
  const double u = static_cast<double>(kernels::random_uniform(key_, draws_++)) * total;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return ids[i];
  }
  return ids[keep - 1];
}

namespace {

// Bytes at the end of s that start a UTF-8 character not yet complete, or a U+FFFD the decoder
// put for such bytes.
size_t incomplete_tail(const std::string& s) {
  if (s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0) return 3;
  size_t i = s.size(), back = 0;
  while (i > 0 && back < 4) {
    const unsigned char c = static_cast<unsigned char>(s[i - 1]);
    ++back;
    if ((c & 0xC0) == 0x80) {
      --i;
      continue;
    }
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace

std::string TextStream::push(int32_t id) {
  ids_.push_back(id);
  text_ = tok_.decode(ids_);
  const size_t ready = text_.size() - incomplete_tail(text_);
  // Decoders may rewrite earlier text (a leading space dropped); print only a stable extension.
  if (ready <= shown_.size() || text_.compare(0, shown_.size(), shown_) != 0) return "";
  std::string out = text_.substr(shown_.size(), ready - shown_.size());
  shown_.assign(text_, 0, ready);
  return out;
}

std::string TextStream::finish() {
  if (shown_.size() >= text_.size() || text_.compare(0, shown_.size(), shown_) != 0) return "";
  std::string out = text_.substr(shown_.size());
  shown_ = text_;
  return out;
}

}  // namespace smelt::eval
