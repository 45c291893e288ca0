// CMA-ES (src/smelt/search/cmaes.h): convergence on standard test functions, determinism of a
// seed, and a saved state continuing exactly as the uninterrupted search.
#include "smelt/search/cmaes.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "smelt/error.h"

namespace smelt::search {
namespace {

using Function = std::function<double(const std::vector<double>&)>;

double sphere(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return s;
}

// An ellipsoid with condition number 1e4, turned by a fixed rotation so that the axes are not
// the coordinate axes (what the covariance has to learn).
double rotated_ellipsoid(const std::vector<double>& x) {
  const size_t n = x.size();
  double f = 0;
  for (size_t i = 0; i < n; ++i) {
    // y = R x with R a product of plane rotations by 0.5 rad over neighbouring coordinates.
    double y = 0;
    for (size_t j = 0; j < n; ++j) {
      const double angle = 0.7 * static_cast<double>((i + 1) * (j + 2));
      y += std::cos(angle) * x[j] / std::sqrt(static_cast<double>(n));
    }
    f += std::pow(1e4, static_cast<double>(i) / static_cast<double>(n - 1)) * y * y;
  }
  return f;
}

double rosenbrock(const std::vector<double>& x) {
  double f = 0;
  for (size_t i = 0; i + 1 < x.size(); ++i)
    f += 100 * std::pow(x[i + 1] - x[i] * x[i], 2) + std::pow(1 - x[i], 2);
  return f;
}

// Runs until f < target or the budget is spent; returns the evaluations used.
size_t minimise(Cmaes& es, const Function& f, double target, size_t budget, double* best) {
  *best = INFINITY;
  while (es.evaluations() < budget) {
    const auto& xs = es.ask();
    std::vector<double> values;
    for (const auto& x : xs) values.push_back(f(x));
    for (double v : values) *best = std::min(*best, v);
    es.tell(values);
    if (*best < target) break;
  }
  return es.evaluations();
}

TEST(Rng, SameSeedSameStreamAndNormalMoments) {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.next(), b.next());
  EXPECT_NE(Rng(42).next(), c.next());
  // splitmix64(0) then xoshiro256**: a value any correct implementation reproduces.
  Rng r(0);
  const uint64_t first = r.next();
  Rng r2(0);
  EXPECT_EQ(first, r2.next());
  double sum = 0, sum_sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double z = a.normal();
    sum += z;
    sum_sq += z * z;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.02);
  for (int i = 0; i < 1000; ++i) {
    const double u = a.uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(SymmetricEigen, ReconstructsTheMatrix) {
  const size_t n = 5;
  std::vector<double> a(n * n);
  Rng rng(7);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i; j < n; ++j) a[i * n + j] = a[j * n + i] = rng.normal();
  std::vector<double> values, vectors;
  symmetric_eigen(a, n, values, vectors);
  for (size_t i = 1; i < n; ++i) EXPECT_LE(values[i - 1], values[i]);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      double r = 0, dot = 0;
      for (size_t k = 0; k < n; ++k) {
        r += vectors[i * n + k] * values[k] * vectors[j * n + k];
        dot += vectors[k * n + i] * vectors[k * n + j];
      }
      EXPECT_NEAR(r, a[i * n + j], 1e-12);
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-12);
    }
  }
}

TEST(Cmaes, ConvergesOnTheSphere) {
  Cmaes es(std::vector<double>(10, 1.0), {.sigma0 = 0.5, .seed = 1});
  EXPECT_EQ(es.population(), 10u);  // 4 + floor(3 ln 10)
  double best;
  const size_t used = minimise(es, sphere, 1e-8, 3000, &best);
  EXPECT_LT(best, 1e-8);
  EXPECT_LT(used, 1600u);  // about 1300 (pycma needs about as many)
}

TEST(Cmaes, LearnsARotatedIllConditionedEllipsoid) {
  Cmaes es(std::vector<double>(5, 1.0), {.sigma0 = 0.5, .seed = 2});
  double best;
  const size_t used = minimise(es, rotated_ellipsoid, 1e-8, 4000, &best);
  EXPECT_LT(best, 1e-8);
  EXPECT_LT(used, 2400u);  // about 1800
}

TEST(Cmaes, SolvesRosenbrock) {
  Cmaes es(std::vector<double>(3, 0.0), {.sigma0 = 0.5, .seed = 3});
  double best;
  const size_t used = minimise(es, rosenbrock, 1e-8, 5000, &best);
  EXPECT_LT(best, 1e-8);
  EXPECT_LT(used, 1400u);  // about 1000
}

TEST(Cmaes, SameSeedGivesBitIdenticalCandidates) {
  auto run = [](uint64_t seed) {
    Cmaes es(std::vector<double>(4, 0.25), {.sigma0 = 1.0 / 6, .seed = seed});
    std::vector<double> all;
    for (int g = 0; g < 20; ++g) {
      const auto& xs = es.ask();
      std::vector<double> f;
      for (const auto& x : xs) {
        all.insert(all.end(), x.begin(), x.end());
        f.push_back(rosenbrock(x));
      }
      es.tell(f);
    }
    return all;
  };
  const auto a = run(5), b = run(5), c = run(6);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)), 0);
  EXPECT_NE(a, c);
}

TEST(Cmaes, SavedStateContinuesExactly) {
  Cmaes whole(std::vector<double>(6, 0.5), {.sigma0 = 0.3, .seed = 9});
  Cmaes part(std::vector<double>(6, 0.5), {.sigma0 = 0.3, .seed = 9});
  auto step = [](Cmaes& es) {
    const auto xs = es.ask();
    std::vector<double> f;
    for (const auto& x : xs) f.push_back(rotated_ellipsoid(x));
    es.tell(f);
    return xs;
  };
  for (int g = 0; g < 7; ++g) {
    step(whole);
    step(part);
  }
  // Through text, as the checkpoint file holds it.
  Cmaes restored = Cmaes::from_json(nlohmann::json::parse(part.to_json().dump()));
  for (int g = 0; g < 30; ++g) {
    const auto a = step(whole);
    const auto b = step(restored);
    ASSERT_EQ(a, b) << "generation " << g;
  }
  EXPECT_EQ(whole.to_json().dump(), restored.to_json().dump());
}

TEST(Cmaes, RejectsBadSettingsAndStates) {
  EXPECT_THROW(Cmaes({}, {}), Error);
  EXPECT_THROW(Cmaes({1.0}, {.sigma0 = 0}), Error);
  EXPECT_THROW(Cmaes({1.0}, {.sigma0 = 0.1, .population = 1}), Error);
  EXPECT_THROW(Cmaes::from_json(nlohmann::json::parse(R"({"dimension": 2})")), Error);
  Cmaes es({1.0, 2.0}, {.sigma0 = 0.1, .population = 3});
  EXPECT_EQ(es.population(), 3u);
  EXPECT_THROW(es.tell({1, 2, 3}), Error);  // nothing asked yet
  es.ask();
  EXPECT_THROW(es.tell({1, 2}), Error);
}

}  // namespace
}  // namespace smelt::search
