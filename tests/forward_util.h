// Running smelt's forward pass in tests: every position's log-softmax from one decode, and the
// largest difference between two such results.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "smelt/infer/model.h"

namespace smelt::testing {

// Every position's log-softmax (in double) from one decode of `ids` on a fresh session.
inline std::vector<std::vector<double>> smelt_log_softmax_all(const infer::Model& model,
                                                              const std::vector<int>& ids) {
  auto s = model.new_session(static_cast<int>(ids.size()) + 4);
  std::vector<int32_t> t(ids.begin(), ids.end());
  std::vector<float> logits;
  s->decode(t, static_cast<int>(t.size()), logits);
  const size_t V = static_cast<size_t>(s->vocab_size());
  EXPECT_EQ(logits.size(), V * ids.size());
  std::vector<std::vector<double>> out;
  for (size_t r = 0; r < ids.size(); ++r) {
    std::vector<double> z(logits.begin() + r * V, logits.begin() + (r + 1) * V);
    const double mx = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double x : z) sum += std::exp(x - mx);
    for (double& x : z) x -= mx + std::log(sum);
    out.push_back(std::move(z));
  }
  return out;
}

inline double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

inline double max_diff(const std::vector<std::vector<double>>& a,
                       const std::vector<std::vector<double>>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, max_diff(a[i], b[i]));
  return d;
}

}  // namespace smelt::testing
