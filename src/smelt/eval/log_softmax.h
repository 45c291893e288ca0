// Log-probabilities from a row of logits, in double precision (docs/eval.md).
#pragma once

#include <cstddef>
#include <cstdint>

namespace smelt::eval {

// log(sum_i exp(logits[i])), max-subtracted.
double log_sum_exp(const float* logits, size_t n);
// The first index of the largest logit (ties go to the lowest id, as argmax does).
int32_t argmax(const float* logits, size_t n);

}  // namespace smelt::eval
