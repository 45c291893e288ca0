// Streaming comparison of two models (`smelt diff`, docs/diff.md): per tensor, and per layer and
// module type, how far A moved from B, and with a base C how the task vectors A−C and B−C relate
// (norms, cosine, sign conflicts, what TIES keeps). Reads every tensor in fixed-size chunks, so
// memory does not grow with the model; results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/io/model_ref.h"

namespace smelt::analysis {

struct DiffOptions {
  double density = 0.2;  // TIES density: the fraction of each task vector's entries kept
  size_t threads = 1;
  uint64_t chunk_elements = uint64_t{1} << 16;  // rounded down to a multiple of 256
};

// Sums over the elements of one tensor (or of several: add() aggregates), from which every
// reported number is derived. τA = A − C and τB = B − C (computed in f32); the base fields stay 0
// without a base.
struct DiffStats {
  uint64_t numel = 0;
  double sq_a = 0, sq_b = 0, sq_diff = 0;  // Σa², Σb², Σ(a−b)²
  double sq_ta = 0, sq_tb = 0, dot = 0;    // Στa², Στb², Σ τa·τb
  uint64_t both_nonzero = 0;               // elements where τa ≠ 0 and τb ≠ 0
  uint64_t sign_conflicts = 0;             // ... and their signs differ
  // TIES at the density: each task vector keeps its top-k magnitudes (k = ⌊density·numel⌋),
  // the elected sign is that of the sum of the kept values.
  uint64_t ties_kept_a = 0, ties_kept_b = 0;    // nonzero kept entries of each
  uint64_t ties_agree_a = 0, ties_agree_b = 0;  // ... whose sign is the elected one
  uint64_t ties_nonzero = 0;                    // entries of the merged task vector ≠ 0

  void add(const DiffStats& other);
};

// The metrics reported from DiffStats; NaN where undefined (e.g. a zero norm in a ratio).
// "norm_a", "norm_b", "norm_diff" (‖A−B‖), "rel_change" (‖A−B‖/‖B‖), "norm_tau_a",
// "norm_tau_b", "cosine" (of τa and τb), "sign_conflicts" (sign_conflicts / both_nonzero),
// "ties_agree_a", "ties_agree_b" (kept entries surviving the sign election, as fractions of those
// kept), "ties_nonzero" (ties_nonzero / numel).
double metric(const DiffStats& s, std::string_view name);
// The metric names above; `with_base` adds those that need a base.
std::vector<std::string> metric_names(bool with_base);

struct TensorDiff {
  std::string name;
  std::vector<uint64_t> shape;
  int64_t layer = -1;  // index in the model's main layer stack, -1 for other tensors
  std::string module;  // module type ("q_proj", "down_proj", "norms", ...); "" when layer < 0
  DiffStats stats;
};

// One cell of the layer × module table: the sums of the tensors of that layer and module.
struct LayerModuleDiff {
  int64_t layer = 0;
  std::string module;
  DiffStats stats;
};

struct ModelDiff {
  bool has_base = false;
  double density = 0;
  std::vector<TensorDiff> tensors;      // in A's tensor order
  std::vector<LayerModuleDiff> layers;  // by layer, then in module_order
  std::vector<std::string> modules;     // the module types, in column order
  DiffStats total;
  // Tensors not compared: names present only in A, only in B, missing from the base, or whose
  // dtype is not a float type (integer buffers).
  std::vector<std::string> only_in_a, only_in_b, missing_in_base, not_float;
};

// The module type of a layer tensor's name suffix: the last component before ".weight"/".bias"
// ("self_attn.q_proj.weight" → "q_proj"), with every normalization layer grouped as "norms".
std::string module_type(std::string_view suffix);

// Compares every tensor present in a and b (and base, when given). Throws smelt::Error naming
// the tensor for shapes that differ, for tensors that cannot be read (a quantized type smelt
// cannot dequantize), and when a and b share no tensor at all.
ModelDiff diff_models(const io::Model& a, const io::Model& b, const io::Model* base,
                      const DiffOptions& options);

}  // namespace smelt::analysis
