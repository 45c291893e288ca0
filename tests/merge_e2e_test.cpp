// End-to-end merges through the smelt binary, every output tensor checked against an independent
// numpy re-implementation of mergekit's semantics (tests/reference/mergekit_ref.py).
//
// The configs follow mergekit's examples (linear.yml, ties.yml, bio-merge.yml,
// gradient-slerp.yml in mergekit's examples/) with the model names replaced by tiny generated
// models.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>

#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_command;
using testing::run_smelt;
using testing::TempDir;

const char* const kPython = "/usr/bin/python3";  // Debian's, with python3-numpy and python3-yaml

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
    s.replace(pos, from.size(), to);
  }
  return s;
}

// Every regular file under `dir`, by relative path, with its bytes.
std::map<std::string, std::string> folder_bytes(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      files[fs::relative(e.path(), dir).string()] = testing::read_bytes(e.path());
    }
  }
  return files;
}

class MergeE2E : public ::testing::Test {
 protected:
  // Tiny models shared by the whole suite (made once):
  //   base            bf16, 4 layers, hidden 64, untied lm_head
  //   ft1, ft2, ft3   fine-tunes of base (ft2 stored in 2 shards, ft3 with a 50%-sparse delta)
  //   far             a fine-tune with a larger delta (slerp takes its non-linear branch)
  //   other16         an unrelated f16 model of the same shapes (mixed input dtypes)
  //   base32, ft32a, ft32b, ft32c   f32, 2 layers, hidden 32, tied embeddings
  static void SetUpTestSuite() {
    models_ = std::make_unique<TempDir>();
    const std::pair<const char*, const char*> specs[] = {
        {"base", "--layers 4 --hidden 64 --heads 4 --seed 1"},
        {"ft1", "--base @/base --seed 2 --delta-scale 0.01"},
        {"ft2", "--base @/base --seed 3 --delta-scale 0.01 --shards 2"},
        {"ft3", "--base @/base --seed 4 --delta-scale 0.01 --sparsity 0.5"},
        {"far", "--base @/base --seed 5 --delta-scale 0.03"},
        {"other16", "--layers 4 --hidden 64 --heads 4 --seed 6 --dtype F16"},
        {"base32", "--layers 2 --hidden 32 --heads 2 --seed 7 --dtype F32 --tied"},
        {"ft32a", "--base @/base32 --seed 8 --delta-scale 0.01"},
        {"ft32b", "--base @/base32 --seed 9 --delta-scale 0.02"},
        {"ft32c", "--base @/base32 --seed 10 --delta-scale 0.01 --sparsity 0.3"},
    };
    for (const auto& [name, args] : specs) {
      auto r = run_smelt("dev make-model " + quote(models_->path() / name) + " " +
                         replace_all(args, "@/", models_->path().string() + "/"));
      if (r.exit_code != 0) {
        setup_error_ += fmt::format("make-model {} failed:\n{}\n", name, r.output);
      }
    }
    auto py = run_command(std::string(kPython) + " -c 'import numpy, yaml'");
    if (py.exit_code != 0) {
      setup_error_ += "the reference needs " + std::string(kPython) +
                      " with numpy and yaml (Debian: python3-numpy python3-yaml; "
                      "scripts/setup.sh installs them):\n" +
                      py.output;
    }
  }
  static void TearDownTestSuite() { models_.reset(); }

  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  // The config text with "@/" replaced by the models folder, written into this test's folder.
  fs::path write_config(const std::string& name, const std::string& yaml) {
    const fs::path p = dir_ / (name + ".yml");
    testing::write_bytes(p, replace_all(yaml, "@/", models_->path().string() + "/"));
    return p;
  }

  // Runs `smelt merge CONFIG OUT` with extra arguments; fails the test on a non-zero exit.
  void merge(const fs::path& config, const fs::path& out, const std::string& args = "") {
    auto r = run_smelt("merge " + quote(config) + " " + quote(out) + " -q " + args);
    ASSERT_EQ(r.exit_code, 0) << "smelt merge " << config << " " << args << ":\n" << r.output;
  }

  // Runs the reference on OUT; it must exit 0 (its per-tensor summary is shown otherwise).
  void check_with_reference(const fs::path& config, const fs::path& out, uint64_t seed = 0) {
    const std::string cmd =
        fmt::format("{} {} {} {} --seed {}", kPython,
                    quote(fs::path(SMELT_SOURCE_DIR) / "tests" / "reference" / "mergekit_ref.py"),
                    quote(config), quote(out), seed);
    auto r = run_command(cmd);
    EXPECT_EQ(r.exit_code, 0) << "reference check failed: " << cmd << "\n" << r.output;
  }

  // Merge with smelt, then check every tensor with the reference.
  void merge_and_check(const std::string& name, const std::string& yaml, uint64_t seed = 0,
                       const std::string& args = "") {
    const fs::path config = write_config(name, yaml);
    const fs::path out = dir_ / (name + "-out");
    ASSERT_NO_FATAL_FAILURE(merge(config, out, fmt::format("--random-seed {} {}", seed, args)));
    check_with_reference(config, out, seed);
  }

  TempDir dir_;
  static inline std::unique_ptr<TempDir> models_;
  static inline std::string setup_error_;
};

// mergekit examples/linear.yml: three models, weights 1.0 / 0.3 / 0.5, normalised, float16.
// The third input is stored in F16 while the others are BF16 (one stored in 2 shards).
const char* const kLinearExample = R"(models:
  - model: @/ft1
    parameters:
      weight: 1.0
  - model: @/ft2
    parameters:
      weight: 0.3
  - model: @/other16
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
)";

// mergekit examples/ties.yml: density gradient, weight gradient, weight filter list.
const char* const kTiesExample = R"(models:
  - model: @/ft1
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: @/ft2
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: @/ft3
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: @/base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
)";

// dare_ties over the same models (density gradient; rescale on by default).
const char* const kDareTies = R"(models:
  - model: @/ft1
    parameters:
      density: 0.66
      weight: 0.5
  - model: @/ft2
    parameters:
      density: [0.3, 0.9]
      weight: 0.4
  - model: @/ft3
    parameters:
      density: 0.5
      weight: 0.6
merge_method: dare_ties
base_model: @/base
dtype: bfloat16
)";

TEST_F(MergeE2E, LinearExampleMatchesReference) { merge_and_check("linear", kLinearExample); }

TEST_F(MergeE2E, TiesExampleMatchesReference) { merge_and_check("ties", kTiesExample); }

// mergekit examples/bio-merge.yml: two models {density 0.5, weight 0.5}, normalize false.
TEST_F(MergeE2E, BioMergeTiesWithoutNormalizeMatchesReference) {
  merge_and_check("bio-merge", R"(models:
  - model: @/ft1
    parameters:
      density: 0.5
      weight: 0.5
  - model: @/ft3
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: @/base
parameters:
  normalize: false
  int8_mask: true
dtype: float16
)");
}

// mergekit examples/gradient-slerp.yml: one slice over all layers of both models, t filter
// lists with gradients (matrices take the slerp branch, norms the near-parallel lerp branch).
TEST_F(MergeE2E, GradientSlerpExampleMatchesReference) {
  merge_and_check("gradient-slerp", R"(slices:
  - sources:
      - model: @/base
        layer_range: [0, 4]
      - model: @/far
        layer_range: [0, 4]
merge_method: slerp
base_model: @/base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
)");
}

// Slices that renumber layers: global t filters match output names, each slice ramps 0 -> 1.
TEST_F(MergeE2E, SlerpOverRenumberedSlicesMatchesReference) {
  merge_and_check("slerp-slices", R"(slices:
  - sources:
      - model: @/base
        layer_range: [2, 4]
      - model: @/far
        layer_range: [2, 4]
  - sources:
      - model: @/base
        layer_range: [0, 3]
      - model: @/far
        layer_range: [0, 3]
    parameters:
      t:
        - filter: layers.3.
          value: 0.9
merge_method: slerp
base_model: @/base
parameters:
  t:
    - filter: layers.1.
      value: 0.2
    - value: [0.1, 0.6]
dtype: float16
)");
}

TEST_F(MergeE2E, TaskArithmeticWithLambdaMatchesReference) {
  merge_and_check("task-arithmetic", R"(models:
  - model: @/ft1
    parameters:
      weight: 0.7
  - model: @/ft2
    parameters:
      weight: [0.2, 0.9]
  - model: @/ft3
    parameters:
      weight:
        - filter: self_attn
          value: -0.5
merge_method: task_arithmetic
base_model: @/base
parameters:
  lambda: 0.8
  weight: 0.3
)");
}

TEST_F(MergeE2E, DareTiesMatchesReference) { merge_and_check("dare-ties", kDareTies, 42); }

TEST_F(MergeE2E, DareLinearMatchesReference) {
  merge_and_check("dare-linear", R"(models:
  - model: @/ft1
    parameters:
      density: 0.66
      weight: 0.5
  - model: @/ft2
    parameters:
      density: [0.9, 0.3]
      weight: 0.4
merge_method: dare_linear
base_model: @/base
parameters:
  normalize: true
dtype: float16
)",
                  7);
}

// Passthrough with a scale filter list (as in mergekit's examples), plus a per-layer gradient.
TEST_F(MergeE2E, PassthroughScaleFilterMatchesReference) {
  merge_and_check("passthrough-scale", R"(models:
  - model: @/ft1
    parameters:
      scale:
        - filter: o_proj
          value: 0
        - filter: layers.2.
          value: [2, -1]
        - value: 1
merge_method: passthrough
)");
}

// A frankenmerge (like orcamini-platy-44layer.yml): layers renumbered across slices, embeddings
// from the first slice, final norm and lm_head from the last; per-model scale filters match
// input names (so layers.1. scales output layers 1 and 3).
TEST_F(MergeE2E, PassthroughFrankenmergeMatchesReference) {
  merge_and_check("frankenmerge", R"(slices:
  - sources:
      - model: @/ft1
        layer_range: [0, 3]
  - sources:
      - model: @/ft2
        layer_range: [1, 4]
    parameters:
      scale:
        - filter: mlp
          value: 0.25
merge_method: passthrough
parameters:
  scale:
    - filter: layers.1.
      value: 0.5
dtype: float16
)");
}

// f32 models, no dtype: output stays F32 and must match the reference to 1e-6.
TEST_F(MergeE2E, TiesF32WithoutDtypeMatchesReference) {
  merge_and_check("ties-f32", R"(models:
  - model: @/ft32a
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: @/ft32b
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: @/ft32c
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: @/base32
parameters:
  normalize: true
  int8_mask: true
)");
}

TEST_F(MergeE2E, LinearF32WithoutDtypeMatchesReference) {
  merge_and_check("linear-f32", R"(models:
  - model: @/ft32a
    parameters:
      weight: 1.0
  - model: @/ft32b
    parameters:
      weight: 0.3
  - model: @/ft32c
    parameters:
      weight: 0.5
merge_method: linear
)");
}

TEST_F(MergeE2E, ShardedOutputMatchesReference) {
  const fs::path config = write_config("ties", kTiesExample);
  const fs::path out = dir_ / "sharded";
  ASSERT_NO_FATAL_FAILURE(merge(config, out, "--out-shard-size 100k"));
  ASSERT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(out)) {
    if (e.path().extension() == ".safetensors") ++shards;
  }
  EXPECT_GE(shards, 3);
  check_with_reference(config, out);
}

// Same config and seed with 1 and 2 threads: byte-identical output folders (every file).
TEST_F(MergeE2E, OutputIsByteIdenticalAcrossThreadCounts) {
  for (const auto& [name, yaml] : {std::pair{"ties", kTiesExample}, {"dare-ties", kDareTies}}) {
    SCOPED_TRACE(name);
    const fs::path config = write_config(name, yaml);
    // Same folder name (the model card names it) under different parents.
    const fs::path one = dir_ / fmt::format("{}-j1", name) / "merged";
    const fs::path two = dir_ / fmt::format("{}-j2", name) / "merged";
    ASSERT_NO_FATAL_FAILURE(merge(config, one, "--random-seed 5 -j 1 --out-shard-size 150k"));
    ASSERT_NO_FATAL_FAILURE(merge(config, two, "--random-seed 5 -j 2 --out-shard-size 150k"));
    const auto a = folder_bytes(one);
    const auto b = folder_bytes(two);
    std::vector<std::string> names_a, names_b;
    for (const auto& [f, _] : a) names_a.push_back(f);
    for (const auto& [f, _] : b) names_b.push_back(f);
    ASSERT_EQ(names_a, names_b);
    EXPECT_GE(std::count_if(names_a.begin(), names_a.end(),
                            [](const std::string& f) { return f.ends_with(".safetensors"); }),
              2);
    for (const auto& [f, bytes] : a) EXPECT_TRUE(bytes == b.at(f)) << f << " differs";
  }
}

TEST_F(MergeE2E, DareOutputDependsOnSeed) {
  const fs::path config = write_config("dare-ties", kDareTies);
  ASSERT_NO_FATAL_FAILURE(merge(config, dir_ / "seed1", "--random-seed 1"));
  ASSERT_NO_FATAL_FAILURE(merge(config, dir_ / "seed2", "--random-seed 2"));
  EXPECT_NE(testing::read_bytes(dir_ / "seed1" / "model.safetensors"),
            testing::read_bytes(dir_ / "seed2" / "model.safetensors"));
  check_with_reference(config, dir_ / "seed2", 2);
}

}  // namespace
}  // namespace smelt
