// CMA-ES, the evolution strategy `smelt evolve` searches merge parameters with (docs/evolve.md):
// the (μ/μ_w, λ) algorithm of Hansen's tutorial with rank-one and rank-μ covariance updates and
// cumulative step-size adaptation, driven by a seeded generator of our own so that one seed gives
// one sequence of candidates, bit for bit, whatever the machine's standard library.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

namespace smelt::search {

// xoshiro256** seeded through splitmix64, with normal deviates by Marsaglia's polar method: a
// generator whose integer stream is fixed by the seed on every platform (std::normal_distribution's
// output is implementation-defined, so it is not used).
class Rng {
 public:
  explicit Rng(uint64_t seed = 0);
  uint64_t next();
  // Uniform in [0, 1): the top 53 bits of next().
  double uniform();
  // Standard normal deviate.
  double normal();

  // The whole state (the generator and a cached deviate) as JSON, and back.
  nlohmann::json to_json() const;
  static Rng from_json(const nlohmann::json& j);

 private:
  uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0;
};

struct CmaesOptions {
  double sigma0 = 1.0 / 6.0;  // initial step size (mergekit-evolve's default)
  size_t population = 0;      // λ; 0: 4 + floor(3 ln n)
  uint64_t seed = 0;
};

// Minimises a function of a real vector by ask (λ candidates) / tell (their values). Everything
// that decides the next candidates is in the state that to_json() saves, so a search restored by
// from_json() continues exactly as the uninterrupted one would.
class Cmaes {
 public:
  // Starts at mean x0 (n ≥ 1) with step size options.sigma0 > 0; throws smelt::Error otherwise.
  Cmaes(std::vector<double> x0, const CmaesOptions& options);

  // The next generation's λ candidates (the same until tell() is called).
  const std::vector<std::vector<double>>& ask();
  // The values f (to minimise) of the candidates ask() returned, in their order; updates the
  // mean, the evolution paths, the covariance and the step size. NaN counts as worst.
  void tell(const std::vector<double>& f);

  size_t dimension() const { return n_; }
  size_t population() const { return lambda_; }
  size_t generation() const { return generation_; }
  size_t evaluations() const { return evaluations_; }
  double sigma() const { return sigma_; }
  const std::vector<double>& mean() const { return mean_; }
  // The standard deviation of each coordinate (σ·sqrt(C_ii)).
  std::vector<double> stds() const;

  nlohmann::json to_json() const;
  // Throws smelt::Error when the JSON is not a state to_json() wrote.
  static Cmaes from_json(const nlohmann::json& j);

 private:
  Cmaes() = default;
  void set_strategy_parameters();
  void update_eigensystem();

  // Strategy parameters (functions of n and λ only; recomputed on load).
  size_t n_ = 0, lambda_ = 0, mu_ = 0;
  std::vector<double> weights_;
  double mueff_ = 0, cc_ = 0, cs_ = 0, c1_ = 0, cmu_ = 0, damps_ = 0, chi_n_ = 0;

  // State.
  std::vector<double> mean_;
  double sigma_ = 0;
  std::vector<double> pc_, ps_;
  std::vector<double> c_;  // covariance, n × n row-major
  std::vector<double> b_;  // eigenvectors of C as columns, n × n row-major
  std::vector<double> d_;  // square roots of C's eigenvalues
  size_t generation_ = 0, evaluations_ = 0, eigen_evaluations_ = 0;
  Rng rng_;

  // The generation asked and not yet told (not saved: a state is saved between generations).
  std::vector<std::vector<double>> asked_;
};

// Eigendecomposition of a symmetric n × n row-major matrix by cyclic Jacobi rotations: fills
// `values` and `vectors` (eigenvectors as columns, row-major), sorted by ascending value.
void symmetric_eigen(const std::vector<double>& a, size_t n, std::vector<double>& values,
                     std::vector<double>& vectors);

}  // namespace smelt::search
