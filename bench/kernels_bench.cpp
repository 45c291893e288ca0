// Micro-benchmarks behind smelt's I/O and kernel choices: pread into a reused buffer vs mmap for
// streaming a warm file (docs/performance.md: pread measured faster on this VM class), and the
// dtype conversion, top-k and della ranking kernels. Run: build/smelt_bench (figures in
// docs/performance.md).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "smelt/kernels/convert.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/rank.h"
#include "smelt/kernels/topk.h"

namespace {

constexpr size_t kFileBytes = size_t{256} << 20;
constexpr size_t kChunk = size_t{1} << 20;

// A 256 MiB scratch file, written once and kept warm in the page cache.
const std::string& scratch_file() {
  static const std::string path = [] {
    std::string p = (std::filesystem::temp_directory_path() / "smelt-bench-read.bin").string();
    if (!std::filesystem::exists(p) || std::filesystem::file_size(p) != kFileBytes) {
      std::vector<char> buf(kChunk);
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 131);
      FILE* f = std::fopen(p.c_str(), "wb");
      for (size_t done = 0; done < kFileBytes; done += kChunk)
        std::fwrite(buf.data(), 1, kChunk, f);
      std::fclose(f);
    }
    return p;
  }();
  return path;
}

uint64_t checksum(const char* p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; i += 64) s += static_cast<unsigned char>(p[i]);
  return s;
}

void BM_PreadReusedBuffer(benchmark::State& state) {
  const int fd = ::open(scratch_file().c_str(), O_RDONLY);
  std::vector<char> buf(kChunk);
  for (auto _ : state) {
    uint64_t s = 0;
    for (size_t off = 0; off < kFileBytes; off += kChunk) {
      if (::pread(fd, buf.data(), kChunk, static_cast<off_t>(off)) !=
          static_cast<ssize_t>(kChunk)) {
        state.SkipWithError("short read");
      }
      s += checksum(buf.data(), kChunk);
    }
    benchmark::DoNotOptimize(s);
  }
  ::close(fd);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kFileBytes));
}
BENCHMARK(BM_PreadReusedBuffer)->Unit(benchmark::kMillisecond);

void BM_MmapScan(benchmark::State& state) {
  const int fd = ::open(scratch_file().c_str(), O_RDONLY);
  for (auto _ : state) {
    void* m = ::mmap(nullptr, kFileBytes, PROT_READ, MAP_PRIVATE, fd, 0);
    ::madvise(m, kFileBytes, MADV_SEQUENTIAL);
    // Touch every byte as a merge kernel would (a copy into a chunk-sized buffer).
    std::vector<char> buf(kChunk);
    uint64_t s = 0;
    for (size_t off = 0; off < kFileBytes; off += kChunk) {
      std::memcpy(buf.data(), static_cast<const char*>(m) + off, kChunk);
      s += checksum(buf.data(), kChunk);
    }
    benchmark::DoNotOptimize(s);
    ::munmap(m, kFileBytes);
  }
  ::close(fd);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kFileBytes));
}
BENCHMARK(BM_MmapScan)->Unit(benchmark::kMillisecond);

// First touch of 64 MiB of fresh anonymous memory in plain pages (0) or with huge pages advised
// (1), as the executor's scratch buffers are (exec/buffer.h). Each iteration first waits 4 s,
// untimed, so that a VM which returns free memory to its host has done so: the case of a merge
// started after a pause (docs/performance.md, "Round 4").
void BM_FirstTouch(benchmark::State& state) {
  const bool huge = state.range(0) != 0;
  const size_t n = size_t{64} << 20;
  for (auto _ : state) {
    state.PauseTiming();
    std::this_thread::sleep_for(std::chrono::seconds(4));
    state.ResumeTiming();
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      state.SkipWithError("mmap failed");
      break;
    }
    if (huge) madvise(p, n, MADV_HUGEPAGE);
    std::memset(p, 1, n);
    benchmark::DoNotOptimize(p);
    state.PauseTiming();
    munmap(p, n);
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_FirstTouch)
    ->Arg(0)
    ->Arg(1)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_Bf16ToF32(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<uint16_t> src(n, 0x3F80);
  std::vector<float> dst(n);
  for (auto _ : state) {
    smelt::kernels::to_f32(smelt::DType::kBF16, src.data(), dst.data(), n);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 6));
}
BENCHMARK(BM_Bf16ToF32)->Arg(1 << 18)->Arg(1 << 22);

void BM_F32ToBf16(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<float> src(n, 1.5f);
  std::vector<uint16_t> dst(n);
  for (auto _ : state) {
    smelt::kernels::from_f32(smelt::DType::kBF16, src.data(), dst.data(), n);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 6));
}
BENCHMARK(BM_F32ToBf16)->Arg(1 << 18)->Arg(1 << 22);

void BM_TopKThreshold(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = smelt::kernels::random_normal(1, i);
  for (auto _ : state) {
    smelt::kernels::TopKMagnitude top(n, n / 2);
    while (top.pass() != smelt::kernels::TopKMagnitude::Pass::kDone) {
      top.add(0, x.data(), n);
      top.end_pass();
    }
    benchmark::DoNotOptimize(top.threshold_bits());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_TopKThreshold)->Arg(1 << 22)->Unit(benchmark::kMillisecond);

// della's ranking of one row (a group of state.range(0) elements): 64 rows of task-vector-like
// values (differences of bf16 numbers, about half of them exactly 0), ranked one after another.
// Items are elements, so items_per_second inverts to ns per element.
constexpr size_t kRankRows = 64;

std::vector<float> della_rows(size_t n) {
  auto bf16 = [](float v) {
    return std::bit_cast<float>((std::bit_cast<uint32_t>(v) + 0x8000u) & 0xFFFF0000u);
  };
  std::vector<float> x(n * kRankRows);
  for (size_t i = 0; i < x.size(); ++i) {
    const float base = bf16(smelt::kernels::random_normal(1, i) * 0.02f);
    const bool changed = (smelt::kernels::random_u64(2, i) & 1) != 0;
    x[i] = changed ? bf16(base + smelt::kernels::random_normal(3, i) * 1e-3f) - base : 0.0f;
  }
  return x;
}

// The previous ranking: std::sort of (magnitude bits << 32 | ~index) keys.
void BM_RankRowStdSort(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<float> x = della_rows(n);
  std::vector<uint64_t> keys(n);
  std::vector<uint32_t> ranks(n);
  for (auto _ : state) {
    for (size_t row = 0; row < kRankRows; ++row) {
      const float* r = x.data() + row * n;
      for (uint64_t b = 0; b < n; ++b) {
        keys[b] = (uint64_t{smelt::kernels::magnitude_bits(r[b])} << 32) | (0xFFFFFFFFu - b);
      }
      std::sort(keys.begin(), keys.end());
      for (uint64_t q = 0; q < n; ++q) {
        ranks[0xFFFFFFFFu - (keys[q] & 0xFFFFFFFFu)] = static_cast<uint32_t>(q);
      }
      benchmark::DoNotOptimize(ranks.data());
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n * kRankRows));
}
BENCHMARK(BM_RankRowStdSort)->Arg(2048)->Arg(5632);

void BM_RankRowRadix(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<float> x = della_rows(n);
  std::vector<uint32_t> ranks(n);
  for (auto _ : state) {
    for (size_t row = 0; row < kRankRows; ++row) {
      smelt::kernels::rank_by_magnitude(x.data() + row * n, n, 1, ranks.data());
      benchmark::DoNotOptimize(ranks.data());
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n * kRankRows));
}
BENCHMARK(BM_RankRowRadix)->Arg(2048)->Arg(5632);

// A whole della row: ranking and the random keep decision. Old: std::sort, then one scalar draw
// per element in rank order; new: keep_random_by_rank (coarse buckets, exact ranks only where
// they decide).
void BM_DellaRowOld(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<float> x = della_rows(n);
  std::vector<float> y(n);
  std::vector<uint64_t> keys(n);
  for (auto _ : state) {
    for (size_t row = 0; row < kRankRows; ++row) {
      std::copy_n(x.data() + row * n, n, y.data());
      for (uint64_t b = 0; b < n; ++b) {
        keys[b] = (uint64_t{smelt::kernels::magnitude_bits(y[b])} << 32) | (0xFFFFFFFFu - b);
      }
      std::sort(keys.begin(), keys.end());
      for (uint64_t q = 0; q < n; ++q) {
        const uint64_t b = 0xFFFFFFFFu - (keys[q] & 0xFFFFFFFFu);
        const float p = 0.4f + ((static_cast<float>(q) / static_cast<float>(n - 1)) * 2.0f) * 0.1f;
        if (!(smelt::kernels::draw_uniform(9, row * n + b) < p)) y[b] = 0.0f;
      }
      benchmark::DoNotOptimize(y.data());
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n * kRankRows));
}
BENCHMARK(BM_DellaRowOld)->Arg(2048)->Arg(5632);

void BM_DellaRowNew(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<float> x = della_rows(n);
  std::vector<float> y(n);
  for (auto _ : state) {
    for (size_t row = 0; row < kRankRows; ++row) {
      std::copy_n(x.data() + row * n, n, y.data());
      smelt::kernels::keep_random_by_rank(9, row * n, 0.4f, 0.1f, y.data(), n, 1);
      benchmark::DoNotOptimize(y.data());
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n * kRankRows));
}
BENCHMARK(BM_DellaRowNew)->Arg(2048)->Arg(5632);

// DARE's keep mask, one bit per element (kernels::random_mask: the 32-bit generator of round 4,
// eight lanes per AVX2 instruction), against the same bits drawn with SplitMix64
// (random_uniform, the generator before) by a scalar loop.
void BM_RandomMask(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> bits(n / 8);
  for (auto _ : state) {
    smelt::kernels::random_mask(9, 0, 0.5f, bits.data(), n);
    benchmark::DoNotOptimize(bits.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_RandomMask)->Arg(1 << 16);

void BM_RandomMaskSplitMix64(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> bits(n / 8);
  for (auto _ : state) {
    for (size_t q = 0; q < n / 8; ++q) {
      uint32_t byte = 0;
      for (size_t l = 0; l < 8; ++l) {
        byte |= uint32_t{smelt::kernels::random_uniform(9, q * 8 + l) < 0.5f} << l;
      }
      bits[q] = static_cast<uint8_t>(byte);
    }
    benchmark::DoNotOptimize(bits.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
}
BENCHMARK(BM_RandomMaskSplitMix64)->Arg(1 << 16);

}  // namespace

BENCHMARK_MAIN();
