// Merging GGUF models end to end: quantized inputs dequantized and merged, outputs quantized to
// the chosen types, frankenmerges copying quantized blocks byte for byte, and mixed-format errors.
#include <fmt/format.h>

#include <cmath>

#include "smelt/io/gguf.h"
#include "smelt/io/model_ref.h"
#include "smelt/kernels/quant.h"
#include "smelt/kernels/random.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using kernels::GgmlType;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

#define EXPECT_HAS(haystack, needle)                                                            \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                        << (haystack)

struct Spec {
  std::string name;
  GgmlType type;
  std::vector<uint64_t> shape;
};

// A tiny llama-like GGUF: 3 blocks of hidden 256 (K-quant rows), norms in F32.
std::vector<Spec> tiny_llama(GgmlType weights) {
  std::vector<Spec> s = {{"token_embd.weight", weights, {32, 256}}};
  for (int l = 0; l < 3; ++l) {
    s.push_back({fmt::format("blk.{}.attn_norm.weight", l), GgmlType::kF32, {256}});
    s.push_back({fmt::format("blk.{}.attn_q.weight", l), weights, {256, 256}});
    s.push_back({fmt::format("blk.{}.ffn_down.weight", l), weights, {256, 512}});
  }
  s.push_back({"output_norm.weight", GgmlType::kF32, {256}});
  s.push_back({"output.weight", weights, {32, 256}});
  return s;
}

void write_gguf(const fs::path& path, const std::vector<Spec>& specs, uint64_t seed) {
  std::vector<io::GgufKv> kvs;
  io::gguf_set_kv(kvs, "general.architecture", io::GgufValue::of("llama"));
  io::gguf_set_kv(kvs, "general.name", io::GgufValue::of("tiny"));
  io::gguf_set_kv(kvs, "llama.block_count", io::GgufValue::of(uint32_t{3}));
  io::gguf_set_kv(kvs, "llama.embedding_length", io::GgufValue::of(uint32_t{256}));
  io::gguf_set_kv(kvs, "tokenizer.ggml.tokens",
                  io::GgufValue::array(std::vector<std::string>{"a", "b"}));
  std::vector<io::GgufTensorSpec> ts;
  for (const auto& s : specs) ts.push_back({s.name, s.type, s.shape});
  io::GgufWriter w(path, kvs, ts);
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<float> v(ts[i].numel());
    const uint64_t key = kernels::stream_key(seed, specs[i].name);
    for (size_t j = 0; j < v.size(); ++j) v[j] = 0.05f * kernels::random_normal(key, j);
    std::string bytes(ts[i].nbytes(), '\0');
    kernels::quantize(specs[i].type, v.data(), bytes.data(), v.size());
    w.write(i, 0, bytes.data(), bytes.size());
  }
  w.finish();
}

std::string raw(const io::Model& m, const std::string& name) {
  auto t = m.find(name);
  if (!t.info) return "<missing>";
  std::string b(t.info->nbytes, '\0');
  t.file->read(*t.info, 0, b.data(), b.size());
  return b;
}

std::vector<float> values(const io::Model& m, const std::string& name) {
  auto t = m.find(name);
  std::string b = raw(m, name);
  std::vector<float> f(t.info->numel());
  kernels::dequantize(static_cast<GgmlType>(t.info->ggml_type), b.data(), f.data(), f.size());
  return f;
}

class GgufMerge : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_gguf(*dir_ / "a.gguf", tiny_llama(GgmlType::kQ4_K), 1);
    write_gguf(*dir_ / "b.gguf", tiny_llama(GgmlType::kQ4_K), 2);
    write_gguf(*dir_ / "c8.gguf", tiny_llama(GgmlType::kQ8_0), 3);
    write_gguf(*dir_ / "d8.gguf", tiny_llama(GgmlType::kQ8_0), 4);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string p(const std::string& n) { return (*dir_ / n).string(); }
  testing::CommandResult merge(const TempDir& work, const std::string& yaml, const std::string& out,
                               const std::string& extra = "") {
    testing::write_bytes(work / "c.yml", yaml);
    return run_smelt("merge -q " + quote(work / "c.yml") + " " + quote(work / out) + " " + extra);
  }
  static TempDir* dir_;
};
TempDir* GgufMerge::dir_ = nullptr;

TEST_F(GgufMerge, FrankenmergeOfQ4KModelsCopiesBlocksBitForBit) {
  TempDir work;
  auto r = merge(work,
                 fmt::format("slices:\n  - sources:\n    - model: {}\n      layer_range: [0, 2]\n"
                             "  - sources:\n    - model: {}\n      layer_range: [1, 3]\n"
                             "merge_method: passthrough\n",
                             p("a.gguf"), p("b.gguf")),
                 "out.gguf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out.gguf").string());
  auto a = io::Model::open(p("a.gguf")), b = io::Model::open(p("b.gguf"));
  EXPECT_EQ(out->tensors().size(), 1 + 4 * 3 + 2u);
  for (const char* t : {"attn_norm.weight", "attn_q.weight", "ffn_down.weight"}) {
    EXPECT_EQ(raw(*out, fmt::format("blk.0.{}", t)), raw(*a, fmt::format("blk.0.{}", t)));
    EXPECT_EQ(raw(*out, fmt::format("blk.1.{}", t)), raw(*a, fmt::format("blk.1.{}", t)));
    EXPECT_EQ(raw(*out, fmt::format("blk.2.{}", t)), raw(*b, fmt::format("blk.1.{}", t)));
    EXPECT_EQ(raw(*out, fmt::format("blk.3.{}", t)), raw(*b, fmt::format("blk.2.{}", t)));
  }
  EXPECT_EQ(raw(*out, "token_embd.weight"), raw(*a, "token_embd.weight"));
  EXPECT_EQ(raw(*out, "output.weight"), raw(*b, "output.weight"));
  EXPECT_EQ(out->find("blk.3.attn_q.weight").info->ggml_type, static_cast<int>(GgmlType::kQ4_K));
  auto file = io::GgufFile::open(work / "out.gguf");
  EXPECT_EQ(file->find_kv("llama.block_count")->as_uint(), 4u);
  EXPECT_EQ(file->find_kv("general.name")->as_string(), "tiny");
  EXPECT_TRUE(file->find_kv("tokenizer.ggml.tokens"));
}

TEST_F(GgufMerge, LinearMergeDequantizesMergesAndRequantizesToTheInputType) {
  TempDir work;
  auto r =
      merge(work,
            fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.25}}\n"
                        "  - model: {}\n    parameters: {{weight: 0.75}}\nmerge_method: linear\n",
                        p("c8.gguf"), p("d8.gguf")),
            "out.gguf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out.gguf").string());
  auto c = io::Model::open(p("c8.gguf")), d = io::Model::open(p("d8.gguf"));
  for (const auto& t : c->tensors()) {
    const std::string& n = t.info->name;
    auto o = out->find(n);
    ASSERT_NE(o.info, nullptr) << n;
    EXPECT_EQ(o.info->ggml_type, t.info->ggml_type) << n;
    // Expected bytes: the f32 linear merge of the dequantized inputs, quantized once.
    auto x = values(*c, n), y = values(*d, n);
    std::vector<float> merged(x.size());
    for (size_t i = 0; i < x.size(); ++i) merged[i] = (0.25f * x[i] + 0.75f * y[i]) / 1.0f;
    std::string want(o.info->nbytes, '\0');
    kernels::quantize(static_cast<GgmlType>(t.info->ggml_type), merged.data(), want.data(),
                      merged.size());
    std::vector<float> got = values(*out, n), expect(x.size());
    kernels::dequantize(static_cast<GgmlType>(t.info->ggml_type), want.data(), expect.data(),
                        expect.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], expect[i], 1e-6 + 1e-3 * std::fabs(expect[i])) << n << " " << i;
    }
  }
}

TEST_F(GgufMerge, OutTypeAndTensorTypeChooseTheWrittenTypes) {
  TempDir work;
  auto r =
      merge(work,
            fmt::format("models:\n  - model: {}\n  - model: {}\nmerge_method: linear\n"
                        "parameters: {{weight: 0.5}}\n",
                        p("c8.gguf"), p("d8.gguf")),
            "out.gguf", "--out-type F16 --tensor-type 'ffn_down=Q4_K' --tensor-type 'attn_q=Q6_K'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out.gguf").string());
  EXPECT_EQ(out->find("blk.0.ffn_down.weight").info->ggml_type, static_cast<int>(GgmlType::kQ4_K));
  EXPECT_EQ(out->find("blk.2.attn_q.weight").info->ggml_type, static_cast<int>(GgmlType::kQ6_K));
  EXPECT_EQ(out->find("token_embd.weight").info->ggml_type, static_cast<int>(GgmlType::kF16));
  EXPECT_EQ(out->find("blk.1.attn_norm.weight").info->ggml_type, static_cast<int>(GgmlType::kF32));
  auto bad =
      merge(work, fmt::format("models:\n  - model: {}\nmerge_method: passthrough\n", p("c8.gguf")),
            "bad.gguf", "--out-type Q3_K");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_HAS(bad.output, "--out-type");
  EXPECT_FALSE(fs::exists(work / "bad.gguf"));
}

TEST_F(GgufMerge, GgufAndSafetensorsInOneMergeIsAnError) {
  TempDir work;
  auto mk = run_smelt("dev make-model " + quote(work / "hf") +
                      " --hidden 32 --heads 2 --layers 3 --vocab 260");
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  auto r = merge(work,
                 fmt::format("models:\n  - model: {}\n  - model: {}\nmerge_method: linear\n"
                             "parameters: {{weight: 0.5}}\n",
                             p("a.gguf"), (work / "hf").string()),
                 "out");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "models[1]");
  EXPECT_HAS(r.output, "GGUF");
  EXPECT_FALSE(fs::exists(work / "out"));
}

TEST_F(GgufMerge, InspectAndPlanWorkOnGgufInputs) {
  auto r = run_smelt("inspect " + quote(*dir_ / "a.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "blk.2.ffn_down.weight");
  EXPECT_HAS(r.output, "general.architecture = llama");
  EXPECT_HAS(r.output, "q4_K");
  TempDir work;
  testing::write_bytes(work / "c.yml",
                       fmt::format("models:\n  - model: {}\n  - model: {}\n"
                                   "merge_method: linear\nparameters: {{weight: 0.5}}\n",
                                   p("a.gguf"), p("b.gguf")));
  auto plan = run_smelt("plan " + quote(work / "c.yml") + " --explain 'blk.0.attn_q*'");
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_HAS(plan.output, "blk.0.attn_q.weight");
  EXPECT_HAS(plan.output, "q4_K");
}

// A GGUF file with output.weight has a head of its own; a tied one has none (llama.cpp reuses
// token_embd.weight).
TEST_F(GgufMerge, InspectArchTellsTiedFromOutputWeight) {
  auto untied = run_smelt("inspect --arch " + quote(*dir_ / "a.gguf"));
  ASSERT_EQ(untied.exit_code, 0) << untied.output;
  EXPECT_HAS(untied.output, "output head tied to the embeddings: no");
  EXPECT_HAS(untied.output, "table entry:  gguf");

  TempDir work;
  std::vector<Spec> specs = tiny_llama(GgmlType::kQ8_0);
  ASSERT_EQ(specs.back().name, "output.weight");
  specs.pop_back();
  write_gguf(work / "tied.gguf", specs, 7);
  auto tied = run_smelt("inspect --arch " + quote(work / "tied.gguf"));
  ASSERT_EQ(tied.exit_code, 0) << tied.output;
  EXPECT_HAS(tied.output, "output head tied to the embeddings: yes");
}

TEST_F(GgufMerge, CorruptGgufNamesTheFile) {
  TempDir work;
  std::string bytes = testing::read_bytes(*dir_ / "a.gguf");
  bytes.resize(bytes.size() / 2);
  testing::write_bytes(work / "cut.gguf", bytes);
  auto r = run_smelt("inspect " + quote(work / "cut.gguf"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "cut.gguf");
}

}  // namespace
}  // namespace smelt
