// `smelt lora combine`: every add_weighted_adapter type against its formula computed here on
// small hand-built adapters (alpha ≠ r, so the scalings matter); PEFT's pruning and sign
// election on hand-computed values; DARE masks structural, seeded and deterministic.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "smelt/io/safetensors.h"
#include "smelt/kernels/random.h"
#include "smelt/lora/task_merge.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using lora::CombinationType;
using lora::MajoritySign;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

using Mat = std::vector<float>;
constexpr size_t kOut = 6, kIn = 5;
const std::string kModule = "model.layers.0.self_attn.q_proj";

struct Adapter {
  size_t r;
  double alpha;
  Mat a, b;  // A: r×kIn, B: kOut×r
  double scaling() const { return alpha / static_cast<double>(r); }
};

Adapter random_adapter(size_t r, double alpha, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Adapter x{r, alpha, Mat(r * kIn), Mat(kOut * r)};
  for (float& v : x.a) v = normal(rng);
  for (float& v : x.b) v = normal(rng);
  return x;
}

void write_adapter(const fs::path& dir, const Adapter& x) {
  fs::create_directories(dir);
  const std::string p = "base_model.model." + kModule;
  std::vector<io::TensorSpec> specs = {{p + ".lora_A.weight", DType::kF32, {x.r, kIn}},
                                       {p + ".lora_B.weight", DType::kF32, {kOut, x.r}}};
  io::SafetensorsWriter w(dir / "adapter_model.safetensors", specs, {{"format", "pt"}});
  w.write(0, 0, x.a.data(), x.a.size() * 4);
  w.write(1, 0, x.b.data(), x.b.size() * 4);
  w.finish();
  nlohmann::json c = {{"peft_type", "LORA"},      {"r", x.r},
                      {"lora_alpha", x.alpha},    {"target_modules", {"q_proj"}},
                      {"task_type", "CAUSAL_LM"}, {"base_model_name_or_path", "base"},
                      {"use_rslora", false}};
  testing::write_bytes(dir / "adapter_config.json", c.dump());
}

struct Combined {
  size_t r = 0;
  Mat a, b;
  nlohmann::json config;
};

Combined read_combined(const fs::path& dir) {
  auto f = io::SafetensorsFile::open(dir / "adapter_model.safetensors");
  Combined c;
  const std::string p = "base_model.model." + kModule;
  auto get = [&](const std::string& n, Mat& out) {
    const io::TensorInfo* t = f->find(n);
    EXPECT_NE(t, nullptr) << n;
    if (!t) return;
    out.resize(t->numel());
    f->read(*t, 0, out.data(), t->nbytes);
    if (n.find("lora_A") != std::string::npos) c.r = t->shape[0];
  };
  get(p + ".lora_A.weight", c.a);
  get(p + ".lora_B.weight", c.b);
  c.config = nlohmann::json::parse(testing::read_bytes(dir / "adapter_config.json"));
  return c;
}

// B·A (kOut×kIn) of rank r.
std::vector<double> product(const Mat& b, const Mat& a, size_t r) {
  std::vector<double> c(kOut * kIn, 0.0);
  for (size_t i = 0; i < kOut; ++i)
    for (size_t k = 0; k < r; ++k)
      for (size_t j = 0; j < kIn; ++j) c[i * kIn + j] += double(b[i * r + k]) * a[k * kIn + j];
  return c;
}

void expect_near(const std::vector<double>& x, const std::vector<double>& y, double tol,
                 const std::string& what) {
  ASSERT_EQ(x.size(), y.size()) << what;
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], y[i], tol) << what << " element " << i;
}

std::vector<double> as_double(const Mat& m) { return std::vector<double>(m.begin(), m.end()); }

// Independent formulas (PEFT merge_utils, written out plainly).
Mat magnitude_prune(Mat t, double d) {
  const size_t k = static_cast<size_t>(d * static_cast<double>(t.size()));
  std::vector<float> mags;
  for (float x : t) mags.push_back(std::fabs(x));
  std::sort(mags.rbegin(), mags.rend());
  const float cut = k == 0 ? INFINITY : mags[k - 1];
  for (float& x : t) {
    if (std::fabs(x) < cut) x = 0;  // values are distinct: exactly k kept
  }
  return t;
}

Mat ties(const std::vector<Mat>& t, const std::vector<double>& w, bool frequency) {
  Mat out(t[0].size());
  for (size_t e = 0; e < out.size(); ++e) {
    double m = 0;
    for (const Mat& x : t) m += frequency ? (x[e] > 0) - (x[e] < 0) : x[e];
    const int sign = m >= 0 ? 1 : -1;
    double s = 0;
    int n = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      if ((t[i][e] > 0 ? 1 : t[i][e] < 0 ? -1 : 0) == sign) s += w[i] * t[i][e], ++n;
    }
    out[e] = static_cast<float>(s / std::max(n, 1));
  }
  return out;
}

class LoraCombine : public ::testing::Test {
 protected:
  void SetUp() override {
    x_ = random_adapter(2, 4.0, 1);  // s = 2
    y_ = random_adapter(2, 2.0, 2);  // s = 1
    write_adapter(dir_ / "x", x_);
    write_adapter(dir_ / "y", y_);
  }
  Combined run(const std::string& out, const std::string& extra) {
    auto r = run_smelt(fmt::format("lora combine {} {} {} --weights 0.7,-0.4 {}", quote(dir_ / "x"),
                                   quote(dir_ / "y"), quote(dir_ / out), extra));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return read_combined(dir_ / out);
  }
  // Factor-wise weights: a_i = sign(w_i s_i)√|w_i s_i|, b_i = √|w_i s_i|.
  std::vector<double> wa() const { return {std::sqrt(0.7 * 2), -std::sqrt(0.4 * 1)}; }
  std::vector<double> wb() const { return {std::sqrt(0.7 * 2), std::sqrt(0.4 * 1)}; }
  TempDir dir_;
  Adapter x_, y_;
};

TEST_F(LoraCombine, CatIsExactWeightedSum) {
  const Combined c = run("cat", "--type cat");
  EXPECT_EQ(c.r, 4u);
  EXPECT_EQ(c.config["r"], 4);
  EXPECT_EQ(c.config["lora_alpha"], 4.0);
  std::vector<double> want(kOut * kIn);
  const auto px = product(x_.b, x_.a, 2), py = product(y_.b, y_.a, 2);
  for (size_t i = 0; i < want.size(); ++i) want[i] = 0.7 * 2 * px[i] - 0.4 * 1 * py[i];
  expect_near(product(c.b, c.a, 4), want, 1e-5, "cat");
}

TEST_F(LoraCombine, LinearCombinesFactorsSeparately) {
  const Combined c = run("lin", "--type linear");
  EXPECT_EQ(c.r, 2u);
  Mat a(x_.a.size()), b(x_.b.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(wa()[0] * x_.a[i] + wa()[1] * y_.a[i]);
  for (size_t i = 0; i < b.size(); ++i) b[i] = float(wb()[0] * x_.b[i] + wb()[1] * y_.b[i]);
  expect_near(as_double(c.a), as_double(a), 1e-5, "A");
  expect_near(as_double(c.b), as_double(b), 1e-5, "B");
}

TEST_F(LoraCombine, TiesAndMagnitudePruneFollowPeftFormulas) {
  for (const bool frequency : {false, true}) {
    const Combined c =
        run(frequency ? "tf" : "tt", std::string("--type ties --density 0.5") +
                                         (frequency ? " --majority-sign-method frequency" : ""));
    const Mat a = ties({magnitude_prune(x_.a, 0.5), magnitude_prune(y_.a, 0.5)}, wa(), frequency);
    const Mat b = ties({magnitude_prune(x_.b, 0.5), magnitude_prune(y_.b, 0.5)}, wb(), frequency);
    expect_near(as_double(c.a), as_double(a), 1e-5, "ties A");
    expect_near(as_double(c.b), as_double(b), 1e-5, "ties B");
  }
  const Combined m = run("mp", "--type magnitude_prune --density 0.3");
  const Mat pa = magnitude_prune(x_.a, 0.3), qa = magnitude_prune(y_.a, 0.3);
  Mat a(pa.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(wa()[0] * pa[i] + wa()[1] * qa[i]);
  expect_near(as_double(m.a), as_double(a), 1e-5, "magnitude_prune A");
}

// svd types at full rank: B'A' is exactly the combined delta M. The formula weights deltas
// ΔW_i = s_i B_i A_i by w_i; --peft-svd-scaling weights them by w_i s_i as PEFT's code does.
TEST_F(LoraCombine, SvdTypesDecomposeTheCombinedDelta) {
  const auto px = product(x_.b, x_.a, 2), py = product(y_.b, y_.a, 2);
  for (const bool peft : {false, true}) {
    const Combined c = run(peft ? "svdp" : "svd", std::string("--type svd --svd-rank 5") +
                                                      (peft ? " --peft-svd-scaling" : ""));
    EXPECT_EQ(c.r, 5u);
    std::vector<double> want(px.size());
    const double sx = peft ? 2 * 2 : 2;
    for (size_t i = 0; i < want.size(); ++i) want[i] = 0.7 * sx * px[i] - 0.4 * py[i];
    expect_near(product(c.b, c.a, 5), want, 1e-4, peft ? "svd (PEFT scaling)" : "svd");
  }
  // Default rank: the largest input rank (2): the best rank-2 approximation, whose error is
  // at least as small as that of the cat adapter cut to... simply: rank 2 and A has orthonormal
  // rows (A = Vh).
  const Combined d = run("svd2", "--type svd");
  EXPECT_EQ(d.r, 2u);
  for (size_t p = 0; p < 2; ++p) {
    for (size_t q = 0; q < 2; ++q) {
      double dot = 0;
      for (size_t j = 0; j < kIn; ++j) dot += double(d.a[p * kIn + j]) * d.a[q * kIn + j];
      EXPECT_NEAR(dot, p == q ? 1.0 : 0.0, 1e-5);
    }
  }
  // ties_svd: ties over the deltas themselves.
  const Combined t = run("tsvd", "--type ties_svd --density 0.4 --svd-rank 5");
  Mat dx(px.size()), dy(py.size());
  for (size_t i = 0; i < px.size(); ++i) dx[i] = float(2 * px[i]), dy[i] = float(py[i]);
  const Mat m = ties({magnitude_prune(dx, 0.4), magnitude_prune(dy, 0.4)}, {0.7, -0.4}, false);
  expect_near(product(t.b, t.a, 5), as_double(m), 1e-4, "ties_svd");
}

TEST_F(LoraCombine, DareMasksAreSeededStructuralAndMatchTheStream) {
  const Combined c = run("d1", "--type dare_linear --density 0.5 --seed 9");
  const Combined again = run("d2", "--type dare_linear --density 0.5 --seed 9 -j 2");
  EXPECT_EQ(c.a, again.a);
  EXPECT_EQ(c.b, again.b);
  const Combined other = run("d3", "--type dare_linear --density 0.5 --seed 10");
  EXPECT_NE(c.a, other.a);
  // The same formula with the documented mask: element e of tensor i kept iff
  // draw_uniform(stream_key(seed, "<module>.lora_A", i), e) < density, kept values / density.
  Mat a(x_.a.size());
  for (size_t e = 0; e < a.size(); ++e) {
    double s = 0;
    const Mat* t[2] = {&x_.a, &y_.a};
    for (size_t i = 0; i < 2; ++i) {
      const uint64_t key = kernels::stream_key(9, kModule + ".lora_A", i);
      if (kernels::draw_uniform(key, e) < 0.5f) s += wa()[i] * (*t[i])[e] / 0.5f;
    }
    a[e] = float(s);
  }
  expect_near(as_double(c.a), as_double(a), 1e-5, "dare_linear A");
  // Statistics of the mask on a large tensor: about density kept, kept values rescaled.
  std::vector<float> big(20000, 1.0f);
  lora::dare_prune(big, 0.3, kernels::stream_key(1, "t"));
  size_t kept = 0;
  for (float v : big) {
    if (v != 0) {
      ++kept;
      EXPECT_FLOAT_EQ(v, 1.0f / 0.3f);
    }
  }
  EXPECT_NEAR(double(kept) / big.size(), 0.3, 0.02);
  // dare_ties runs and is deterministic.
  const Combined t1 = run("dt1", "--type dare_ties --density 0.6 --seed 4");
  const Combined t2 = run("dt2", "--type dare_ties --density 0.6 --seed 4");
  EXPECT_EQ(t1.a, t2.a);
}

TEST(LoraTaskMerge, DisjointMergeByHand) {
  // total: sums [0, -3, 4, 2] elect [+, -, +, +].
  const std::vector<std::vector<float>> t = {{1, -2, 3, 0}, {-1, -1, 1, 2}};
  EXPECT_EQ(lora::disjoint_merge(t, {1.0, 0.5}, MajoritySign::kTotal),
            (std::vector<float>{1.0f, -1.25f, 1.75f, 1.0f}));
  // One large positive against two small negatives: total elects +, frequency −.
  const std::vector<std::vector<float>> u = {{5}, {-1}, {-1}};
  EXPECT_EQ(lora::disjoint_merge(u, {1, 1, 1}, MajoritySign::kTotal), (std::vector<float>{5}));
  EXPECT_EQ(lora::disjoint_merge(u, {1, 1, 1}, MajoritySign::kFrequency), (std::vector<float>{-1}));
  std::vector<float> m = {0.5f, -3.0f, 2.0f, -0.1f, 1.0f};
  lora::magnitude_prune(m, 0.4);  // int(0.4·5) = 2 kept
  EXPECT_EQ(m, (std::vector<float>{0, -3.0f, 2.0f, 0, 0}));
  std::vector<float> all = {1, 2};
  lora::magnitude_prune(all, 1.5);
  EXPECT_EQ(all, (std::vector<float>{1, 2}));
}

TEST_F(LoraCombine, BadInputsAreClearErrors) {
  auto r = run_smelt(fmt::format("lora combine {} {} {} --weights 1", quote(dir_ / "x"),
                                 quote(dir_ / "y"), quote(dir_ / "o")));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--weights has 1 values for 2 adapters"), std::string::npos) << r.output;
  r = run_smelt(fmt::format("lora combine {} {} {} --type ties", quote(dir_ / "x"),
                            quote(dir_ / "y"), quote(dir_ / "o")));
  EXPECT_NE(r.output.find("needs --density"), std::string::npos) << r.output;
  r = run_smelt(fmt::format("lora combine {} {} {} --type frob", quote(dir_ / "x"),
                            quote(dir_ / "y"), quote(dir_ / "o")));
  EXPECT_NE(r.output.find("unknown combination type 'frob'"), std::string::npos) << r.output;
  write_adapter(dir_ / "z", random_adapter(3, 3.0, 5));
  r = run_smelt(fmt::format("lora combine {} {} {} --type linear", quote(dir_ / "x"),
                            quote(dir_ / "z"), quote(dir_ / "o")));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("needs adapters of equal rank"), std::string::npos) << r.output;
  r = run_smelt(
      fmt::format("lora combine {} {} --type cat", quote(dir_ / "nothing"), quote(dir_ / "o")));
  EXPECT_NE(r.output.find("no adapter_config.json"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "o"));
}

}  // namespace
}  // namespace smelt
