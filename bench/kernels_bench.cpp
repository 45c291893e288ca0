// Micro-benchmarks behind smelt's I/O and kernel choices: pread into a reused buffer vs mmap for
// streaming a warm file (formats.md §3 measured pread faster on this VM class), and the dtype
// conversion and top-k kernels. Run: build/smelt_bench (figures in docs/performance.md).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "smelt/kernels/convert.h"
#include "smelt/kernels/random.h"
#include "smelt/kernels/select.h"

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

}  // namespace

BENCHMARK_MAIN();
