// CMA-ES after Hansen, "The CMA Evolution Strategy: A Tutorial" (docs/evolve.md lists the
// equations and defaults); variable names follow the tutorial.
#include "smelt/search/cmaes.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "smelt/error.h"

namespace smelt::search {
namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

std::vector<double> json_doubles(const nlohmann::json& j, const char* key, size_t n) {
  if (!j.contains(key) || !j[key].is_array() || j[key].size() != n)
    fail("CMA-ES state: \"{}\" is missing or does not hold {} numbers", key, n);
  std::vector<double> v;
  v.reserve(n);
  for (const auto& x : j[key]) {
    if (!x.is_number()) fail("CMA-ES state: \"{}\" holds a value that is not a number", key);
    v.push_back(x.get<double>());
  }
  return v;
}

}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u, v, s;
  do {
    u = 2.0 * uniform() - 1.0;
    v = 2.0 * uniform() - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  const double m = std::sqrt(-2.0 * std::log(s) / s);
  spare_ = v * m;
  has_spare_ = true;
  return u * m;
}

nlohmann::json Rng::to_json() const {
  nlohmann::json j;
  j["s"] = {s_[0], s_[1], s_[2], s_[3]};
  if (has_spare_) j["spare"] = spare_;
  return j;
}

Rng Rng::from_json(const nlohmann::json& j) {
  Rng r;
  if (!j.is_object() || !j.contains("s") || !j["s"].is_array() || j["s"].size() != 4)
    fail("CMA-ES state: the generator state is malformed");
  for (size_t i = 0; i < 4; ++i) {
    if (!j["s"][i].is_number_unsigned()) fail("CMA-ES state: the generator state is malformed");
    r.s_[i] = j["s"][i].get<uint64_t>();
  }
  if (j.contains("spare")) {
    r.has_spare_ = true;
    r.spare_ = j["spare"].get<double>();
  }
  return r;
}

void symmetric_eigen(const std::vector<double>& input, size_t n, std::vector<double>& values,
                     std::vector<double>& vectors) {
  std::vector<double> a = input;
  std::vector<double> v(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  double total = 0;
  for (double x : a) total += x * x;
  // Cyclic sweeps over the off-diagonal entries until they vanish against the whole matrix.
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (size_t p = 0; p < n; ++p)
      for (size_t q = p + 1; q < n; ++q) off += a[p * n + q] * a[p * n + q];
    if (off <= 1e-30 * total || off == 0) break;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        const double t =
            (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1.0 / std::sqrt(t * t + 1);
        const double s = t * c;
        // A ← Jᵀ A J with J the rotation in the (p, q) plane.
        for (size_t k = 0; k < n; ++k) {
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (size_t k = 0; k < n; ++k) {
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        a[p * n + q] = a[q * n + p] = 0;
        for (size_t k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t i, size_t j) { return a[i * n + i] < a[j * n + j]; });
  values.assign(n, 0);
  vectors.assign(n * n, 0);
  for (size_t c = 0; c < n; ++c) {
    values[c] = a[order[c] * n + order[c]];
    for (size_t r = 0; r < n; ++r) vectors[r * n + c] = v[r * n + order[c]];
  }
}

Cmaes::Cmaes(std::vector<double> x0, const CmaesOptions& options) {
  if (x0.empty()) fail("CMA-ES needs at least one parameter to search");
  if (!(options.sigma0 > 0) || !std::isfinite(options.sigma0))
    fail("--sigma0 {}: give a positive step size", options.sigma0);
  for (double x : x0)
    if (!std::isfinite(x)) fail("CMA-ES: the starting point has a value that is not finite");
  n_ = x0.size();
  lambda_ = options.population ? options.population
                               : 4 + static_cast<size_t>(std::floor(3 * std::log(double(n_))));
  if (lambda_ < 2) fail("--force-population-size {}: CMA-ES needs at least 2", lambda_);
  set_strategy_parameters();
  mean_ = std::move(x0);
  sigma_ = options.sigma0;
  pc_.assign(n_, 0);
  ps_.assign(n_, 0);
  c_.assign(n_ * n_, 0);
  b_.assign(n_ * n_, 0);
  for (size_t i = 0; i < n_; ++i) c_[i * n_ + i] = b_[i * n_ + i] = 1;
  d_.assign(n_, 1);
  rng_ = Rng(options.seed);
}

void Cmaes::set_strategy_parameters() {
  const double n = static_cast<double>(n_);
  mu_ = lambda_ / 2;
  weights_.resize(mu_);
  for (size_t i = 0; i < mu_; ++i)
    weights_[i] = std::log((static_cast<double>(lambda_) + 1) / 2) - std::log(double(i + 1));
  const double sum = std::accumulate(weights_.begin(), weights_.end(), 0.0);
  double sum_sq = 0;
  for (auto& w : weights_) {
    w /= sum;
    sum_sq += w * w;
  }
  mueff_ = 1 / sum_sq;
  cc_ = (4 + mueff_ / n) / (n + 4 + 2 * mueff_ / n);
  cs_ = (mueff_ + 2) / (n + mueff_ + 5);
  c1_ = 2 / ((n + 1.3) * (n + 1.3) + mueff_);
  cmu_ = std::min(1 - c1_, 2 * (mueff_ - 2 + 1 / mueff_) / ((n + 2) * (n + 2) + mueff_));
  damps_ = 1 + 2 * std::max(0.0, std::sqrt((mueff_ - 1) / (n + 1)) - 1) + cs_;
  chi_n_ = std::sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n));
}

void Cmaes::update_eigensystem() {
  // Enforce symmetry, then C = B diag(D²) Bᵀ.
  for (size_t i = 0; i < n_; ++i)
    for (size_t j = i + 1; j < n_; ++j) c_[j * n_ + i] = c_[i * n_ + j];
  std::vector<double> values;
  symmetric_eigen(c_, n_, values, b_);
  const double largest = std::max(values.back(), 1e-300);
  for (size_t i = 0; i < n_; ++i) d_[i] = std::sqrt(std::max(values[i], largest * 1e-20));
  eigen_evaluations_ = evaluations_;
}

const std::vector<std::vector<double>>& Cmaes::ask() {
  if (!asked_.empty()) return asked_;
  if (static_cast<double>(evaluations_ - eigen_evaluations_) >
      static_cast<double>(lambda_) / (c1_ + cmu_) / static_cast<double>(n_) / 10)
    update_eigensystem();
  asked_.assign(lambda_, std::vector<double>(n_));
  std::vector<double> z(n_), dz(n_);
  for (auto& x : asked_) {
    for (size_t i = 0; i < n_; ++i) z[i] = rng_.normal();
    for (size_t i = 0; i < n_; ++i) dz[i] = d_[i] * z[i];
    for (size_t r = 0; r < n_; ++r) {
      double y = 0;
      for (size_t c = 0; c < n_; ++c) y += b_[r * n_ + c] * dz[c];
      x[r] = mean_[r] + sigma_ * y;
    }
  }
  return asked_;
}

void Cmaes::tell(const std::vector<double>& f) {
  if (asked_.empty()) fail("CMA-ES: tell() without a generation asked");
  if (f.size() != lambda_) fail("CMA-ES: {} values told for {} candidates", f.size(), lambda_);
  const double n = static_cast<double>(n_);
  std::vector<size_t> order(lambda_);
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](size_t i) { return std::isnan(f[i]) ? INFINITY : f[i]; };
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return key(i) < key(j); });
  evaluations_ += lambda_;
  ++generation_;

  const std::vector<double> old_mean = mean_;
  std::fill(mean_.begin(), mean_.end(), 0.0);
  for (size_t k = 0; k < mu_; ++k)
    for (size_t i = 0; i < n_; ++i) mean_[i] += weights_[k] * asked_[order[k]][i];
  std::vector<double> step(n_);  // (m − m_old) / σ
  for (size_t i = 0; i < n_; ++i) step[i] = (mean_[i] - old_mean[i]) / sigma_;

  // p_σ ← (1 − c_σ) p_σ + sqrt(c_σ (2 − c_σ) μ_eff) C^(−1/2) step, C^(−1/2) = B D⁻¹ Bᵀ.
  std::vector<double> bt_step(n_, 0.0);
  for (size_t c = 0; c < n_; ++c) {
    double s = 0;
    for (size_t r = 0; r < n_; ++r) s += b_[r * n_ + c] * step[r];
    bt_step[c] = s / d_[c];
  }
  const double cs_norm = std::sqrt(cs_ * (2 - cs_) * mueff_);
  for (size_t r = 0; r < n_; ++r) {
    double s = 0;
    for (size_t c = 0; c < n_; ++c) s += b_[r * n_ + c] * bt_step[c];
    ps_[r] = (1 - cs_) * ps_[r] + cs_norm * s;
  }
  double ps_norm = 0;
  for (double x : ps_) ps_norm += x * x;
  ps_norm = std::sqrt(ps_norm);
  const double gen = static_cast<double>(evaluations_) / static_cast<double>(lambda_);
  const bool hsig =
      ps_norm / std::sqrt(1 - std::pow(1 - cs_, 2 * gen)) / chi_n_ < 1.4 + 2 / (n + 1);
  const double cc_norm = std::sqrt(cc_ * (2 - cc_) * mueff_);
  for (size_t i = 0; i < n_; ++i) pc_[i] = (1 - cc_) * pc_[i] + (hsig ? cc_norm * step[i] : 0.0);

  // C ← (1 − c1 − cμ + c1 (1 − h_σ) c_c (2 − c_c)) C + c1 p_c p_cᵀ + cμ Σ w_k y_k y_kᵀ.
  const double c1a = c1_ * (hsig ? 0.0 : cc_ * (2 - cc_));
  std::vector<std::vector<double>> y(mu_, std::vector<double>(n_));
  for (size_t k = 0; k < mu_; ++k)
    for (size_t i = 0; i < n_; ++i) y[k][i] = (asked_[order[k]][i] - old_mean[i]) / sigma_;
  for (size_t i = 0; i < n_; ++i) {
    for (size_t j = i; j < n_; ++j) {
      double rank_mu = 0;
      for (size_t k = 0; k < mu_; ++k) rank_mu += weights_[k] * y[k][i] * y[k][j];
      double& cij = c_[i * n_ + j];
      cij = (1 - c1_ - cmu_ + c1a) * cij + c1_ * pc_[i] * pc_[j] + cmu_ * rank_mu;
      c_[j * n_ + i] = cij;
    }
  }
  sigma_ *= std::exp(std::min(1.0, (cs_ / damps_) * (ps_norm / chi_n_ - 1)));
  asked_.clear();
}

std::vector<double> Cmaes::stds() const {
  std::vector<double> s(n_);
  for (size_t i = 0; i < n_; ++i) s[i] = sigma_ * std::sqrt(c_[i * n_ + i]);
  return s;
}

nlohmann::json Cmaes::to_json() const {
  nlohmann::json j;
  j["dimension"] = n_;
  j["population"] = lambda_;
  j["generation"] = generation_;
  j["evaluations"] = evaluations_;
  j["eigen_evaluations"] = eigen_evaluations_;
  j["sigma"] = sigma_;
  j["mean"] = mean_;
  j["pc"] = pc_;
  j["ps"] = ps_;
  j["C"] = c_;
  j["B"] = b_;
  j["D"] = d_;
  j["rng"] = rng_.to_json();
  return j;
}

Cmaes Cmaes::from_json(const nlohmann::json& j) {
  Cmaes s;
  auto count = [&](const char* key) -> size_t {
    if (!j.contains(key) || !j[key].is_number_unsigned())
      fail("CMA-ES state: \"{}\" is missing or not a count", key);
    return j[key].get<size_t>();
  };
  s.n_ = count("dimension");
  s.lambda_ = count("population");
  if (s.n_ == 0 || s.n_ > 100000 || s.lambda_ < 2 || s.lambda_ > 1000000)
    fail("CMA-ES state: dimension {} or population {} out of range", s.n_, s.lambda_);
  s.generation_ = count("generation");
  s.evaluations_ = count("evaluations");
  s.eigen_evaluations_ = count("eigen_evaluations");
  if (!j.contains("sigma") || !j["sigma"].is_number()) fail("CMA-ES state: \"sigma\" is missing");
  s.sigma_ = j["sigma"].get<double>();
  s.mean_ = json_doubles(j, "mean", s.n_);
  s.pc_ = json_doubles(j, "pc", s.n_);
  s.ps_ = json_doubles(j, "ps", s.n_);
  s.c_ = json_doubles(j, "C", s.n_ * s.n_);
  s.b_ = json_doubles(j, "B", s.n_ * s.n_);
  s.d_ = json_doubles(j, "D", s.n_);
  if (!j.contains("rng")) fail("CMA-ES state: \"rng\" is missing");
  s.rng_ = Rng::from_json(j["rng"]);
  s.set_strategy_parameters();
  return s;
}

}  // namespace smelt::search
