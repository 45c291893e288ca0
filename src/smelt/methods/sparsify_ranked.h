// The rank-based sparsifications (docs/methods.md) used by breadcrumbs* (magnitude_outliers) and
// della* (della_magprune), as Sparsification primitives for the GTA family (gta.h).
//
// Both rank elements in one total order, the one ties' top-k uses: a ranks above b when
// |a| > |b|, or |a| = |b| and a has the lower element index (|x| compared as magnitude_bits, so
// −0 = +0 and NaN ranks above +inf). mergekit breaks such ties however torch's sort does.
#pragma once

#include "smelt/methods/gta.h"

namespace smelt::methods {

// magnitude_outliers (breadcrumbs): with N = numel, keep = ⌊density·N⌋, n_top = ⌊gamma·N⌋,
// n_bot = N − keep − n_top (if negative: n_top += n_bot, n_bot = 0), drops the n_top highest- and
// the n_bot lowest-ranked elements, so exactly `keep` remain. Two streaming top-k selections
// (topk.h) over the same passes: kept = top(keep + n_top) minus top(n_top). M parameter gamma
// (default 0.01, must be ≥ 0). n_top = 0 drops nothing at the top (mergekit's slice [n_bot:-0] is
// empty and zeroes the whole delta); keep = 0 drops the task vector, with a warning.
const Sparsification& magnitude_outliers_sparsification();

// della_magprune (della): keeps element j with probability p_j that grows with its rank inside
// its group, the elements sharing every index but the one along dim 1 (a row of a 2-D tensor; a
// 1-D tensor is one group; chunks hold whole slices along dim 0 so every group is in one chunk).
// With n the group size and rank r ∈ [1, n] (1 = lowest in the order above), in f32:
// rank_norm = (r − 1)/(n − 1), p = float(density − ε) + (rank_norm·2)·float(ε); n = 1 gives
// p = float(density) (mergekit divides 0 by 0 there and gets NaN). Element j is kept when
// draw_uniform(stream_key(seed, tensor, input), j) < p: the key DARE uses, so ε = 0 gives
// DARE's mask. M parameter epsilon (default 0.15); for 0 < density < 1 it must satisfy
// density − ε > 0 and density + ε < 1 (mergekit's ValueError). density ≤ 0 keeps nothing.
const Sparsification& della_sparsification();

}  // namespace smelt::methods
