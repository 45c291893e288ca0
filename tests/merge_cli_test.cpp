// `smelt merge` / `smelt plan` on bad input: every error names the YAML path or file, exits
// non-zero, and leaves nothing at OUT. Also the output-folder safety rules and accepted flags.
#include <fmt/format.h>

#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

// Copies model `from` to `to` without tensor `drop`.
void copy_without(const fs::path& from, const fs::path& to, const std::string& drop) {
  auto m = io::Model::open(from.string());
  fs::create_directories(to);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(from / f, to / f);
  }
  std::vector<io::TensorSpec> specs;
  std::vector<io::ModelTensor> keep;
  for (const auto& t : m->tensors()) {
    if (t.info->name == drop) continue;
    specs.push_back({t.info->name, t.info->dtype, t.info->shape});
    keep.push_back(t);
  }
  io::SafetensorsWriter w(to / "model.safetensors", specs, {});
  for (size_t i = 0; i < keep.size(); ++i) {
    std::vector<char> buf(keep[i].info->nbytes);
    keep[i].file->read(*keep[i].info, 0, buf.data(), buf.size());
    w.write(i, 0, buf.data(), buf.size());
  }
  w.finish();
}

class MergeBadInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string small = " --hidden 32 --layers 2 --heads 2 --vocab 260";
    auto mk = [](const std::string& args) {
      auto r = run_smelt("dev make-model " + args);
      ASSERT_EQ(r.exit_code, 0) << r.output;
    };
    mk(quote(*dir_ / "base") + small);
    mk(quote(*dir_ / "a") + " --base " + quote(*dir_ / "base") + " --seed 1");
    mk(quote(*dir_ / "b") + " --base " + quote(*dir_ / "base") + " --seed 2");
    mk(quote(*dir_ / "wide") + small + " --intermediate 48");
    copy_without(*dir_ / "a", *dir_ / "holey", "model.layers.1.mlp.up_proj.weight");
  }
  static void TearDownTestSuite() { delete dir_; }

  std::string path(const std::string& name) { return (*dir_ / name).string(); }

  // Runs `smelt merge` on `yaml`; expects failure and returns the output.
  std::string merge_error(const std::string& yaml, const std::string& extra = "") {
    TempDir work;
    testing::write_bytes(work / "c.yml", yaml);
    auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out") + extra);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_FALSE(fs::exists(work / "out")) << "output left behind";
    // Nothing else (no temporary folder) either.
    size_t entries = 0;
    for (auto& e : fs::directory_iterator(work.path())) entries += e.path().filename() != "c.yml";
    EXPECT_EQ(entries, 0u);
    return r.output;
  }

  std::string ties(const std::string& a_params, const std::string& extra_top = "") {
    return fmt::format(
        "models:\n  - model: {}\n    parameters:\n{}\n  - model: {}\n    parameters:\n"
        "      weight: 0.5\n      density: 0.5\nmerge_method: ties\nbase_model: {}\n{}",
        path("a"), a_params, path("b"), path("base"), extra_top);
  }
  static TempDir* dir_;
};
TempDir* MergeBadInput::dir_ = nullptr;

#define EXPECT_HAS(haystack, needle)                                                            \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                        << (haystack)

TEST_F(MergeBadInput, StringWeightNamesTheYamlPath) {
  const std::string e = merge_error(ties("      weight: heavy\n      density: 0.5"));
  EXPECT_HAS(e, "models[0].parameters.weight");
  EXPECT_HAS(e, "string \"heavy\"");
}

TEST_F(MergeBadInput, DensityOutsideUnitInterval) {
  const std::string e = merge_error(ties("      weight: 0.5\n      density: 1.5"));
  EXPECT_HAS(e, "density");
  EXPECT_HAS(e, "1.5");
}

TEST_F(MergeBadInput, MissingRequiredWeight) {
  const std::string e = merge_error(ties("      density: 0.5"));
  EXPECT_HAS(e, "models[0].parameters.weight");
  EXPECT_HAS(e, "missing required parameter 'weight'");
}

TEST_F(MergeBadInput, SlerpWithoutBase) {
  const std::string e = merge_error(fmt::format(
      "models:\n  - model: {}\n  - model: {}\nmerge_method: slerp\nparameters:\n  t: 0.5\n",
      path("a"), path("b")));
  EXPECT_HAS(e, "base_model");
  EXPECT_HAS(e, "slerp needs a base_model");
}

TEST_F(MergeBadInput, SlerpWithThreeModels) {
  const std::string e = merge_error(fmt::format(
      "models:\n  - model: {}\n  - model: {}\nbase_model: {}\nmerge_method: slerp\nparameters:\n"
      "  t: 0.5\n",
      path("a"), path("b"), path("base")));
  EXPECT_HAS(e, "slerp");
  EXPECT_HAS(e, "got 3");
}

TEST_F(MergeBadInput, ModelPathTypo) {
  const std::string e = merge_error(
      ties("      weight: 0.5")
          .replace(ties("      weight: 0.5").find(path("a")), path("a").size(), path("a") + "x"));
  EXPECT_HAS(e, "models[0].model");
  EXPECT_HAS(e, "not found");
}

TEST_F(MergeBadInput, TensorMissingFromOneModel) {
  const std::string e = merge_error(fmt::format(
      "models:\n  - model: {}\n    parameters: {{weight: 1}}\n  - model: {}\n    parameters: "
      "{{weight: 1}}\nmerge_method: linear\n",
      path("holey"), path("b")));
  EXPECT_HAS(e, "models[0]");
  EXPECT_HAS(e, "'model.layers.1.mlp.up_proj.weight' is missing from model");
}

TEST_F(MergeBadInput, TensorMissingFromBase) {
  const std::string e = merge_error(
      fmt::format("models:\n  - model: {}\n    parameters: {{weight: 1}}\nbase_model: {}\n"
                  "merge_method: task_arithmetic\n",
                  path("a"), path("holey")));
  EXPECT_HAS(e, "base_model");
  EXPECT_HAS(e, "is missing from model");
}

TEST_F(MergeBadInput, ShapesDiffer) {
  const std::string e = merge_error(fmt::format(
      "models:\n  - model: {}\n    parameters: {{weight: 1}}\n  - model: {}\n    parameters: "
      "{{weight: 1}}\nmerge_method: linear\n",
      path("base"), path("wide")));
  EXPECT_HAS(e, "models[1]");
  EXPECT_HAS(e, "mlp.gate_proj.weight");
  EXPECT_HAS(e, "[48, 32]");
  EXPECT_HAS(e, "[64, 32]");
}

TEST_F(MergeBadInput, AllowShapeMismatchLeavesTheModelOutOfThatTensor) {
  const std::string yaml = fmt::format(
      "models:\n  - model: {}\n  - model: {}\nbase_model: {}\nmerge_method: task_arithmetic\n"
      "parameters:\n  weight: 1\n",
      path("a"), path("wide"), path("base"));
  const std::string e = merge_error(yaml);
  EXPECT_HAS(e, "--allow-shape-mismatch");
  TempDir work;
  testing::write_bytes(work / "c.yml", yaml);
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out") +
                     " --allow-shape-mismatch");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "left out of this tensor");
  // The mlp tensors merge only model a: base + (a - base) = a, exactly.
  auto out = io::Model::open((work / "out").string());
  auto a = io::Model::open(path("a"));
  auto bytes = [](const io::Model& m, const std::string& n) {
    auto t = m.find(n);
    std::string b(t.info->nbytes, '\0');
    t.file->read(*t.info, 0, b.data(), b.size());
    return b;
  };
  EXPECT_TRUE(bytes(*out, "model.layers.0.mlp.up_proj.weight") ==
              bytes(*a, "model.layers.0.mlp.up_proj.weight"));
}

TEST_F(MergeBadInput, UnknownDtypeName) {
  const std::string e = merge_error(ties("      weight: 0.5", "dtype: bf16\n"));
  EXPECT_HAS(e, "dtype");
  EXPECT_HAS(e, "bfloat16");
}

TEST_F(MergeBadInput, UnknownMethodSuggestsClosest) {
  std::string y = ties("      weight: 0.5");
  y.replace(y.find("merge_method: ties"), 18, "merge_method: dare-ties");
  const std::string e = merge_error(y);
  EXPECT_HAS(e, "merge_method");
  EXPECT_HAS(e, "did you mean dare_ties?");
}

TEST_F(MergeBadInput, UnknownKeySuggestsClosest) {
  const std::string e = merge_error(ties("      weight: 0.5", "paramters:\n  lambda: 1\n"));
  EXPECT_HAS(e, "paramters");
  EXPECT_HAS(e, "parameters");
}

TEST_F(MergeBadInput, NotYetSupportedFeaturesNameTheirKey) {
  EXPECT_HAS(merge_error(ties("      weight: 0.5", "tokenizer_source: union\n")),
             "tokenizer_source");
  EXPECT_HAS(merge_error(ties("      weight: 0.5", "tokenizer_source: union\n")),
             "not yet supported");
  std::string lora = ties("      weight: 0.5");
  lora.replace(lora.find(path("b")), path("b").size(), path("b") + "+some/lora");
  EXPECT_HAS(merge_error(lora), "models[1].model");
}

TEST_F(MergeBadInput, LinearWeightsSummingToZeroFailBeforeWork) {
  const std::string e = merge_error(fmt::format(
      "models:\n  - model: {}\n    parameters: {{weight: 1}}\n  - model: {}\n    parameters: "
      "{{weight: -1}}\nmerge_method: linear\n",
      path("a"), path("b")));
  EXPECT_HAS(e, "model.embed_tokens.weight");
}

TEST_F(MergeBadInput, OutputInsideAnInputModelIsRefused) {
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(*dir_ / "a" / "merged"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "never writes into an input model");
  EXPECT_FALSE(fs::exists(*dir_ / "a" / "merged"));
  auto same =
      run_smelt("merge " + quote(work / "c.yml") + " " + quote(*dir_ / "a") + " --overwrite");
  EXPECT_NE(same.exit_code, 0);
  EXPECT_TRUE(fs::exists(*dir_ / "a" / "model.safetensors"));
}

TEST_F(MergeBadInput, NonEmptyOutputNeedsOverwrite) {
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  fs::create_directories(work / "out");
  testing::write_bytes(work / "out" / "keep.txt", "x");
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "--overwrite");
  EXPECT_TRUE(fs::exists(work / "out" / "keep.txt"));
  // --overwrite replaces a model folder only: a user's own file is never deleted.
  auto refused =
      run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out") + " --overwrite -q");
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_HAS(refused.output, "keep.txt");
  EXPECT_TRUE(fs::exists(work / "out" / "keep.txt"));
  fs::remove(work / "out" / "keep.txt");
  testing::write_bytes(work / "out" / "model.safetensors", "an old model");
  auto ok =
      run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out") + " --overwrite -q");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(testing::read_bytes(work / "out" / "model.safetensors"), "an old model");
}

TEST_F(MergeBadInput, MergekitOnlyFlagsAreAcceptedWithANote) {
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out") +
                     " --cuda --lazy-unpickle --low-cpu-memory --transformers-cache /tmp");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "note: --cuda has no effect");
  EXPECT_TRUE(fs::exists(work / "out" / "config.json"));
  EXPECT_TRUE(fs::exists(work / "out" / "mergekit_config.yml"));
  EXPECT_TRUE(fs::exists(work / "out" / "README.md"));
  EXPECT_TRUE(fs::exists(work / "out" / "tokenizer.json"));
}

TEST_F(MergeBadInput, DryRunAndPlanWriteNothing) {
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out") + " --dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "output: 21 tensors");
  EXPECT_FALSE(fs::exists(work / "out"));
  auto p = run_smelt("plan " + quote(work / "c.yml") + " --explain 'model.layers.1.mlp.*'");
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_HAS(p.output, "model.layers.1.mlp.down_proj.weight");
  EXPECT_HAS(p.output, "density = 0.5  (models[1].parameters.density)");
  EXPECT_EQ(p.output.find("model.layers.0.mlp"), std::string::npos);
}

}  // namespace
}  // namespace smelt

namespace smelt {
namespace {

TEST(MergeMaxMemory, SmallBudgetChangesChunksNotElementwiseResults) {
  testing::TempDir work;
  auto mk = [&](const std::string& args) {
    auto r = testing::run_smelt("dev make-model " + args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  };
  mk(testing::quote(work / "a") + " --hidden 256 --heads 4 --layers 1 --vocab 4000 --seed 1");
  mk(testing::quote(work / "b") + " --base " + testing::quote(work / "a") + " --seed 2");
  testing::write_bytes(work / "c.yml",
                       fmt::format("models:\n  - model: {}\n  - model: {}\nmerge_method: linear\n"
                                   "parameters: {{weight: 0.5}}\n",
                                   (work / "a").string(), (work / "b").string()));
  auto big = testing::run_smelt("merge -q " + testing::quote(work / "c.yml") + " " +
                                testing::quote(work / "o1"));
  ASSERT_EQ(big.exit_code, 0) << big.output;
  auto plan = testing::run_smelt("plan " + testing::quote(work / "c.yml") + " --max-memory 97M");
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  // 1 MiB left after the reserve: 1 worker, chunks of 1 MiB / 44 bytes (2 inputs) = 23831,
  // rounded down to whole 256-element quanta.
  EXPECT_NE(plan.output.find("(1 worker, chunks of 23808 elements"), std::string::npos)
      << plan.output;
  auto small = testing::run_smelt("merge -q --max-memory 97M " + testing::quote(work / "c.yml") +
                                  " " + testing::quote(work / "o2"));
  ASSERT_EQ(small.exit_code, 0) << small.output;
  EXPECT_EQ(testing::read_bytes(work / "o1" / "model.safetensors"),
            testing::read_bytes(work / "o2" / "model.safetensors"));
  auto tiny = testing::run_smelt("merge -q --max-memory 10M " + testing::quote(work / "c.yml") +
                                 " " + testing::quote(work / "o3"));
  EXPECT_NE(tiny.exit_code, 0);
  EXPECT_NE(tiny.output.find("--max-memory 10 MiB is too small"), std::string::npos) << tiny.output;
  EXPECT_FALSE(std::filesystem::exists(work / "o3"));
}

}  // namespace
}  // namespace smelt
