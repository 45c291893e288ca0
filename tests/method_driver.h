// Test driver for merge methods: runs a Method over whole f32 tensors exactly as the executor
// does (validate, begin, statistics passes and merge over shuffled, alignment-respecting chunks,
// optionally on several threads).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "smelt/error.h"
#include "smelt/methods/method.h"

namespace smelt::testing::method_driver {

using namespace smelt::methods;

using Tensor = std::vector<float>;
using ParamMap = std::map<std::string, double>;

inline constexpr char kTensorName[] = "model.layers.3.mlp.down_proj.weight";

// ---------------------------------------------------------------------------------------------
// The driver: runs a Method over whole f32 tensors the way the executor will.

struct Inputs {
  std::vector<Tensor> tensors;
  int base = -1;
  ParamMap global;                  // values the config sets; defaults are filled in
  std::vector<ParamMap> per_model;  // one per input (may be shorter: the rest are empty)
  uint64_t seed = 0;
  std::string name = kTensorName;
  std::vector<uint64_t> shape;  // empty = 1-D {numel}
};

struct RunOptions {
  size_t chunk = 1000;
  uint32_t shuffle = 1;
  int threads = 1;
  // Hand passes that take them (TensorMerger::bf16_pass) the inputs as bf16 when every value is
  // one (its low 16 bits are zero), as the executor does with inputs stored as bf16.
  bool bf16 = true;
};

// What the planner hands a method: declared defaults filled in, except required per-model ones.
inline ResolvedParams resolve(const Method& method, const Inputs& in) {
  ResolvedParams params;
  params.global = in.global;
  for (const ParamSpec& p : method.global_params()) {
    if (!params.global.count(p.name) && p.default_value) params.global[p.name] = *p.default_value;
  }
  params.per_model.resize(in.tensors.size());
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    if (i < in.per_model.size()) params.per_model[i] = in.per_model[i];
    for (const ParamSpec& p : method.model_params()) {
      if (!params.per_model[i].count(p.name) && p.default_value) {
        params.per_model[i][p.name] = *p.default_value;
      }
    }
  }
  return params;
}

inline TensorContext context(const Inputs& in, const ResolvedParams& params) {
  TensorContext ctx;
  ctx.name = in.name;
  ctx.numel = in.tensors.empty() ? 0 : in.tensors[0].size();
  ctx.shape = in.shape.empty() ? std::vector<uint64_t>{ctx.numel} : in.shape;
  ctx.num_inputs = in.tensors.size();
  ctx.base = in.base;
  ctx.seed = in.seed;
  ctx.params = &params;
  return ctx;
}

// Calls fn(chunk) for every chunk, in an order shuffled by `seed`, on `threads` threads.
template <typename Fn>
inline void for_each_chunk(const std::vector<Chunk>& chunks, uint32_t seed, int threads, Fn fn) {
  std::vector<size_t> order(chunks.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  if (threads <= 1) {
    for (size_t c : order) fn(chunks[c]);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = t; i < order.size(); i += threads) fn(chunks[order[i]]);
    });
  }
  for (std::thread& th : pool) th.join();
}

inline Tensor run(const Method& method, const Inputs& in, RunOptions options = {}) {
  const ResolvedParams params = resolve(method, in);
  const TensorContext ctx = context(in, params);
  method.validate(ctx);
  // Chunks hold whole multiples of the method's alignment, as in the executor.
  const uint64_t align = std::max<uint64_t>(1, method.chunk_alignment(ctx));
  options.chunk = std::max<uint64_t>(align, options.chunk / align * align);
  std::unique_ptr<TensorMerger> merger = method.begin(ctx);

  std::vector<std::vector<const float*>> pointers;
  std::vector<Chunk> chunks;
  for (uint64_t offset = 0; offset < ctx.numel; offset += options.chunk) {
    std::vector<const float*> p;
    for (const Tensor& t : in.tensors) p.push_back(t.data() + offset);
    pointers.push_back(std::move(p));
    Chunk chunk;
    chunk.index = chunks.size();
    chunk.offset = offset;
    chunk.n = std::min<uint64_t>(options.chunk, ctx.numel - offset);
    chunks.push_back(chunk);
  }
  for (size_t c = 0; c < chunks.size(); ++c) chunks[c].inputs = pointers[c].data();
  // The inputs as bf16, when every value is one.
  bool all_bf16 = options.bf16;
  for (const Tensor& t : in.tensors) {
    for (float v : t) all_bf16 = all_bf16 && (std::bit_cast<uint32_t>(v) & 0xFFFFu) == 0;
  }
  std::vector<std::vector<uint16_t>> halves;
  std::vector<std::vector<const uint16_t*>> half_pointers;
  if (all_bf16) {
    for (const Tensor& t : in.tensors) {
      std::vector<uint16_t> h(t.size());
      for (size_t j = 0; j < t.size(); ++j) {
        h[j] = static_cast<uint16_t>(std::bit_cast<uint32_t>(t[j]) >> 16);
      }
      halves.push_back(std::move(h));
    }
    for (const Chunk& chunk : chunks) {
      std::vector<const uint16_t*> p;
      for (const auto& h : halves) p.push_back(h.data() + chunk.offset);
      half_pointers.push_back(std::move(p));
    }
  }

  for (int pass = 0; pass < merger->stat_passes(); ++pass) {
    // A sample pass sees every stride-th chunk, as in the executor.
    std::vector<Chunk> seen = chunks;
    if (all_bf16 && merger->bf16_pass(pass)) {
      for (Chunk& c : seen) {
        c.inputs = nullptr;
        c.bf16 = half_pointers[c.index].data();
      }
    }
    if (merger->sample_pass(pass)) {
      const uint64_t stride = sample_stride(chunks.size());
      std::vector<Chunk> all = std::move(seen);
      seen.clear();
      for (size_t c = 0; c < all.size(); c += stride) seen.push_back(all[c]);
    }
    for_each_chunk(seen, options.shuffle + 1000 * (pass + 1), options.threads,
                   [&](const Chunk& c) { merger->gather(pass, c); });
    merger->end_pass(pass);
  }
  Tensor out(ctx.numel, std::nanf(""));
  for_each_chunk(chunks, options.shuffle, options.threads,
                 [&](const Chunk& c) { merger->merge(c, out.data() + c.offset); });
  return out;
}

inline const Method& method(std::string_view name) {
  const Method* m = find_method(name);
  if (m == nullptr) throw std::runtime_error("method not registered: " + std::string(name));
  return *m;
}

// The message of the smelt::Error that validate throws, or "" when it accepts.
inline std::string validate_error(const Method& m, const Inputs& in) {
  const ResolvedParams params = resolve(m, in);
  try {
    m.validate(context(in, params));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- test data and comparison shared by the method test files ----

inline Tensor normal_tensor(size_t n, uint32_t seed, float stddev = 1.0f, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  Tensor t(n);
  for (float& v : t) v = dist(rng);
  return t;
}
// Values drawn from a tiny set, so many magnitudes tie exactly.
inline Tensor tiny_set_tensor(size_t n, uint32_t seed) {
  static constexpr float kValues[] = {-2.0f, -1.0f, -0.5f, 0.5f, 1.0f, 2.0f};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pick(0, 5);
  Tensor t(n);
  for (float& v : t) v = kValues[pick(rng)];
  return t;
}

}  // namespace smelt::testing::method_driver
