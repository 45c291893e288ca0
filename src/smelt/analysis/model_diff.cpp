// Streaming per-tensor statistics of two models and their task vectors (docs/diff.md).
#include "smelt/analysis/model_diff.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <numeric>

#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/exec/thread_pool.h"
#include "smelt/interrupt.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/ggml_type.h"
#include "smelt/kernels/quant.h"
#include "smelt/kernels/topk.h"
#include "smelt/plan/architecture.h"

namespace smelt::analysis {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double ratio(double num, double den) { return den > 0 ? num / den : kNaN; }

// Bytes of `n` elements of `t` as stored (whole blocks for quantized GGUF tensors).
uint64_t stored_bytes(const io::TensorInfo& t, uint64_t n) {
  if (t.quantized()) {
    const auto* tr = kernels::ggml_type_traits(static_cast<kernels::GgmlType>(t.ggml_type));
    return (n + tr->block_elems - 1) / tr->block_elems * tr->block_bytes;
  }
  return n * static_cast<uint64_t>(std::max(1, dtype_bits(t.dtype) / 8));
}

// True when diff can read `t` as f32: a float dtype, or a GGUF type smelt dequantizes whose
// blocks divide 256 (the chunk sizes are multiples of 256).
bool readable(const io::TensorInfo& t) {
  if (t.quantized()) {
    const auto* tr = kernels::ggml_type_traits(static_cast<kernels::GgmlType>(t.ggml_type));
    return tr && tr->can_dequantize && tr->block_elems > 0 && 256 % tr->block_elems == 0;
  }
  return dtype_is_convertible_float(t.dtype);
}

// Reads elements [offset, offset + n) of `t` as f32 into dst, through `raw` (stored_bytes).
void read_f32(const io::ModelTensor& t, uint64_t offset, size_t n, char* raw, float* dst) {
  const io::TensorInfo& info = *t.info;
  if (info.quantized()) {
    const auto type = static_cast<kernels::GgmlType>(info.ggml_type);
    const auto* tr = kernels::ggml_type_traits(type);
    t.file->read(info, offset / tr->block_elems * tr->block_bytes, raw, stored_bytes(info, n));
    kernels::dequantize(type, raw, dst, n);
  } else {
    t.file->read(info, stored_bytes(info, offset), raw, stored_bytes(info, n));
    kernels::to_f32(info.dtype, raw, dst, n);
  }
}

// One worker's chunk buffers.
struct Buffers {
  std::vector<char> raw;
  std::vector<float> a, b, c, ta, tb;
  explicit Buffers(size_t chunk)
      : raw(chunk * 8), a(chunk), b(chunk), c(chunk), ta(chunk), tb(chunk) {}
};

struct Job {
  io::ModelTensor a, b, c;  // c.info == nullptr without a base
  uint64_t numel = 0;
};

// Adds one chunk's sums to `s`. Each sum runs in kLanes interleaved accumulators (element i goes
// to lane i % kLanes) combined in lane order: no dependency chain for the compiler to wait on,
// and a result that depends only on the chunk's values. Differences are taken in double, exact
// for f32 inputs, so a known delta reads back exactly.
void add_chunk_sums(const float* a, const float* b, const float* c, size_t n, DiffStats& s) {
  constexpr size_t kLanes = 8;
  double sq_a[kLanes] = {}, sq_b[kLanes] = {}, sq_diff[kLanes] = {};
  const size_t body = n / kLanes * kLanes;
  for (size_t i = 0; i < body; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) {
      const double x = a[i + l], y = b[i + l], d = x - y;
      sq_a[l] += x * x;
      sq_b[l] += y * y;
      sq_diff[l] += d * d;
    }
  }
  for (size_t i = body; i < n; ++i) {
    const double x = a[i], y = b[i], d = x - y;
    sq_a[0] += x * x, sq_b[0] += y * y, sq_diff[0] += d * d;
  }
  for (size_t l = 0; l < kLanes; ++l) s.sq_a += sq_a[l], s.sq_b += sq_b[l], s.sq_diff += sq_diff[l];
  if (!c) return;
  // Counts as doubles (exact below 2^53) so the loop vectorizes: τa·τb is nonzero exactly where
  // both are (a product of f32-derived values cannot underflow in double), negative where their
  // signs conflict.
  double sq_ta[kLanes] = {}, sq_tb[kLanes] = {}, dot[kLanes] = {}, both[kLanes] = {},
         conflicts[kLanes] = {};
  auto visit = [&](size_t i, size_t l) {
    const double ta = double(a[i]) - c[i], tb = double(b[i]) - c[i], p = ta * tb;
    sq_ta[l] += ta * ta;
    sq_tb[l] += tb * tb;
    dot[l] += p;
    both[l] += p != 0.0 ? 1.0 : 0.0;
    conflicts[l] += p < 0.0 ? 1.0 : 0.0;
  };
  for (size_t i = 0; i < body; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) visit(i + l, l);
  }
  for (size_t i = body; i < n; ++i) visit(i, 0);
  for (size_t l = 0; l < kLanes; ++l) {
    s.sq_ta += sq_ta[l], s.sq_tb += sq_tb[l], s.dot += dot[l];
    s.both_nonzero += static_cast<uint64_t>(both[l]);
    s.sign_conflicts += static_cast<uint64_t>(conflicts[l]);
  }
}

// Adds the TIES counts of one chunk of trimmed task vectors ta, tb to `s`: the elected sign is
// that of ta + tb, and a kept (nonzero) value agrees when it has that sign. Branch-free, in
// lanes, as add_chunk_sums.
void add_ties_counts(const float* ta, const float* tb, size_t n, DiffStats& s) {
  constexpr size_t kLanes = 8;
  uint64_t kept_a[kLanes] = {}, kept_b[kLanes] = {}, agree_a[kLanes] = {}, agree_b[kLanes] = {},
           nonzero[kLanes] = {};
  auto visit = [&](size_t i, size_t l) {
    const float x = ta[i], y = tb[i], sum = x + y;
    const int sx = (x > 0.0f) - (x < 0.0f), sy = (y > 0.0f) - (y < 0.0f);
    const int elected = (sum > 0.0f) - (sum < 0.0f);
    const uint64_t ax = (sx != 0) & (sx == elected), ay = (sy != 0) & (sy == elected);
    kept_a[l] += sx != 0;
    kept_b[l] += sy != 0;
    agree_a[l] += ax;
    agree_b[l] += ay;
    nonzero[l] += ax | ay;
  };
  const size_t body = n / kLanes * kLanes;
  for (size_t i = 0; i < body; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) visit(i + l, l);
  }
  for (size_t i = body; i < n; ++i) visit(i, 0);
  for (size_t l = 0; l < kLanes; ++l) {
    s.ties_kept_a += kept_a[l], s.ties_kept_b += kept_b[l];
    s.ties_agree_a += agree_a[l], s.ties_agree_b += agree_b[l];
    s.ties_nonzero += nonzero[l];
  }
}

// All statistics of one tensor, its chunks visited in order (so the double sums, and with them
// every result, are the same whatever worker runs it).
DiffStats diff_tensor(const Job& job, double density, size_t chunk, Buffers& buf) {
  DiffStats s;
  s.numel = job.numel;
  const bool base = job.c.info != nullptr;
  const uint64_t k = static_cast<uint64_t>(std::floor(density * static_cast<double>(job.numel)));
  std::unique_ptr<kernels::TopKMagnitude> top_a, top_b;
  if (base) {
    top_a = std::make_unique<kernels::TopKMagnitude>(job.numel, k);
    top_b = std::make_unique<kernels::TopKMagnitude>(job.numel, k);
  }
  auto read_chunk = [&](uint64_t off, size_t n) {
    check_interrupted();
    read_f32(job.a, off, n, buf.raw.data(), buf.a.data());
    read_f32(job.b, off, n, buf.raw.data(), buf.b.data());
    if (base) read_f32(job.c, off, n, buf.raw.data(), buf.c.data());
  };
  // Pass 1: the sums, and the first top-k pass; then the top-k passes that remain.
  for (bool first = true;; first = false) {
    const bool topk = base && (top_a->pass() != kernels::TopKMagnitude::Pass::kDone ||
                               top_b->pass() != kernels::TopKMagnitude::Pass::kDone);
    if (!first && !topk) break;
    for (uint64_t off = 0; off < job.numel; off += chunk) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, job.numel - off));
      read_chunk(off, n);
      const float* a = buf.a.data();
      const float* b = buf.b.data();
      const float* c = buf.c.data();
      if (first) add_chunk_sums(a, b, base ? c : nullptr, n, s);
      if (topk) {
        if (top_a->pass() != kernels::TopKMagnitude::Pass::kDone)
          top_a->add_difference(off, a, c, n);
        if (top_b->pass() != kernels::TopKMagnitude::Pass::kDone)
          top_b->add_difference(off, b, c, n);
      }
    }
    if (topk) {
      if (top_a->pass() != kernels::TopKMagnitude::Pass::kDone) top_a->end_pass();
      if (top_b->pass() != kernels::TopKMagnitude::Pass::kDone) top_b->end_pass();
    }
  }
  if (!base) return s;
  // Last pass: the trimmed task vectors, the elected sign and what survives it.
  for (uint64_t off = 0; off < job.numel; off += chunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, job.numel - off));
    read_chunk(off, n);
    float* ta = buf.ta.data();
    float* tb = buf.tb.data();
    top_a->keep_top_difference(off, buf.a.data(), buf.c.data(), ta, n);
    top_b->keep_top_difference(off, buf.b.data(), buf.c.data(), tb, n);
    add_ties_counts(ta, tb, n, s);
  }
  return s;
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

void DiffStats::add(const DiffStats& o) {
  numel += o.numel;
  sq_a += o.sq_a, sq_b += o.sq_b, sq_diff += o.sq_diff;
  sq_ta += o.sq_ta, sq_tb += o.sq_tb, dot += o.dot;
  both_nonzero += o.both_nonzero, sign_conflicts += o.sign_conflicts;
  ties_kept_a += o.ties_kept_a, ties_kept_b += o.ties_kept_b;
  ties_agree_a += o.ties_agree_a, ties_agree_b += o.ties_agree_b;
  ties_nonzero += o.ties_nonzero;
}

double metric(const DiffStats& s, std::string_view name) {
  if (name == "norm_a") return std::sqrt(s.sq_a);
  if (name == "norm_b") return std::sqrt(s.sq_b);
  if (name == "norm_diff") return std::sqrt(s.sq_diff);
  if (name == "rel_change") {
    return s.sq_diff == 0 ? 0.0 : ratio(std::sqrt(s.sq_diff), std::sqrt(s.sq_b));
  }
  if (name == "norm_tau_a") return std::sqrt(s.sq_ta);
  if (name == "norm_tau_b") return std::sqrt(s.sq_tb);
  if (name == "cosine") return ratio(s.dot, std::sqrt(s.sq_ta) * std::sqrt(s.sq_tb));
  if (name == "sign_conflicts") {
    return ratio(static_cast<double>(s.sign_conflicts), static_cast<double>(s.both_nonzero));
  }
  if (name == "ties_agree_a") {
    return ratio(static_cast<double>(s.ties_agree_a), static_cast<double>(s.ties_kept_a));
  }
  if (name == "ties_agree_b") {
    return ratio(static_cast<double>(s.ties_agree_b), static_cast<double>(s.ties_kept_b));
  }
  if (name == "ties_nonzero") {
    return ratio(static_cast<double>(s.ties_nonzero), static_cast<double>(s.numel));
  }
  fail("unknown metric '{}'; use one of {}", name, fmt::join(metric_names(true), ", "));
}

std::vector<std::string> metric_names(bool with_base) {
  std::vector<std::string> names = {"norm_a", "norm_b", "norm_diff", "rel_change"};
  if (with_base) {
    for (const char* n : {"norm_tau_a", "norm_tau_b", "cosine", "sign_conflicts", "ties_agree_a",
                          "ties_agree_b", "ties_nonzero"}) {
      names.emplace_back(n);
    }
  }
  return names;
}

std::string module_type(std::string_view suffix) {
  for (std::string_view end : {".weight", ".bias"}) {
    if (suffix.size() > end.size() && suffix.ends_with(end)) {
      suffix.remove_suffix(end.size());
      break;
    }
  }
  const size_t dot = suffix.rfind('.');
  const std::string_view last = dot == std::string_view::npos ? suffix : suffix.substr(dot + 1);
  if (last.find("norm") != std::string_view::npos || last == "ln_1" || last == "ln_2") {
    return "norms";
  }
  return std::string(last);
}

ModelDiff diff_models(const io::Model& a, const io::Model& b, const io::Model* base,
                      const DiffOptions& options) {
  if (!(options.density > 0.0 && options.density <= 1.0)) {
    fail("--density {}: must lie in (0, 1]", options.density);
  }
  ModelDiff out;
  out.has_base = base != nullptr;
  out.density = options.density;
  std::vector<Job> jobs;
  std::vector<std::string> names;
  for (const io::ModelTensor& t : a.tensors()) {
    const io::ModelTensor tb = b.find(t.info->name);
    if (!tb.info) {
      out.only_in_a.push_back(t.info->name);
      continue;
    }
    if (tb.info->shape != t.info->shape) {
      fail("tensor '{}' is {} in {} but {} in {}; diff compares models of the same shapes",
           t.info->name, shape_text(t.info->shape), a.resolved().ref, shape_text(tb.info->shape),
           b.resolved().ref);
    }
    io::ModelTensor tc;
    if (base) {
      tc = base->find(t.info->name);
      if (!tc.info) {
        out.missing_in_base.push_back(t.info->name);
        continue;
      }
      if (tc.info->shape != t.info->shape) {
        fail("tensor '{}' is {} in {} but {} in the base {}", t.info->name,
             shape_text(t.info->shape), a.resolved().ref, shape_text(tc.info->shape),
             base->resolved().ref);
      }
    }
    if (!readable(*t.info) || !readable(*tb.info) || (tc.info && !readable(*tc.info))) {
      out.not_float.push_back(t.info->name);
      continue;
    }
    jobs.push_back({t, tb, tc, t.info->numel()});
    names.push_back(t.info->name);
  }
  for (const io::ModelTensor& t : b.tensors()) {
    if (!a.has(t.info->name)) out.only_in_b.push_back(t.info->name);
  }
  if (jobs.empty()) {
    fail(
        "{} and {} share no tensor that diff can compare ({} only in the first, {} only in the "
        "second); {}",
        a.resolved().ref, b.resolved().ref, out.only_in_a.size(), out.only_in_b.size(),
        a.resolved().gguf != b.resolved().gguf
            ? "one is a GGUF file, whose tensors have llama.cpp's names (blk.N.attn_q.weight); "
              "compare a GGUF file with a GGUF file"
            : "compare models of one architecture and naming");
  }

  // Largest tensors first, so one big tensor does not finish last on a single worker.
  std::vector<size_t> order(jobs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return jobs[x].numel > jobs[y].numel; });
  const size_t chunk = std::max<uint64_t>(256, options.chunk_elements / 256 * 256);
  const size_t threads = std::max<size_t>(1, std::min(options.threads, jobs.size()));
  std::vector<std::unique_ptr<Buffers>> buffers;
  for (size_t i = 0; i < threads; ++i) buffers.push_back(std::make_unique<Buffers>(chunk));
  std::vector<DiffStats> stats(jobs.size());
  exec::ThreadPool pool(threads);
  pool.parallel_for(jobs.size(), [&](size_t i, size_t worker) {
    stats[order[i]] = diff_tensor(jobs[order[i]], options.density, chunk, *buffers[worker]);
  });

  const plan::LayerStructure layers = plan::infer_layers(names);
  std::map<std::pair<int64_t, std::string>, DiffStats> cells;
  std::vector<std::string> modules;
  for (size_t i = 0; i < jobs.size(); ++i) {
    TensorDiff d{names[i], jobs[i].a.info->shape, -1, "", stats[i]};
    if (auto l = plan::parse_layer_name(d.name); l && l->prefix == layers.main_prefix) {
      d.layer = l->index;
      d.module = module_type(l->suffix);
      cells[{d.layer, d.module}].add(d.stats);
      if (std::find(modules.begin(), modules.end(), d.module) == modules.end()) {
        modules.push_back(d.module);
      }
    }
    out.total.add(d.stats);
    out.tensors.push_back(std::move(d));
  }
  // Columns: the usual transformer modules in forward order, then the rest by name.
  static const std::vector<std::string> kOrder = {
      "q_proj", "k_proj", "v_proj",      "o_proj",   "gate_proj", "up_proj",  "down_proj", "attn_q",
      "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",    "ffn_down", "norms"};
  auto rank = [&](const std::string& m) {
    const auto it = std::find(kOrder.begin(), kOrder.end(), m);
    return it == kOrder.end() ? kOrder.size() : static_cast<size_t>(it - kOrder.begin());
  };
  std::sort(modules.begin(), modules.end(), [&](const std::string& x, const std::string& y) {
    return std::make_pair(rank(x), x) < std::make_pair(rank(y), y);
  });
  out.modules = modules;
  for (const auto& [key, s] : cells) out.layers.push_back({key.first, key.second, s});
  std::stable_sort(out.layers.begin(), out.layers.end(), [&](const auto& x, const auto& y) {
    return std::make_pair(x.layer, rank(x.module)) < std::make_pair(y.layer, rank(y.module)) ||
           (x.layer == y.layer && rank(x.module) == rank(y.module) && x.module < y.module);
  });
  return out;
}

}  // namespace smelt::analysis
