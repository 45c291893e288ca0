// PEFT's merge utilities on flat tensors (docs/lora_extract.md, "Combining"): magnitude and
// DARE pruning, majority sign election and disjoint merge, and the combination of several
// tensors by each add_weighted_adapter type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::lora {

enum class CombinationType {
  kLinear,
  kCat,
  kSvd,
  kTies,
  kTiesSvd,
  kDareLinear,
  kDareTies,
  kDareLinearSvd,
  kDareTiesSvd,
  kMagnitudePrune,
  kMagnitudePruneSvd
};
enum class MajoritySign { kTotal, kFrequency };

// "linear", "cat", ... as PEFT names them. parse throws smelt::Error listing the names.
CombinationType parse_combination_type(std::string_view name);
std::string combination_name(CombinationType type);
// The *_svd types and svd: combine full deltas, then decompose.
bool is_svd_type(CombinationType type);
// Whether the type needs --density (ties, dare_*, magnitude_prune and their svd forms).
bool needs_density(CombinationType type);

// Keeps the int(density · n) elements of largest magnitude (ties by element order), zeroes the
// rest; density >= 1 keeps everything. Throws smelt::Error for density < 0.
void magnitude_prune(std::vector<float>& t, double density);

// DARE: keeps each element with probability density (draw_uniform of element i of stream `key`
// below density) and divides the kept ones by density; density >= 1 keeps everything unchanged.
void dare_prune(std::vector<float>& t, double density, uint64_t key);

// Σ w_i t_i.
std::vector<float> task_arithmetic(const std::vector<std::vector<float>>& t,
                                   const std::vector<double>& w);

// The elected sign per element: sign(Σ t_i) (kTotal) or sign(Σ sign t_i) (kFrequency), 0 → +1;
// then Σ w_i t_i over the i whose sign equals it, divided by max(1, how many). Zeros never count.
std::vector<float> disjoint_merge(const std::vector<std::vector<float>>& t,
                                  const std::vector<double>& w, MajoritySign sign);

// PEFT's F for a type (its non-svd form): linear → task_arithmetic, ties → magnitude_prune each,
// then disjoint_merge; dare_linear → dare_prune each, then task_arithmetic; dare_ties →
// dare_prune each, then disjoint_merge; magnitude_prune → magnitude_prune each, then
// task_arithmetic. Tensor i's DARE stream is kernels::stream_key(seed, label, i). `t` is consumed.
std::vector<float> combine_tensors(CombinationType type, std::vector<std::vector<float>> t,
                                   const std::vector<double>& w, double density, MajoritySign sign,
                                   uint64_t seed, const std::string& label);

}  // namespace smelt::lora
