#include "smelt/eval/log_softmax.h"

#include <cmath>

namespace smelt::eval {

double log_sum_exp(const float* logits, size_t n) {
  float mx = logits[0];
  for (size_t i = 1; i < n; ++i) mx = logits[i] > mx ? logits[i] : mx;
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return static_cast<double>(mx) + std::log(sum);
}

int32_t argmax(const float* logits, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

}  // namespace smelt::eval
