// Every registered merge method runs through `smelt merge` on generated tiny models (bf16 and
// f32, 2-4 models, with and without a base where allowed) and writes finite tensors; the random
// DELLA methods are identical for -j1/-j2 and change with the seed.
#include <fmt/format.h>

#include <cmath>

#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"
#include "smelt/methods/method.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

struct Family {
  std::string dtype;
  TempDir* dir;
};

class AllMethods : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    for (const char* dtype : {"BF16", "F32"}) {
      const fs::path d = *dir_ / dtype;
      auto mk = [](const std::string& args) {
        auto r = run_smelt("dev make-model " + args);
        ASSERT_EQ(r.exit_code, 0) << r.output;
      };
      mk(quote(d / "base") + " --hidden 32 --heads 2 --layers 2 --vocab 260 --seed 1 --dtype " +
         dtype);
      for (int i = 1; i <= 3; ++i) {
        mk(quote(d / fmt::format("m{}", i)) + " --base " + quote(d / "base") +
           fmt::format(" --seed {} --delta-scale 0.02 --sparsity 0.3", 10 + i));
      }
    }
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
};
TempDir* AllMethods::dir_ = nullptr;

// Configs for a method: (label, yaml) with M1..M3 and BASE placeholders.
std::vector<std::pair<std::string, std::string>> configs(const std::string& method) {
  const std::string w = "    parameters:\n      weight: {w}\n";
  auto models = [&](int n, bool base, const std::string& params) {
    std::string y = "models:\n";
    for (int i = 1; i <= n; ++i) {
      y += fmt::format("  - model: M{}\n", i);
      if (!params.empty()) y += "    parameters:\n" + params;
    }
    if (base) y += "base_model: BASE\n";
    return y + "merge_method: " + method + "\n";
  };
  const std::string wd = "      weight: 0.6\n      density: 0.5\n";
  if (method == "linear") return {{"3 models", models(3, false, "      weight: 0.4\n")}};
  if (method == "slerp") return {{"base + 1", models(1, true, "") + "parameters:\n  t: 0.3\n"}};
  if (method == "nuslerp") {
    return {{"2, flatten", models(2, false, "      weight: 0.5\n")},
            {"2 + base, row-wise",
             models(2, true, "      weight: 0.7\n") +
                 "parameters:\n  nuslerp_flatten: false\n  nuslerp_row_wise: true\n"},
            {"2, column-wise",
             models(2, false, "      weight: 0.3\n") + "parameters:\n  nuslerp_flatten: false\n"}};
  }
  if (method == "passthrough") return {{"1 model", models(1, false, "      scale: 0.5\n")}};
  if (method == "model_stock") {
    return {{"base + 2", models(2, true, "")},
            {"base + 3, filter_wise", models(3, true, "") + "parameters:\n  filter_wise: true\n"}};
  }
  if (method == "arcee_fusion" || method == "nearswap") {
    return {{"base + 1",
             models(1, true, "") + (method == "nearswap" ? "parameters:\n  t: 0.001\n" : "")}};
  }
  if (method == "karcher")
    return {{"3 models", models(3, false, "")}, {"2 + base", models(2, true, "")}};
  if (method == "multislerp") {
    return {{"3 models", models(3, false, "      weight: 0.5\n")},
            {"2 + base", models(2, true, "      weight: 0.5\n")}};
  }
  if (method == "sce")
    return {{"base + 3", models(3, true, "") + "parameters:\n  select_topk: 0.5\n"}};
  if (method == "ram" || method == "ramplus_tl") return {{"base + 2", models(2, true, "")}};
  if (method.starts_with("della")) {
    return {{"base + 3",
             models(3, true, wd + "      epsilon: 0.1\n") + "parameters:\n  lambda: 0.9\n"}};
  }
  if (method.starts_with("breadcrumbs")) {
    return {{"base + 3", models(3, true, wd + "      gamma: 0.05\n")}};
  }
  // task_arithmetic, ties, dare_ties, dare_linear
  return {{"base + 2", models(2, true, wd)}, {"base + 3", models(3, true, wd)}};
}

std::string fill(std::string y, const fs::path& d) {
  for (auto [from, to] : {std::pair<std::string, std::string>{"BASE", "base"},
                          {"M1", "m1"},
                          {"M2", "m2"},
                          {"M3", "m3"}}) {
    for (size_t p = y.find(from); p != std::string::npos; p = y.find(from))
      y.replace(p, from.size(), (d / to).string());
  }
  return y;
}

bool all_finite(const fs::path& out, size_t* tensors) {
  auto m = io::Model::open(out.string());
  *tensors = m->tensors().size();
  for (const auto& t : m->tensors()) {
    std::string b(t.info->nbytes, '\0');
    t.file->read(*t.info, 0, b.data(), b.size());
    std::vector<float> f(t.info->numel());
    kernels::to_f32(t.info->dtype, b.data(), f.data(), f.size());
    for (float v : f) {
      if (!std::isfinite(v)) return false;
    }
  }
  return true;
}

TEST_P(AllMethods, RunsEndToEndWithFiniteOutput) {
  const std::string method = GetParam();
  for (const char* dtype : {"BF16", "F32"}) {
    const fs::path d = *dir_ / dtype;
    int k = 0;
    for (const auto& [label, yaml] : configs(method)) {
      TempDir work;
      testing::write_bytes(work / "c.yml", fill(yaml, d));
      auto r = run_smelt("merge -q --random-seed 3 " + quote(work / "c.yml") + " " +
                         quote(work / "out"));
      ASSERT_EQ(r.exit_code, 0) << method << " " << label << " " << dtype << "\n" << r.output;
      size_t tensors = 0;
      EXPECT_TRUE(all_finite(work / "out", &tensors)) << method << " " << label << " " << dtype;
      EXPECT_EQ(tensors, 21u) << method << " " << label;
      ++k;
    }
    EXPECT_GT(k, 0);
  }
}

std::vector<std::string> all_method_names() { return methods::method_names(); }

INSTANTIATE_TEST_SUITE_P(Registry, AllMethods, ::testing::ValuesIn(all_method_names()),
                         [](const auto& info) { return info.param; });

TEST_F(AllMethods, DellaIsIdenticalAcrossThreadCountsAndChangesWithTheSeed) {
  const fs::path d = *dir_ / "BF16";
  for (const char* method : {"della", "della_linear"}) {
    TempDir work;
    testing::write_bytes(work / "c.yml", fill(configs(method)[0].second, d));
    std::string files[3];
    int i = 0;
    for (const char* args :
         {"-j 1 --random-seed 1", "-j 2 --random-seed 1", "-j 2 --random-seed 2"}) {
      const fs::path out = work / fmt::format("o{}", i);
      auto r = run_smelt(fmt::format("merge -q {} {} {}", args, quote(work / "c.yml"), quote(out)));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      files[i++] = testing::read_bytes(out / "model.safetensors");
    }
    EXPECT_EQ(files[0], files[1]) << method;
    EXPECT_NE(files[1], files[2]) << method;
  }
}

}  // namespace
}  // namespace smelt
