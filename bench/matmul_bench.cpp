// The forward pass's matrix products (src/smelt/infer/matmul.h; docs/performance.md, "Forward
// pass: matrix products"): GFLOP/s and weight GB/s per weight type at n_tokens 1 (generation) and
// 256 (prompt), on 2048x2048 and 5632x2048 (rows x cols) matrices, one thread unless the
// arguments (type, rows, n_tokens, threads) say otherwise;
// and, when the build found OpenBLAS, its sgemm on the same shapes (f32 weights as they are, and
// quantized weights dequantized to f32 first) for the comparison the kernel choice rests on.
// Run: build/smelt_bench --benchmark_filter=Matmul
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "smelt/infer/dequant_row.h"
#include "smelt/infer/matmul.h"
#include "smelt/infer/matmul_isa.h"
#include "smelt/infer/parallel.h"
#include "smelt/kernels/quant.h"

#if defined(SMELT_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace {

using smelt::kernels::GgmlType;

constexpr GgmlType kTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
                               GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

struct Fixture {
  std::vector<uint8_t> bytes;
  smelt::infer::WeightMatrix w;
  std::vector<float> x, y;
};

Fixture make(GgmlType type, int64_t rows, int64_t cols, int64_t n_tokens) {
  Fixture f;
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 0.5f);
  std::vector<float> row(static_cast<size_t>(cols));
  f.w.type = type;
  f.w.rows = rows;
  f.w.cols = cols;
  f.bytes.resize(f.w.row_bytes() * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = d(rng);
    smelt::kernels::quantize(type, row.data(), f.bytes.data() + r * f.w.row_bytes(), row.size());
  }
  f.w.data = f.bytes.data();
  f.x.resize(static_cast<size_t>(n_tokens * cols));
  for (auto& v : f.x) v = d(rng);
  f.y.resize(static_cast<size_t>(n_tokens * rows));
  return f;
}

void report(benchmark::State& state, int64_t rows, int64_t cols, int64_t n_tokens,
            size_t weight_bytes) {
  const double it = static_cast<double>(state.iterations());
  state.counters["GFLOPS"] =
      benchmark::Counter(2.0 * rows * cols * n_tokens * it * 1e-9, benchmark::Counter::kIsRate);
  state.counters["wGB/s"] = benchmark::Counter(static_cast<double>(weight_bytes) * it * 1e-9,
                                               benchmark::Counter::kIsRate);
}

// Args: type index, rows, n_tokens, threads (cols = 2048).
void BM_Matmul(benchmark::State& state) {
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = state.range(1), cols = 2048, n_tokens = state.range(2);
  const auto threads = static_cast<size_t>(state.range(3));
  Fixture f = make(type, rows, cols, n_tokens);
  smelt::infer::Parallel par(threads);
  state.SetLabel(std::string(smelt::kernels::ggml_type_name(type)));
  for (auto _ : state) {
    smelt::infer::matmul(f.w, f.x.data(), n_tokens, f.y.data(), &par);
    benchmark::DoNotOptimize(f.y.data());
  }
  report(state, rows, cols, n_tokens, f.bytes.size());
}

void matmul_args(benchmark::internal::Benchmark* b) {
  for (int t = 0; t < 8; ++t)
    for (int64_t rows : {2048, 5632})
      for (int64_t n : {1, 256}) b->Args({t, rows, n, 1});
}
// One thread: CPU time of the calling thread (steadier than wall time on a shared machine).
BENCHMARK(BM_Matmul)->Apply(matmul_args)->Unit(benchmark::kMicrosecond);
// Two threads, wall time: generation and prompt on bf16 and q4_K.
BENCHMARK(BM_Matmul)
    ->Args({2, 2048, 1, 2})
    ->Args({2, 2048, 256, 2})
    ->Args({5, 2048, 1, 2})
    ->Args({5, 2048, 256, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// The down projection's shape, 2048 x 5632, at a full 512-token step: x (11.5 MB) no longer fits
// in L2, so this shows whether the panel path's passes over x cost memory bandwidth.
void BM_MatmulWide(benchmark::State& state) {
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = 2048, cols = 5632, n_tokens = state.range(1);
  Fixture f = make(type, rows, cols, n_tokens);
  state.SetLabel(std::string(smelt::kernels::ggml_type_name(type)));
  for (auto _ : state) {
    smelt::infer::matmul(f.w, f.x.data(), n_tokens, f.y.data(), nullptr);
    benchmark::DoNotOptimize(f.y.data());
  }
  report(state, rows, cols, n_tokens, f.bytes.size());
}
BENCHMARK(BM_MatmulWide)
    ->Args({0, 512})
    ->Args({5, 512})
    ->Args({5, 64})
    ->Args({5, 3})
    ->Args({5, 4})
    ->Args({5, 8})
    ->Args({5, 12})
    ->Args({3, 512})
    ->Args({3, 64})
    ->Unit(benchmark::kMillisecond);

// The fallback kernels, run on this machine by lowering the instruction set: arg 2 is
// smelt::infer::MatmulIsa (1 AVX2, 0 portable). 2048 x 2048.
void BM_MatmulLowerIsa(benchmark::State& state) {
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = 2048, cols = 2048, n_tokens = state.range(1);
  Fixture f = make(type, rows, cols, n_tokens);
  smelt::infer::set_matmul_isa(static_cast<smelt::infer::MatmulIsa>(state.range(2)));
  state.SetLabel(std::string(smelt::kernels::ggml_type_name(type)));
  for (auto _ : state) {
    smelt::infer::matmul(f.w, f.x.data(), n_tokens, f.y.data(), nullptr);
    benchmark::DoNotOptimize(f.y.data());
  }
  smelt::infer::set_matmul_isa(smelt::infer::matmul_best_isa());
  report(state, rows, cols, n_tokens, f.bytes.size());
}
BENCHMARK(BM_MatmulLowerIsa)
    ->Args({0, 1, 1})
    ->Args({0, 256, 1})
    ->Args({5, 1, 1})
    ->Args({5, 256, 1})
    ->Args({0, 256, 0})
    ->Args({5, 1, 0})
    ->Args({3, 1, 1})
    ->Args({3, 256, 1})
    ->Args({3, 1, 0})
    ->Args({3, 256, 0})
    ->Unit(benchmark::kMicrosecond);

// A tiny matrix at n_tokens 1 (per-call overhead): 64x64 f32 and Q8_0 with a 2-thread team.
void BM_MatmulTiny(benchmark::State& state) {
  Fixture f = make(kTypes[state.range(0)], 64, 64, 1);
  smelt::infer::Parallel par(2);
  for (auto _ : state) {
    smelt::infer::matmul(f.w, f.x.data(), 1, f.y.data(), &par);
    benchmark::DoNotOptimize(f.y.data());
  }
}
BENCHMARK(BM_MatmulTiny)->Arg(0)->Arg(3);

// One fork-join of an empty body on a 2-thread team.
void BM_ParallelForRangeEmpty(benchmark::State& state) {
  smelt::infer::Parallel par(2);
  for (auto _ : state) par.for_range(64, [](size_t, size_t, size_t) {});
}
BENCHMARK(BM_ParallelForRangeEmpty);

#if defined(SMELT_HAVE_OPENBLAS)
// OpenBLAS sgemm, one thread: y [n x rows] = x [n x cols] * W^T. Arg 0 type index: for anything
// but F32 the whole W is dequantized to f32 inside the timed loop (what a "dequantize, then
// sgemm" kernel would pay at least once per call), with the matmul kernels' own row dequantizer.
void BM_OpenBlasSgemm(benchmark::State& state) {
  const GgmlType type = kTypes[state.range(0)];
  const int64_t rows = state.range(1), cols = 2048, n_tokens = state.range(2);
  openblas_set_num_threads(1);
  Fixture f = make(type, rows, cols, n_tokens);
  std::vector<float> wf(static_cast<size_t>(rows * cols));
  smelt::infer::dequant_row(type, f.bytes.data(), wf.data(), wf.size());
  state.SetLabel(std::string(smelt::kernels::ggml_type_name(type)));
  for (auto _ : state) {
    if (type != GgmlType::kF32)
      smelt::infer::dequant_row(type, f.bytes.data(), wf.data(), wf.size());
    if (n_tokens == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols), 1.0f,
                  wf.data(), static_cast<int>(cols), f.x.data(), 1, 0.0f, f.y.data(), 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n_tokens),
                  static_cast<int>(rows), static_cast<int>(cols), 1.0f, f.x.data(),
                  static_cast<int>(cols), wf.data(), static_cast<int>(cols), 0.0f, f.y.data(),
                  static_cast<int>(rows));
    benchmark::DoNotOptimize(f.y.data());
  }
  report(state, rows, cols, n_tokens, f.bytes.size());
}
BENCHMARK(BM_OpenBlasSgemm)
    ->Args({0, 2048, 1})
    ->Args({0, 2048, 256})
    ->Args({0, 5632, 256})
    ->Args({5, 2048, 256})
    ->Args({7, 2048, 256})
    ->Unit(benchmark::kMicrosecond);
#endif

}  // namespace
