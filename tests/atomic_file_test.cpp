// Tests of AtomicFile: direct-I/O write combining (blocks, bound, eviction, fallback, errors)
// against byte-for-byte expectations built independently in memory.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <random>
#include <thread>

#include "smelt/error.h"
#include "smelt/io/file_util.h"
#include "test_util.h"

namespace smelt::io {
namespace {

using smelt::testing::read_bytes;
using smelt::testing::TempDir;

constexpr uint64_t kSmallBlock = uint64_t{64} << 10;

struct Region {
  uint64_t offset = 0;
  uint64_t size = 0;
};

// A file image: random bytes in `regions`, zeros elsewhere.
struct Image {
  std::string bytes;
  std::vector<Region> regions;
};

// A header at 0, then regions of 1 byte to 3 blocks separated by random gaps (often none), up to
// about `target` bytes; the file ends with a gap half the time.
Image random_image(std::mt19937_64& rng, uint64_t block, uint64_t target) {
  Image img;
  std::uniform_int_distribution<int> byte(0, 255);
  auto rand_below = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n)(rng); };
  uint64_t pos = 0;
  img.regions.push_back({0, 1 + rand_below(300)});
  pos = img.regions.back().size;
  while (pos < target) {
    const uint64_t gap = rand_below(3) == 0 ? rand_below(block / 2) : rand_below(3) * 8;
    const uint64_t kind = rand_below(3);
    const uint64_t size =
        kind == 0 ? 1 + rand_below(64) : 1 + rand_below(kind == 1 ? block : 3 * block);
    img.regions.push_back({pos + gap, size});
    pos += gap + size;
  }
  if (rand_below(1) == 0) pos += rand_below(block);
  img.bytes.assign(pos, '\0');
  for (const Region& r : img.regions) {
    for (uint64_t i = 0; i < r.size; ++i) img.bytes[r.offset + i] = static_cast<char>(byte(rng));
  }
  return img;
}

// Every region cut into pieces of 1 byte to 1.5 blocks, shuffled.
std::vector<Region> shuffled_pieces(std::mt19937_64& rng, const std::vector<Region>& regions,
                                    uint64_t block) {
  std::vector<Region> pieces;
  for (const Region& r : regions) {
    uint64_t done = 0;
    while (done < r.size) {
      const uint64_t n = std::min(
          r.size - done, std::uniform_int_distribution<uint64_t>(1, block + block / 2)(rng));
      pieces.push_back({r.offset + done, n});
      done += n;
    }
  }
  std::shuffle(pieces.begin(), pieces.end(), rng);
  return pieces;
}

// Writes `pieces` of `bytes` from `threads` threads taking pieces in order; rethrows the first
// error a thread caught.
void write_pieces(AtomicFile& f, const std::string& bytes, const std::vector<Region>& pieces,
                  int threads) {
  std::atomic<size_t> next{0};
  std::vector<std::string> errors(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
          f.pwrite(bytes.data() + pieces[i].offset, pieces[i].size, pieces[i].offset);
        }
      } catch (const Error& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors) {
    if (!e.empty()) throw Error(e);
  }
}

// Whether files in `dir` can be opened with O_DIRECT (so direct-mode tests really use it).
bool direct_io_supported(const std::filesystem::path& dir) {
  const auto probe = dir / "probe";
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0644);
  if (fd >= 0) ::close(fd);
  std::filesystem::remove(probe);
  return fd >= 0;
}

// Writes a random image as declared regions from 4 threads and checks the file byte for byte.
void check_random_image(const std::filesystem::path& dir, uint64_t seed, AtomicFileOptions options,
                        uint64_t block, uint64_t target, uint64_t* evicted = nullptr) {
  std::mt19937_64 rng(seed);
  const Image img = random_image(rng, block, target);
  const auto path = dir / ("random-" + std::to_string(seed) + ".bin");
  {
    AtomicFile f(path, img.bytes.size(), options);
    for (const Region& r : img.regions) f.expect(r.offset, r.size);
    write_pieces(f, img.bytes, shuffled_pieces(rng, img.regions, block), 4);
    if (options.direct_io && direct_io_supported(dir)) {
      EXPECT_TRUE(f.direct_io());
    }
    f.commit();
    if (evicted) *evicted = f.evicted_blocks();
  }
  const std::string got = read_bytes(path);
  ASSERT_EQ(got.size(), img.bytes.size()) << "seed " << seed;
  EXPECT_TRUE(got == img.bytes) << "seed " << seed << ": file differs from the expected bytes";
}

AtomicFileOptions direct_options(uint64_t block = kSmallBlock) {
  AtomicFileOptions o;
  o.direct_io = true;
  o.block_bytes = block;
  return o;
}

AtomicFileOptions buffered_options() {
  AtomicFileOptions o;
  o.direct_io = false;
  return o;
}

// Sets an environment variable for the scope, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

size_t entries_in(const std::filesystem::path& dir) {
  return static_cast<size_t>(std::distance(std::filesystem::directory_iterator(dir), {}));
}

TEST(AtomicFile_Direct, ShuffledRegionsFromFourThreadsMatchExpectedBytes) {
  TempDir dir;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    check_random_image(dir.path(), seed, direct_options(), kSmallBlock, 40 * kSmallBlock);
  }
}

TEST(AtomicFile_Direct, DefaultFourMiBBlocksMatchExpectedBytes) {
  TempDir dir;
  AtomicFileOptions o;
  o.direct_io = true;
  check_random_image(dir.path(), 11, o, o.block_bytes, 5 * o.block_bytes);
}

TEST(AtomicFile_Buffered, ShuffledRegionsFromFourThreadsMatchExpectedBytes) {
  TempDir dir;
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    check_random_image(dir.path(), seed, buffered_options(), kSmallBlock, 40 * kSmallBlock);
  }
}

TEST(AtomicFile_Buffered, SmeltDirectIoZeroInEnvironmentTurnsDirectIoOff) {
  TempDir dir;
  {
    ScopedEnv env("SMELT_DIRECT_IO", "0");
    EXPECT_FALSE(AtomicFileOptions{}.direct_io);
    AtomicFile f(dir / "env.bin", 10000);
    EXPECT_FALSE(f.direct_io());
    check_random_image(dir.path(), 21, AtomicFileOptions{}, kSmallBlock, 10 * kSmallBlock);
  }
  {
    ScopedEnv env("SMELT_DIRECT_IO", "1");
    EXPECT_TRUE(AtomicFileOptions{}.direct_io);
  }
}

TEST(AtomicFile_Direct, FileSmallerThanOneAlignmentUnit) {
  TempDir dir;
  for (const bool direct : {true, false}) {
    const auto path = dir / (direct ? "small-direct.bin" : "small-buffered.bin");
    std::string expected(100, '\0');
    for (int i = 0; i < 40; ++i) expected[i] = static_cast<char>('a' + i % 26);
    for (int i = 70; i < 97; ++i) expected[i] = static_cast<char>(i);
    AtomicFileOptions o = direct ? direct_options() : buffered_options();
    {
      AtomicFile f(path, expected.size(), o);
      f.expect(0, 40);
      f.expect(70, 27);
      f.pwrite(expected.data() + 70, 27, 70);
      f.pwrite(expected.data(), 40, 0);
      f.commit();
    }
    EXPECT_EQ(read_bytes(path), expected) << (direct ? "direct" : "buffered");
  }
}

TEST(AtomicFile_Direct, EmptyFileCommits) {
  TempDir dir;
  {
    AtomicFile f(dir / "empty.bin", 0, direct_options());
    f.expect(0, 0);
    f.commit();
  }
  EXPECT_EQ(read_bytes(dir / "empty.bin"), "");
}

TEST(AtomicFile_Direct, SizeExactMultipleOfTheBlock) {
  TempDir dir;
  for (const uint64_t block : {kSmallBlock, uint64_t{4} << 20}) {
    std::mt19937_64 rng(block);
    const uint64_t size = 3 * block;
    std::string bytes(size, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    const std::vector<Region> whole = {{0, size}};
    const auto path = dir / ("multiple-" + std::to_string(block) + ".bin");
    {
      AtomicFile f(path, size, direct_options(block));
      f.expect(0, size);
      write_pieces(f, bytes, shuffled_pieces(rng, whole, block / 4), 4);
      f.commit();
    }
    EXPECT_TRUE(read_bytes(path) == bytes) << "block " << block;
  }
}

TEST(AtomicFile_Direct, TinyInFlightBoundEvictsPartialBlocksAndKeepsEveryByte) {
  TempDir dir;
  AtomicFileOptions o = direct_options();
  o.max_in_flight_bytes = 2 * kSmallBlock;
  uint64_t evicted_total = 0;
  for (uint64_t seed = 31; seed <= 34; ++seed) {
    uint64_t evicted = 0;
    check_random_image(dir.path(), seed, o, kSmallBlock, 60 * kSmallBlock, &evicted);
    evicted_total += evicted;
  }
  if (direct_io_supported(dir.path())) {
    EXPECT_GT(evicted_total, 0u) << "shuffled writes with a 2-block bound should evict";
  }
}

TEST(AtomicFile_Direct, BytesNobodyDeclaredStillLandAfterTheirBlockWasWritten) {
  TempDir dir;
  const uint64_t size = 3 * kSmallBlock;
  std::string bytes(size, '\0');
  for (uint64_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 7 + 3);
  const auto path = dir / "undeclared.bin";
  {
    AtomicFile f(path, size, direct_options());
    f.expect(0, 1000);  // block 0 completes after these bytes; the rest is a surprise
    f.pwrite(bytes.data(), 1000, 0);
    f.pwrite(bytes.data() + 1000, size - 1000, 1000);
    f.commit();
  }
  EXPECT_TRUE(read_bytes(path) == bytes);
  // Never declaring anything means every byte is expected.
  {
    AtomicFile f(path.string() + ".2", size, direct_options());
    f.pwrite(bytes.data() + 5000, size - 5000, 5000);
    f.pwrite(bytes.data(), 5000, 0);
    f.commit();
  }
  EXPECT_TRUE(read_bytes(path.string() + ".2") == bytes);
}

TEST(AtomicFile_Direct, KernelRefusingDirectWritesFallsBackToBufferedWithoutLosingData) {
  TempDir dir;
  // A 256-byte alignment is below what the disk accepts (512 or 4096) on most filesystems, so
  // direct writes fail with EINVAL.
  AtomicFileOptions o = direct_options(kSmallBlock + 256);
  o.alignment = 256;
  std::mt19937_64 rng(41);
  const Image img = random_image(rng, o.block_bytes, 20 * o.block_bytes);
  const auto path = dir / "fallback.bin";
  bool direct_after = true;
  {
    AtomicFile f(path, img.bytes.size(), o);
    for (const Region& r : img.regions) f.expect(r.offset, r.size);
    write_pieces(f, img.bytes, shuffled_pieces(rng, img.regions, o.block_bytes), 4);
    f.commit();
    direct_after = f.direct_io();
  }
  EXPECT_TRUE(read_bytes(path) == img.bytes);
  struct statx stx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > 256) {
    EXPECT_FALSE(direct_after) << "direct writes at 256-byte alignment should have been refused";
  }
}

TEST(AtomicFile_Direct, DestroyedUncommittedLeavesNoTempAndNothingAtThePath) {
  TempDir dir;
  for (const bool direct : {true, false}) {
    std::mt19937_64 rng(51);
    const Image img = random_image(rng, kSmallBlock, 30 * kSmallBlock);
    {
      AtomicFile f(dir / "never.bin", img.bytes.size(),
                   direct ? direct_options() : buffered_options());
      for (const Region& r : img.regions) f.expect(r.offset, r.size);
      auto pieces = shuffled_pieces(rng, img.regions, kSmallBlock);
      pieces.resize(pieces.size() / 2);
      write_pieces(f, img.bytes, pieces, 4);
      EXPECT_EQ(entries_in(dir.path()), 1u);  // the temporary file
    }
    EXPECT_FALSE(std::filesystem::exists(dir / "never.bin"));
    EXPECT_EQ(entries_in(dir.path()), 0u) << (direct ? "direct" : "buffered");
  }
}

// Lowers RLIMIT_FSIZE for the scope (writes past it fail with EFBIG, a real write error) and
// ignores SIGXFSZ, restoring both after.
class ScopedFileSizeLimit {
 public:
  explicit ScopedFileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim = old_;
    lim.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &lim) == 0;
  }
  ~ScopedFileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }
  bool ok() const { return ok_; }

 private:
  rlimit old_{};
  sighandler_t old_handler_ = SIG_DFL;
  bool ok_ = false;
};

TEST(AtomicFile_Direct, FailedWriteSurfacesAsErrorAndNothingIsCommitted) {
  TempDir dir;
  for (const bool direct : {true, false}) {
    std::mt19937_64 rng(61);
    const uint64_t size = 40 * kSmallBlock;
    std::string bytes(size, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    std::string message;
    {
      AtomicFile f(dir / "full.bin", size, direct ? direct_options() : buffered_options());
      f.expect(0, size);
      ScopedFileSizeLimit limit(size / 2);
      ASSERT_TRUE(limit.ok());
      try {
        for (uint64_t off = 0; off < size; off += kSmallBlock / 2) {
          f.pwrite(bytes.data() + off, kSmallBlock / 2, off);
        }
        f.commit();
      } catch (const Error& e) {
        message = e.what();
      }
      EXPECT_FALSE(f.committed());
    }
    EXPECT_NE(message.find("is the disk full?"), std::string::npos) << message;
    // The error names the file the caller asked for, never the hidden temporary.
    EXPECT_NE(message.find("full.bin: write failed"), std::string::npos) << message;
    EXPECT_EQ(message.find("smelt-tmp"), std::string::npos) << message;
    EXPECT_FALSE(std::filesystem::exists(dir / "full.bin"));
    EXPECT_EQ(entries_in(dir.path()), 0u);
  }
}

TEST(AtomicFile_Direct, OutputOnTmpfsIsCorrect) {
  if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  std::random_device rd;
  const auto dir = std::filesystem::path("/dev/shm") / ("smelt-test-" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  check_random_image(dir, 71, direct_options(), kSmallBlock, 30 * kSmallBlock);
  AtomicFileOptions tiny = direct_options();
  tiny.max_in_flight_bytes = 2 * kSmallBlock;
  check_random_image(dir, 72, tiny, kSmallBlock, 30 * kSmallBlock);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace smelt::io
