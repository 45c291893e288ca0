// What smelt promises about its output path (docs/reliability.md), tried as a hostile or unlucky
// user would: things appearing at OUT during a merge, two merges into one OUT, --overwrite next to
// a user's own files, special files at the output path, kill -9 and Ctrl-C at several points, a
// full disk, a read-only folder, inputs modified during a merge. The merges are paused or killed
// at named points through the test hooks of src/smelt/test_hooks.h.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <future>
#include <thread>

#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"
#include "smelt/io/write_ledger.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_command;
using testing::run_smelt;
using testing::TempDir;

#define EXPECT_HAS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "in: " << (text)

// Writes a linear merge of models `a` and `b` (paths) to `config`; also the suite's own config.
void write_linear_config(const fs::path& config, const fs::path& a, const fs::path& b) {
  testing::write_bytes(
      config,
      fmt::format("merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n"
                  "  - model: {}\n    parameters: {{weight: 0.5}}\ndtype: float32\n",
                  a.string(), b.string()));
}

class OutputSafety : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string small = " --hidden 64 --layers 2 --heads 2 --vocab 300";
    auto mk = [](const std::string& args) {
      auto r = run_smelt("dev make-model " + args);
      ASSERT_EQ(r.exit_code, 0) << r.output;
    };
    mk(quote(*dir_ / "a") + small);
    mk(quote(*dir_ / "b") + " --base " + quote(*dir_ / "a") + " --seed 2");
    write_linear_config(*dir_ / "linear.yml", *dir_ / "a", *dir_ / "b");
  }
  static void TearDownTestSuite() { delete dir_; }

  static fs::path model(const std::string& name) { return *dir_ / name; }
  static std::string config() { return quote(*dir_ / "linear.yml"); }

  // Entries beside `out` that a run writing `out` created (lock, temporaries).
  static std::vector<std::string> leftovers(const fs::path& out) {
    std::vector<std::string> found;
    const std::string prefix = "." + out.filename().string() + ".smelt-";
    for (const auto& e : fs::directory_iterator(out.parent_path())) {
      const std::string n = e.path().filename().string();
      if (n.starts_with(prefix)) found.push_back(n);
    }
    return found;
  }

  // A merge started in the background, paused at `point` until resume().
  struct Paused {
    fs::path flag;
    fs::path pid_file;
    std::future<testing::CommandResult> result;
    bool reached() {
      for (int i = 0; i < 6000 && !fs::exists(flag); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (result.wait_for(std::chrono::seconds(0)) == std::future_status::ready) return false;
      }
      return fs::exists(flag);
    }
    pid_t pid() const { return static_cast<pid_t>(std::stol(testing::read_bytes(pid_file))); }
    testing::CommandResult resume() {
      fs::remove(flag);
      return result.get();
    }
  };
  static Paused start_paused(const TempDir& work, const std::string& point,
                             const std::string& args) {
    Paused p;
    p.flag = work / ("pause-" + point);
    p.pid_file = work / ("pid-" + point);
    const std::string cmd = fmt::format(
        "sh -c 'echo $$ > {}; SMELT_TEST_PAUSE_AT={} SMELT_TEST_PAUSE_FILE={} exec {} {}'",
        p.pid_file.string(), point, p.flag.string(), SMELT_BIN, args);
    p.result = std::async(std::launch::async, [cmd] { return run_command(cmd); });
    return p;
  }

  static TempDir* dir_;
};
TempDir* OutputSafety::dir_ = nullptr;

std::string merge_args(const fs::path& out, const std::string& extra = "") {
  return fmt::format("merge {} {} -q {}", quote(out.parent_path().parent_path() / "linear.yml"),
                     quote(out), extra);
}

// A model folder that smelt can open, with its tensor count.
size_t tensor_count(const fs::path& folder) {
  return io::Model::open(folder.string())->tensors().size();
}

TEST_F(OutputSafety, AFolderCreatedAtOutDuringTheMergeIsNeverReplaced) {
  TempDir work;
  const fs::path out = work / "out";
  auto run =
      start_paused(work, "before-publish", fmt::format("merge {} {} -q", config(), quote(out)));
  ASSERT_TRUE(run.reached());
  fs::create_directories(out);
  testing::write_bytes(out / "notes.txt", "mine");
  const auto r = run.resume();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "during the merge");
  EXPECT_EQ(testing::read_bytes(out / "notes.txt"), "mine");
  EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator()), 1);
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, AFileCreatedAtAGgufOutDuringTheMergeIsNeverReplaced) {
  TempDir work;
  const fs::path out = work / "merged.gguf";
  auto run =
      start_paused(work, "before-publish", fmt::format("merge {} {} -q", config(), quote(out)));
  ASSERT_TRUE(run.reached());
  testing::write_bytes(out, "my file");
  const auto r = run.resume();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "during the merge");
  EXPECT_EQ(testing::read_bytes(out), "my file");
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, ASecondMergeIntoTheSameOutIsRefusedWhileTheFirstRuns) {
  TempDir work;
  const fs::path out = work / "out";
  auto first =
      start_paused(work, "first-chunk", fmt::format("merge {} {} -q", config(), quote(out)));
  ASSERT_TRUE(first.reached());
  const auto second = run_smelt(fmt::format("merge {} {} -q --overwrite", config(), quote(out)));
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_HAS(second.output, fmt::format("another smelt (pid {})", first.pid()));
  const auto r = first.resume();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(tensor_count(out), tensor_count(model("a")));
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, OverwriteReplacesAModelFolderButNeverAUsersOtherFiles) {
  TempDir work;
  const fs::path out = work / "out";
  // An earlier output with more shards than the new one: every old shard must go.
  ASSERT_EQ(
      run_smelt(fmt::format("merge {} {} -q --out-shard-size 20k", config(), quote(out))).exit_code,
      0);
  ASSERT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  testing::write_bytes(out / "notes.txt", "mine");
  fs::create_directories(out / "eval");
  auto r = run_smelt(fmt::format("merge {} {} -q --overwrite", config(), quote(out)));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "notes.txt");
  EXPECT_HAS(r.output, "eval (a folder)");
  EXPECT_EQ(testing::read_bytes(out / "notes.txt"), "mine");
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));

  fs::remove(out / "notes.txt");
  fs::remove(out / "eval");
  r = run_smelt(fmt::format("merge {} {} -q --overwrite", config(), quote(out)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_FALSE(e.path().filename().string().starts_with("model-")) << e.path();
  }
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, GgufOutputNeverReplacesAnythingButARegularFile) {
  TempDir work;
  testing::write_bytes(work / "precious.txt", "precious");
  fs::create_symlink(work / "precious.txt", work / "link.gguf");
  ASSERT_EQ(::mkfifo((work / "fifo.gguf").c_str(), 0644), 0);
  for (const char* name : {"link.gguf", "fifo.gguf"}) {
    const fs::path out = work / name;
    const auto r = run_smelt(fmt::format("merge {} {} -q --overwrite", config(), quote(out)));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_HAS(r.output, "only replaces a regular file");
    EXPECT_TRUE(leftovers(out).empty());
  }
  EXPECT_TRUE(fs::is_symlink(work / "link.gguf"));
  EXPECT_EQ(fs::status(work / "fifo.gguf").type(), fs::file_type::fifo);
  EXPECT_EQ(testing::read_bytes(work / "precious.txt"), "precious");
  // A regular file is replaced with --overwrite.
  testing::write_bytes(work / "old.gguf", "old");
  const auto r =
      run_smelt(fmt::format("merge {} {} -q --overwrite", config(), quote(work / "old.gguf")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(testing::read_bytes(work / "old.gguf").substr(0, 4), "GGUF");
}

// kill -9 at each point: OUT never looks complete unless it is, and the same command run again
// succeeds and removes what the dead run left (453 MB after 7 kills before this was fixed).
TEST_F(OutputSafety, KillNineAtAnyPointLeavesNoCompleteLookingOutputAndRerunCleansUp) {
  for (const char* point : {"first-chunk", "before-publish"}) {
    for (const char* shape : {"out", "out.gguf"}) {
      SCOPED_TRACE(fmt::format("{} {}", point, shape));
      TempDir work;
      const fs::path out = work / shape;
      for (int kill = 0; kill < 3; ++kill) {
        const auto r = run_command(fmt::format("SMELT_TEST_CRASH_AT={} {} merge {} {} -q", point,
                                               SMELT_BIN, config(), quote(out)));
        EXPECT_NE(r.exit_code, 0);
        EXPECT_FALSE(fs::exists(out));
      }
      EXPECT_FALSE(leftovers(out).empty());  // what the dead runs left
      const auto r = run_smelt(fmt::format("merge {} {}", config(), quote(out)));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      EXPECT_HAS(r.output, "left beside");
      EXPECT_TRUE(leftovers(out).empty());
      EXPECT_EQ(tensor_count(out), tensor_count(model("a")));
    }
  }
}

TEST_F(OutputSafety, KillNineAfterTheOverwriteSwapLeavesTheNewOutputComplete) {
  TempDir work;
  const fs::path out = work / "out";
  ASSERT_EQ(
      run_smelt(fmt::format("merge {} {} -q --out-shard-size 20k", config(), quote(out))).exit_code,
      0);
  const auto killed =
      run_command(fmt::format("SMELT_TEST_CRASH_AT=after-swap {} merge {} {} -q --overwrite",
                              SMELT_BIN, config(), quote(out)));
  EXPECT_NE(killed.exit_code, 0);
  // The new output is in place and complete (one file), the old one waits beside it.
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_EQ(tensor_count(out), tensor_count(model("a")));
  EXPECT_FALSE(leftovers(out).empty());
  const auto r = run_smelt(fmt::format("merge {} {} --overwrite", config(), quote(out)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, CtrlCAndSigtermStopTheMergeAndRemoveTemporaries) {
  for (int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig);
    TempDir work;
    const fs::path out = work / "out";
    auto run =
        start_paused(work, "first-chunk", fmt::format("merge {} {} -q", config(), quote(out)));
    ASSERT_TRUE(run.reached());
    ASSERT_EQ(::kill(run.pid(), sig), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const auto r = run.resume();
    EXPECT_EQ(r.exit_code, 128 + sig) << r.output;
    EXPECT_HAS(r.output, "interrupted");
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(leftovers(out).empty()) << leftovers(out).size();
  }
}

TEST_F(OutputSafety, AnInputModifiedDuringTheMergeIsAnError) {
  TempDir work;
  fs::copy(model("b"), work / "b");
  write_linear_config(work / "c.yml", model("a"), work / "b");
  const fs::path out = work / "out";
  auto run = start_paused(work, "before-publish",
                          fmt::format("merge {} {} -q", quote(work / "c.yml"), quote(out)));
  ASSERT_TRUE(run.reached());
  {  // rewrite one byte in place, as a download or another tool would
    const int fd = ::open((work / "b" / "model.safetensors").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "\x01", 1, 4000), 1);
    ::close(fd);
  }
  const auto r = run.resume();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, "was modified during the merge");
  EXPECT_HAS(r.output, (work / "b" / "model.safetensors").string());
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, AnInputTruncatedDuringTheMergeIsAClearReadError) {
  TempDir work;
  fs::copy(model("b"), work / "b");
  write_linear_config(work / "c.yml", model("a"), work / "b");
  const fs::path out = work / "out";
  auto run = start_paused(work, "first-chunk",
                          fmt::format("merge {} {} -q -j 1", quote(work / "c.yml"), quote(out)));
  ASSERT_TRUE(run.reached());
  fs::resize_file(work / "b" / "model.safetensors", 1000);
  const auto r = run.resume();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, (work / "b" / "model.safetensors").string());
  EXPECT_HAS(r.output, "unexpected end of file");
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(out).empty());
}

// A small filesystem: a tmpfs when running as root (the real ENOSPC), else a file size limit
// (the real EFBIG) on the child.
class SmallDisk {
 public:
  SmallDisk(const fs::path& where, uint64_t bytes, bool read_only = false) : path_(where) {
    fs::create_directories(path_);
    if (::geteuid() == 0) {
      const std::string opts = fmt::format("size={}", bytes);
      mounted_ =
          ::mount("tmpfs", path_.c_str(), "tmpfs", read_only ? MS_RDONLY : 0, opts.c_str()) == 0;
    }
    if (!mounted_) {
      limit_ = fmt::format("ulimit -f {} && ", bytes / 1024);
      if (read_only) fs::permissions(path_, fs::perms::owner_read | fs::perms::owner_exec);
    }
  }
  ~SmallDisk() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, ec);
  }
  // Shell prefix for the child (empty on a real small filesystem).
  const std::string& prefix() const { return limit_; }
  bool mounted() const { return mounted_; }

 private:
  fs::path path_;
  bool mounted_ = false;
  std::string limit_;
};

TEST_F(OutputSafety, ADiskFullIsAClearErrorNamingOutAndLeavesNothing) {
  TempDir work;
  const SmallDisk disk(work / "disk", 64 * 1024);
  for (const char* shape : {"out", "out.gguf"}) {
    const fs::path out = work / "disk" / shape;
    const auto r = run_command(
        fmt::format("{}{} merge {} {} -q", disk.prefix(), SMELT_BIN, config(), quote(out)));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_HAS(r.output, disk.mounted() ? "No space left on device" : "File too large");
    EXPECT_HAS(r.output, out.string());
    EXPECT_EQ(r.output.find("smelt-tmp"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(leftovers(out).empty());
  }
}

TEST_F(OutputSafety, ADiskFullWhileCopyingTheTokenizerIsAClearError) {
  TempDir work;
  // Weights fit; a large tokenizer.json does not.
  fs::copy(model("a"), work / "a");
  std::string big(3 << 20, ' ');
  big.front() = '{';
  big.back() = '}';
  testing::write_bytes(work / "a" / "tokenizer.json", big);
  write_linear_config(work / "c.yml", work / "a", model("b"));
  const SmallDisk disk(work / "disk", 1 << 20);
  const fs::path out = work / "disk" / "out";
  const auto r = run_command(fmt::format("{}{} merge {} {} -q", disk.prefix(), SMELT_BIN,
                                         quote(work / "c.yml"), quote(out)));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_HAS(r.output, (out / "tokenizer.json").string());
  EXPECT_EQ(r.output.find("smelt-tmp"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(out).empty());
}

TEST_F(OutputSafety, AReadOnlyOrMissingParentIsAOneLineError) {
  TempDir work;
  const SmallDisk ro(work / "ro", 1 << 20, /*read_only=*/true);
  testing::write_bytes(work / "file", "x");
  for (const fs::path& out : {work / "ro" / "out", work / "file" / "out"}) {
    const auto r = run_smelt(fmt::format("merge {} {} -q", config(), quote(out)));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_HAS(r.output, "smelt: error: ");
    EXPECT_HAS(r.output, out.parent_path().string());
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  }
  EXPECT_EQ(testing::read_bytes(work / "file"), "x");
}

TEST(OutputClaim, TemporariesAreRecognisedOnlyByTheirExactName) {
  EXPECT_TRUE(io::is_temporary_of(".out.smelt-tmp-0123abcd", "out"));
  EXPECT_TRUE(io::is_temporary_of(".m.gguf.smelt-old-ffffffff", "m.gguf"));
  EXPECT_FALSE(io::is_temporary_of(".out.smelt-tmp-0123abc", "out"));
  EXPECT_FALSE(io::is_temporary_of(".out.smelt-tmp-0123abcdz", "out"));
  EXPECT_FALSE(io::is_temporary_of(".other.smelt-tmp-0123abcd", "out"));
  EXPECT_FALSE(io::is_temporary_of("out.smelt-tmp-0123abcd", "out"));
  EXPECT_TRUE(io::is_model_file_name("model-00001-of-00002.safetensors"));
  EXPECT_TRUE(io::is_model_file_name(".config.json.smelt-tmp-00000000"));
  EXPECT_FALSE(io::is_model_file_name("notes.txt"));
  EXPECT_FALSE(io::is_model_file_name("merge.yml"));
}

TEST(OutputClaim, AStaleTemporaryHoldingAUsersFileIsLeftAlone) {
  TempDir work;
  fs::create_directories(work / ".out.smelt-tmp-00c0ffee");
  testing::write_bytes(work / ".out.smelt-tmp-00c0ffee" / "model.safetensors", "x");
  testing::write_bytes(work / ".out.smelt-tmp-00c0ffee" / "diary.txt", "mine");
  testing::write_bytes(work / ".out.smelt-tmp-12345678", "partial gguf");
  io::OutputClaim claim(work / "out");
  ASSERT_EQ(claim.removed().size(), 1u);
  EXPECT_EQ(claim.removed()[0].filename(), ".out.smelt-tmp-12345678");
  ASSERT_EQ(claim.kept().size(), 1u);
  EXPECT_EQ(testing::read_bytes(work / ".out.smelt-tmp-00c0ffee" / "diary.txt"), "mine");
}

TEST(WriteLedger, EveryByteExactlyOnce) {
  io::WriteLedger ledger("f", {"a", "b"}, {100, 10});
  ledger.record(0, 50, 50);
  ledger.record(0, 0, 20);
  EXPECT_THROW(ledger.check_complete(), Error);   // 20..50 missing, b missing
  EXPECT_THROW(ledger.record(0, 10, 20), Error);  // overlaps 0..20
  EXPECT_THROW(ledger.record(0, 45, 10), Error);  // overlaps 50..100
  EXPECT_THROW(ledger.record(0, 95, 10), Error);  // outside the tensor
  ledger.record(0, 20, 30);
  ledger.record(1, 0, 10);
  EXPECT_NO_THROW(ledger.check_complete());
  EXPECT_THROW(ledger.record(1, 9, 1), Error);  // the last byte again
}

TEST(WriteLedger, AWriterRefusesARangeWrittenTwiceEvenWhenTheCountAddsUp) {
  TempDir work;
  io::SafetensorsWriter w(work / "x.safetensors", {{"t", DType::kF32, {4}}}, {});
  const float v[4] = {1, 2, 3, 4};
  w.write(0, 0, v, 8);
  EXPECT_THROW(w.write(0, 0, v, 8), Error);  // a byte count would have reached 16 and passed
  EXPECT_THROW(w.finish(), Error);
  EXPECT_FALSE(fs::exists(work / "x.safetensors"));
}

}  // namespace
}  // namespace smelt
