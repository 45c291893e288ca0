// `smelt average`: checkpoint ordering, the uniform tail average byte-identical to the equivalent
// linear `smelt merge`, the EMA equal to its formula, and clear errors on bad input.
#include <fmt/format.h>

#include <cmath>
#include <map>

#include "smelt/analysis/checkpoints.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

// Every tensor of a model as f32 values (the test models are F32).
std::map<std::string, std::vector<float>> read_f32_tensors(const fs::path& dir) {
  std::map<std::string, std::vector<float>> out;
  auto m = io::Model::open(dir.string());
  for (const auto& t : m->tensors()) {
    EXPECT_EQ(t.info->dtype, DType::kF32) << t.info->name;
    std::vector<float> v(t.info->numel());
    t.file->read(*t.info, 0, v.data(), v.size() * 4);
    out[t.info->name] = std::move(v);
  }
  return out;
}

// Every tensor's stored bytes.
std::map<std::string, std::string> read_tensor_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  auto m = io::Model::open(dir.string());
  for (const auto& t : m->tensors()) {
    std::string bytes(t.info->nbytes, '\0');
    t.file->read(*t.info, 0, bytes.data(), bytes.size());
    out[t.info->name] = std::move(bytes);
  }
  return out;
}

void expect_nothing_written(const fs::path& out) {
  EXPECT_FALSE(fs::exists(out)) << out << " was written";
  for (auto& e : fs::directory_iterator(out.parent_path())) {
    EXPECT_EQ(e.path().filename().string().find(".smelt"), std::string::npos)
        << "temporary left behind: " << e.path();
  }
}

// A run folder with checkpoint-5, -10, -20 and -100 (name order differs from step order): F32
// fine-tunes of one base, so averages can be checked exactly.
class AverageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string small = " --hidden 32 --layers 2 --heads 2 --vocab 260 --dtype F32";
    auto mk = [](const std::string& args) {
      auto r = run_smelt("dev make-model " + args);
      ASSERT_EQ(r.exit_code, 0) << r.output;
    };
    mk(quote(*dir_ / "base") + small);
    fs::create_directories(*dir_ / "run");
    uint64_t seed = 1;
    for (int step : kSteps) {
      mk(quote(*dir_ / "run" / fmt::format("checkpoint-{}", step)) + " --base " +
         quote(*dir_ / "base") + " --delta-scale 0.05 --seed " + std::to_string(seed++));
    }
    mk(quote(*dir_ / "wide" / "checkpoint-7") +
       " --hidden 32 --layers 2 --heads 2 --vocab 260 --dtype F32 "
       "--intermediate 48");
  }
  static void TearDownTestSuite() { delete dir_; }
  static fs::path ckpt(int step) { return *dir_ / "run" / fmt::format("checkpoint-{}", step); }

  static constexpr int kSteps[] = {5, 10, 20, 100};
  static TempDir* dir_;
};
TempDir* AverageTest::dir_ = nullptr;

TEST_F(AverageTest, Checkpoints_RunFolderOrderedByStepNotName) {
  const auto found = analysis::find_checkpoints({(*dir_ / "run").string()});
  ASSERT_EQ(found.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(found[i].step, kSteps[i]);
    EXPECT_EQ(found[i].path.filename(), fmt::format("checkpoint-{}", kSteps[i]));
  }
}

TEST_F(AverageTest, Checkpoints_TrainerStateGlobalStepWinsOverName) {
  TempDir work;
  // Folder names say nothing; trainer_state.json orders them z (100), x (200), y (300).
  const std::map<std::string, int> steps = {{"x", 200}, {"y", 300}, {"z", 100}};
  for (const auto& [name, step] : steps) {
    fs::create_directories(work / name);
    testing::write_bytes(work / name / "trainer_state.json",
                         fmt::format("{{\"global_step\": {}, \"epoch\": 1.0}}", step));
  }
  const auto found = analysis::find_checkpoints(
      {(work / "x").string(), (work / "y").string(), (work / "z").string()});
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0].path.filename(), "z");
  EXPECT_EQ(found[1].path.filename(), "x");
  EXPECT_EQ(found[2].path.filename(), "y");
}

TEST(AverageWeights, EmaWeightsAreTheRecursionUnrolled) {
  // ema_0 = θ0; ema_t = β ema_{t-1} + (1-β) θ_t with β = 0.5 over 4 checkpoints:
  // θ0·β³, θ1·(1-β)β², θ2·(1-β)β, θ3·(1-β) = 0.125, 0.125, 0.25, 0.5.
  const auto w = analysis::ema_weights(4, 0.5);
  ASSERT_EQ(w.size(), 4u);
  EXPECT_DOUBLE_EQ(w[0], 0.125);
  EXPECT_DOUBLE_EQ(w[1], 0.125);
  EXPECT_DOUBLE_EQ(w[2], 0.25);
  EXPECT_DOUBLE_EQ(w[3], 0.5);
  const auto w9 = analysis::ema_weights(5, 0.9);
  double sum = 0;
  for (double x : w9) sum += x;
  EXPECT_NEAR(sum, 1.0, 1e-15);
}

TEST_F(AverageTest, Average_LastThreeIsByteIdenticalToEqualWeightLinearMerge) {
  TempDir work;
  auto r = run_smelt("average " + quote(*dir_ / "run") + " " + quote(work / "avg") +
                     " --last 3 -q -j 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The same merge as a user writes it: equal weights over steps 10, 20, 100.
  testing::write_bytes(work / "linear.yml",
                       fmt::format("merge_method: linear\nmodels:\n"
                                   "  - model: {}\n    parameters: {{weight: 1.0}}\n"
                                   "  - model: {}\n    parameters: {{weight: 1.0}}\n"
                                   "  - model: {}\n    parameters: {{weight: 1.0}}\n",
                                   ckpt(10).string(), ckpt(20).string(), ckpt(100).string()));
  r = run_smelt("merge " + quote(work / "linear.yml") + " " + quote(work / "merged") + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto avg = read_tensor_bytes(work / "avg");
  const auto merged = read_tensor_bytes(work / "merged");
  ASSERT_EQ(avg.size(), merged.size());
  for (const auto& [name, bytes] : merged) {
    ASSERT_TRUE(avg.count(name)) << name;
    EXPECT_TRUE(avg.at(name) == bytes) << name << " differs";
  }
  // The checkpoints differ, so an average equal to one of them would be a wrong merge.
  EXPECT_NE(read_tensor_bytes(ckpt(100)), avg);

  // And `smelt merge` of the config average prints writes the very same file, metadata included.
  r = run_smelt("average " + quote(*dir_ / "run") + " " + quote(work / "unused") +
                " --last 3 --print-config > " + quote(work / "printed.yml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(work / "unused"));
  r = run_smelt("merge " + quote(work / "printed.yml") + " " + quote(work / "merged2") + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(testing::read_bytes(work / "avg" / "model.safetensors") ==
              testing::read_bytes(work / "merged2" / "model.safetensors"));
}

TEST_F(AverageTest, Average_EmaEqualsTheFormulaOnHandComputedWeights) {
  TempDir work;
  auto r = run_smelt("average " + quote(*dir_ / "run") + " " + quote(work / "ema") +
                     " --ema 0.5 --dtype float32 -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // β = 0.5 over steps 5, 10, 20, 100: weights 0.125, 0.125, 0.25, 0.5 (see the test above).
  const double w[] = {0.125, 0.125, 0.25, 0.5};
  std::vector<std::map<std::string, std::vector<float>>> inputs;
  for (int step : kSteps) inputs.push_back(read_f32_tensors(ckpt(step)));
  const auto out = read_f32_tensors(work / "ema");
  ASSERT_EQ(out.size(), inputs[0].size());
  size_t checked = 0;
  for (const auto& [name, values] : out) {
    for (size_t e = 0; e < values.size(); ++e) {
      double expected = 0;
      for (size_t i = 0; i < 4; ++i) expected += w[i] * inputs[i].at(name)[e];
      ASSERT_NEAR(values[e], expected, 1e-6 + 1e-6 * std::fabs(expected))
          << name << "[" << e << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 1000u);
}

TEST_F(AverageTest, Average_DryRunListsStepsAndWeightsAndWritesNothing) {
  TempDir work;
  auto r = run_smelt("average " + quote(ckpt(20)) + " " + quote(ckpt(5)) + " " +
                     quote(work / "out") + " --ema 0.75 --dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Step order (5 before 20) whatever the argument order: 5 gets β = 0.75, 20 gets 1 - β.
  const size_t first = r.output.find("step 5");
  const size_t second = r.output.find("step 20");
  ASSERT_NE(first, std::string::npos) << r.output;
  ASSERT_NE(second, std::string::npos) << r.output;
  EXPECT_LT(first, second);
  EXPECT_NE(r.output.find("weight 0.75"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("weight 0.25"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(work / "out"));
}

// Runs `smelt average ARGS` expecting failure; returns the output.
std::string average_error(const std::string& args, const fs::path& out) {
  auto r = run_smelt("average " + args);
  EXPECT_NE(r.exit_code, 0) << r.output;
  expect_nothing_written(out);
  return r.output;
}

TEST_F(AverageTest, AverageBadInput_CheckpointLackingATensorIsNamed) {
  TempDir work;
  // A copy of checkpoint-20 without one tensor.
  auto m = io::Model::open(ckpt(20).string());
  fs::create_directories(work / "checkpoint-30");
  fs::copy_file(ckpt(20) / "config.json", work / "checkpoint-30" / "config.json");
  std::vector<io::TensorSpec> specs;
  std::vector<io::ModelTensor> keep;
  const std::string dropped = "model.layers.1.mlp.up_proj.weight";
  for (const auto& t : m->tensors()) {
    if (t.info->name == dropped) continue;
    specs.push_back({t.info->name, t.info->dtype, t.info->shape});
    keep.push_back(t);
  }
  {
    io::SafetensorsWriter w(work / "checkpoint-30" / "model.safetensors", specs, {});
    for (size_t i = 0; i < keep.size(); ++i) {
      std::vector<char> buf(keep[i].info->nbytes);
      keep[i].file->read(*keep[i].info, 0, buf.data(), buf.size());
      w.write(i, 0, buf.data(), buf.size());
    }
    w.finish();
  }
  const std::string out = average_error(
      quote(ckpt(5)) + " " + quote(work / "checkpoint-30") + " " + quote(work / "out"),
      work / "out");
  EXPECT_NE(out.find(dropped), std::string::npos) << out;
  EXPECT_NE(out.find("checkpoint-30"), std::string::npos) << out;
  EXPECT_NE(out.find("lacks"), std::string::npos) << out;
}

TEST_F(AverageTest, AverageBadInput_ShapesThatDifferAreNamed) {
  TempDir work;
  const std::string out = average_error(
      quote(ckpt(5)) + " " + quote(*dir_ / "wide" / "checkpoint-7") + " " + quote(work / "out"),
      work / "out");
  EXPECT_NE(out.find("mlp"), std::string::npos) << out;
  EXPECT_NE(out.find("wide"), std::string::npos) << out;
}

TEST_F(AverageTest, AverageBadInput_FewerThanTwoCheckpoints) {
  TempDir work;
  std::string out = average_error(quote(ckpt(5)) + " " + quote(work / "out"), work / "out");
  EXPECT_NE(out.find("at least 2 checkpoints"), std::string::npos) << out;
  out = average_error(quote(*dir_ / "run") + " " + quote(work / "out") + " --last 1", work / "out");
  EXPECT_NE(out.find("at least 2 checkpoints"), std::string::npos) << out;
}

TEST_F(AverageTest, AverageBadInput_LastLargerThanAvailable) {
  TempDir work;
  const std::string out =
      average_error(quote(*dir_ / "run") + " " + quote(work / "out") + " --last 5", work / "out");
  EXPECT_NE(out.find("--last 5: only 4 checkpoint(s)"), std::string::npos) << out;
}

TEST_F(AverageTest, AverageBadInput_EmaBetaOutsideZeroOne) {
  TempDir work;
  for (const char* beta : {"0", "1", "1.5", "-0.1"}) {
    const std::string out = average_error(
        quote(*dir_ / "run") + " " + quote(work / "out") + " --ema " + beta, work / "out");
    EXPECT_NE(out.find("strictly between 0 and 1"), std::string::npos) << beta << ": " << out;
  }
}

TEST_F(AverageTest, AverageBadInput_OutInsideAnInputIsRefused) {
  const fs::path out = ckpt(100) / "avg";
  auto r = run_smelt("average " + quote(*dir_ / "run") + " " + quote(out) + " --last 2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_NE(r.output.find(ckpt(100).string()), std::string::npos) << r.output;
}

TEST_F(AverageTest, AverageBadInput_OutInsideTheRunFolderIsRefused) {
  // Also inside a checkpoint --last leaves out, and as a new checkpoint-<N> of the run.
  for (const fs::path& out : {ckpt(5) / "avg", *dir_ / "run" / "checkpoint-999"}) {
    auto r = run_smelt("average " + quote(*dir_ / "run") + " " + quote(out) + " --last 2");
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_FALSE(fs::exists(out));
    EXPECT_NE(r.output.find("lies inside the input"), std::string::npos) << r.output;
  }
}

TEST_F(AverageTest, AverageBadInput_StepsOnSomeCheckpointsOnly) {
  TempDir work;
  const std::string out = average_error(
      quote(ckpt(5)) + " " + quote(*dir_ / "base") + " " + quote(work / "out"), work / "out");
  EXPECT_NE(out.find("has none"), std::string::npos) << out;
}

}  // namespace
}  // namespace smelt
