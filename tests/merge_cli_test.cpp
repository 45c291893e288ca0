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

TEST_F(MergeBadInput, UnknownKeySuggestsClosestAndStrictRefusesIt) {
  const std::string e =
      merge_error(ties("      weight: 0.5", "paramters:\n  lambda: 1\n"), " --strict");
  EXPECT_HAS(e, "smelt: error: ");
  EXPECT_HAS(e, "paramters: unknown key (ignored); did you mean 'parameters'?");
  EXPECT_HAS(e, "--strict");
}

// mergekit ignores unknown keys, so real configs carry e.g. `revision:` beside a slice source.
TEST_F(MergeBadInput, UnknownKeyIsAWarningBeforeAnyWork) {
  TempDir work;
  testing::write_bytes(work / "c.yml",
                       fmt::format("merge_method: passthrough\nslices:\n  - sources:\n      - "
                                   "model: {}\n        revision: main\n        layer_range: [0, "
                                   "2]\n",
                                   path("a")));
  const std::string warning =
      "warning: " + (work / "c.yml").string() +
      ": slices[0].sources[0].revision: unknown key (ignored); valid keys here are model, "
      "layer_range, parameters";
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, warning);
  EXPECT_LT(r.output.find(warning), r.output.find("wrote"));
  EXPECT_TRUE(fs::exists(work / "out" / "model.safetensors"));
  auto p = run_smelt("plan " + quote(work / "c.yml"));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_HAS(p.output, warning);
  auto strict = run_smelt("plan --strict " + quote(work / "c.yml"));
  EXPECT_EQ(strict.exit_code, 1) << strict.output;
  EXPECT_HAS(strict.output, "smelt: error: " + (work / "c.yml").string() +
                                ": slices[0].sources[0].revision: unknown key");
  auto strict_merge =
      run_smelt("merge --strict " + quote(work / "c.yml") + " " + quote(work / "out2"));
  EXPECT_EQ(strict_merge.exit_code, 1) << strict_merge.output;
  EXPECT_FALSE(fs::exists(work / "out2"));
}

TEST_F(MergeBadInput, RandomSeedMustBeANonNegativeInteger) {
  for (const char* seed : {"-1", "abc", "1.5", "18446744073709551616"}) {
    const std::string e =
        merge_error(ties("      weight: 0.5"), std::string(" --random-seed ") + seed);
    EXPECT_HAS(e, fmt::format("smelt: error: --random-seed: '{}' is not a seed", seed));
  }
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto p = run_smelt("plan " + quote(work / "c.yml") + " --random-seed=-5");
  EXPECT_EQ(p.exit_code, 1) << p.output;
  EXPECT_HAS(p.output, "--random-seed: '-5' is not a seed");
  auto ok = run_smelt("plan " + quote(work / "c.yml") + " --random-seed 18446744073709551615");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST_F(MergeBadInput, ThreadCountMustBeACount) {
  for (const char* j : {"-1", "abc", "100000"}) {
    const std::string e = merge_error(ties("      weight: 0.5"), std::string(" --threads=") + j);
    EXPECT_HAS(e, fmt::format("smelt: error: --threads: '{}' is not a thread count", j));
  }
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto zero = run_smelt("merge -q -j 0 " + quote(work / "c.yml") + " " + quote(work / "out"));
  EXPECT_EQ(zero.exit_code, 0) << zero.output;  // 0: one thread per core
}

TEST_F(MergeBadInput, GgufTypeFlagsWithSafetensorsOutputAreRefused) {
  EXPECT_HAS(merge_error(ties("      weight: 0.5"), " --out-type Q8_0"),
             "smelt: error: --out-type: the output is safetensors, and these flags apply to GGUF "
             "output only");
  EXPECT_HAS(merge_error(ties("      weight: 0.5"), " --tensor-type attn=Q8_0"),
             "smelt: error: --tensor-type: the output is safetensors");
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto p = run_smelt("plan " + quote(work / "c.yml") + " --out-type Q8_0");
  EXPECT_EQ(p.exit_code, 1) << p.output;
  EXPECT_HAS(p.output, "--out-type: the output is safetensors");
}

TEST_F(MergeBadInput, ConfigJsonThatIsNotJsonFailsInPlan) {
  TempDir work;
  fs::copy(path("a"), work / "a", fs::copy_options::recursive);
  testing::write_bytes(work / "a" / "config.json",
                       "{\"architectures\": [\"LlamaForCausalLM\"],\n  oops");
  testing::write_bytes(work / "c.yml", fmt::format("models:\n  - model: {}\n  - model: {}\n"
                                                   "merge_method: linear\nparameters: {{weight: "
                                                   "0.5}}\n",
                                                   (work / "a").string(), path("b")));
  const std::string expected = "smelt: error: " + (work / "a" / "config.json").string() +
                               ": not valid JSON (parse error "
                               "at line 2, column 3";
  auto p = run_smelt("plan " + quote(work / "c.yml"));
  EXPECT_EQ(p.exit_code, 1) << p.output;
  EXPECT_HAS(p.output, expected);
  auto m = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  EXPECT_EQ(m.exit_code, 1) << m.output;
  EXPECT_HAS(m.output, expected);
  EXPECT_FALSE(fs::exists(work / "out"));
}

TEST_F(MergeBadInput, UnreadableConfigPathsAreOneLineErrors) {
  TempDir work;
  testing::write_bytes(work / "c.yml", ties("      weight: 0.5"));
  auto empty_out = run_smelt("merge " + quote(work / "c.yml") + " ''");
  EXPECT_EQ(empty_out.exit_code, 1) << empty_out.output;
  EXPECT_HAS(empty_out.output, "smelt: error: OUT: the output path is empty");
  auto empty_cfg = run_smelt("plan ''");
  EXPECT_EQ(empty_cfg.exit_code, 1) << empty_cfg.output;
  EXPECT_HAS(empty_cfg.output, "smelt: error: CONFIG: the config path is empty");
  auto folder = run_smelt("plan " + quote(work.path()));
  EXPECT_EQ(folder.exit_code, 1) << folder.output;
  EXPECT_HAS(folder.output, "smelt: error: " + work.path().string() + ": is a folder");
  auto missing = run_smelt("merge " + quote(work / "nope.yml") + " " + quote(work / "out"));
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_HAS(missing.output,
             "smelt: error: " + (work / "nope.yml").string() + ": no such config file");
  for (const auto* r : {&empty_out, &empty_cfg, &folder, &missing}) {
    EXPECT_EQ(r->output.find("internal error"), std::string::npos) << r->output;
  }
}

// The plan's memory estimate comes from the plan, not from --max-memory.
TEST_F(MergeBadInput, MemoryEstimateFollowsThePlanAndStaysInTheBudget) {
  TempDir work;
  testing::write_bytes(work / "ties.yml", ties("      weight: 0.5\n      density: 0.5"));
  testing::write_bytes(work / "linear.yml",
                       fmt::format("models:\n  - model: {}\n  - model: {}\nmerge_method: "
                                   "linear\nparameters: {{weight: 0.5}}\n",
                                   path("a"), path("b")));
  // "estimated peak memory: X MB (N workers x ..." -> {bytes, workers}.
  auto estimate = [&](const std::string& args) {
    auto r = run_smelt("plan " + args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    const size_t at = r.output.find("estimated peak memory: ");
    EXPECT_NE(at, std::string::npos) << r.output;
    if (at == std::string::npos) return std::pair<double, int>{0, 0};
    const char* s = r.output.c_str() + at + 23;
    char* end = nullptr;
    double v = std::strtod(s, &end);
    v *= end[1] == 'M' ? 1e6 : end[1] == 'k' ? 1e3 : end[1] == 'G' ? 1e9 : 1;
    const int workers = std::atoi(std::strchr(end, '(') + 1);
    return std::pair<double, int>{v, workers};
  };
  const auto small = estimate(quote(work / "linear.yml") + " -j 2 --max-memory 512M");
  const auto big = estimate(quote(work / "linear.yml") + " -j 2 --max-memory 4G");
  EXPECT_EQ(small, big);  // a bigger budget does not inflate a small merge's estimate
  EXPECT_LT(small.first, 512.0 * (1 << 20));
  EXPECT_EQ(small.second, 2);
  EXPECT_GT(estimate(quote(work / "ties.yml") + " -j 1").first,
            estimate(quote(work / "linear.yml") + " -j 1").first);
  // Many threads: workers capped so that the estimate stays within the budget.
  const auto capped = estimate(quote(work / "ties.yml") + " -j 64 --max-memory 128M");
  EXPECT_GT(capped.second, 1);
  EXPECT_LT(capped.second, 64);
  EXPECT_LE(capped.first, 128.0 * (1 << 20));
}

TEST_F(MergeBadInput, MissingLoraAdapterNamesTheYamlPath) {
  // LoRA adapters themselves: tests/lora_bake_test.cpp.
  std::string lora = ties("      weight: 0.5");
  lora.replace(lora.find(path("b")), path("b").size(), path("b") + "+" + path("no-adapter"));
  const std::string e = merge_error(lora);
  EXPECT_HAS(e, "models[1].model");
  EXPECT_HAS(e, "LoRA adapter '" + path("no-adapter") + "'");
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
  // Chunks of up to 1 Mi elements need about 44 MiB per worker (2 inputs; executor.cpp); 60M
  // leaves about 22 MiB after the reserve and the output, so the chunk halves twice.
  const std::string small_budget = " --chunk-elements 1048576 --max-memory 60M ";
  auto plan = testing::run_smelt("merge --dry-run" + small_budget + testing::quote(work / "c.yml") +
                                 " " + testing::quote(work / "o2"));
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_NE(plan.output.find("(1 worker x "), std::string::npos) << plan.output;
  EXPECT_NE(plan.output.find("with chunks of 262144 elements"), std::string::npos) << plan.output;
  auto small = testing::run_smelt("merge -q" + small_budget + testing::quote(work / "c.yml") + " " +
                                  testing::quote(work / "o2"));
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

namespace smelt {
namespace {

TEST(CliVerbs, UnknownVerbNamesTheVerbsAndExitsOne) {
  auto r = testing::run_smelt("frobnicate");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.output,
            "smelt: error: unknown verb 'frobnicate'; verbs: merge, moe, plan, inspect, convert, "
            "download, tokenize, eval, generate, soup, sweep, interpolate, evolve, average, diff, "
            "tokensurgeon, lora\n");
  auto typo = testing::run_smelt("merg a b");
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_NE(typo.output.find("did you mean 'merge'?"), std::string::npos) << typo.output;
  auto bare = testing::run_smelt("");
  EXPECT_EQ(bare.exit_code, 0);  // bare `smelt` prints the help
  EXPECT_NE(bare.output.find("Usage: smelt"), std::string::npos) << bare.output;
  EXPECT_EQ(testing::run_smelt("--version").exit_code, 0);
}

}  // namespace
}  // namespace smelt
