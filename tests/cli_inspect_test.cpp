// End-to-end tests of `smelt dev make-model` and `smelt inspect` through the binary.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

TEST(CliInspect, ShardedModelPrintsEveryTensorAndTotals) {
  TempDir dir;
  auto made = run_smelt("dev make-model " + quote(dir / "m") +
                        " --hidden 32 --layers 3 --heads 4 --vocab 300 --shards 3 --dtype F16");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto r = run_smelt("inspect " + quote(dir / "m"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // 1 embedding + 3 layers x 9 + norm + lm_head = 30 tensors.
  EXPECT_NE(r.output.find("(3 files"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("total: 30 tensors"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.embed_tokens.weight"), std::string::npos);
  EXPECT_NE(r.output.find("[300, 32]"), std::string::npos);
  EXPECT_NE(r.output.find("model.layers.2.mlp.down_proj.weight"), std::string::npos);
  EXPECT_NE(r.output.find("model-00003-of-00003.safetensors"), std::string::npos);
  // Parameter count computed independently from the llama shapes.
  const uint64_t h = 32, v = 300, inter = 64;
  const uint64_t per_layer = 2 * h + 4 * h * h + 3 * h * inter;
  const uint64_t params = 2 * v * h + 3 * per_layer + h;
  EXPECT_NE(r.output.find(fmt::format("({})", params)), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(fmt::format("{} bytes)", params * 2)), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("format = pt"), std::string::npos);

  auto js = run_smelt("inspect --json " + quote(dir / "m"));
  ASSERT_EQ(js.exit_code, 0) << js.output;
  auto j = nlohmann::json::parse(js.output);
  EXPECT_EQ(j["total"]["tensors"], 30);
  EXPECT_EQ(j["total"]["parameters"], params);
  EXPECT_EQ(j["files"].size(), 3u);
  EXPECT_EQ(j["by_dtype"]["F16"]["bytes"], params * 2);
}

TEST(CliInspect, CacheIdResolvesThroughHfHubCache) {
  TempDir dir;
  const std::string commit = "89abcdef0123456789abcdef0123456789abcdef";
  const fs::path repo = dir / "cache" / "models--someone--tiny-llama";
  fs::create_directories(repo / "refs");
  testing::write_bytes(repo / "refs" / "main", commit);
  auto made = run_smelt("dev make-model " + quote(repo / "snapshots" / commit) +
                        " --hidden 16 --layers 1 --heads 2 --vocab 260 --tied");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto r = testing::run_command("HF_HUB_CACHE=" + quote(dir / "cache") + " " + SMELT_BIN +
                                " inspect someone/tiny-llama");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model someone/tiny-llama"), std::string::npos) << r.output;
  // Tied: no lm_head; 1 + 9 + 1 = 11 tensors.
  EXPECT_NE(r.output.find("total: 11 tensors"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("lm_head"), std::string::npos);
}

TEST(CliInspect, BadFileExitsNonZeroWithMessage) {
  TempDir dir;
  testing::write_bytes(dir / "bad.safetensors", testing::raw_safetensors("{\"w\":", 0));
  auto r = run_smelt("inspect " + quote(dir / "bad.safetensors"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("smelt: error:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bad.safetensors"), std::string::npos) << r.output;
  auto missing = run_smelt("inspect " + quote(dir / "nope"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("not found"), std::string::npos) << missing.output;
}

TEST(MakeModel, FineTuneDiffersFromBaseByScaledSparseDelta) {
  TempDir dir;
  ASSERT_EQ(run_smelt("dev make-model " + quote(dir / "base") +
                      " --hidden 32 --layers 1 --heads 2 --vocab 260 --dtype F32")
                .exit_code,
            0);
  auto r = run_smelt("dev make-model " + quote(dir / "ft") + " --base " + quote(dir / "base") +
                     " --delta-scale 0.5 --sparsity 0.75 --seed 7");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto base = io::Model::open((dir / "base").string());
  auto ft = io::Model::open((dir / "ft").string());
  ASSERT_EQ(base->tensors().size(), ft->tensors().size());
  uint64_t changed = 0, total = 0;
  double sum_sq = 0;
  for (const auto& t : base->tensors()) {
    auto f = ft->find(t.info->name);
    ASSERT_NE(f.info, nullptr);
    ASSERT_EQ(f.info->shape, t.info->shape);
    std::vector<float> a(t.info->numel()), b(t.info->numel());
    t.file->read(*t.info, 0, a.data(), t.info->nbytes);
    f.file->read(*f.info, 0, b.data(), f.info->nbytes);
    for (size_t i = 0; i < a.size(); ++i) {
      total++;
      if (a[i] != b[i]) changed++, sum_sq += double(b[i] - a[i]) * double(b[i] - a[i]);
    }
  }
  const double frac = double(changed) / double(total);
  EXPECT_NEAR(frac, 0.25, 0.02);
  EXPECT_NEAR(std::sqrt(sum_sq / double(changed)), 0.5, 0.03);
  EXPECT_TRUE(fs::exists(dir / "ft" / "tokenizer.json"));
}

TEST(MakeModel, TokenizerIsAValidByteLevelBpe) {
  TempDir dir;
  ASSERT_EQ(run_smelt("dev make-model " + quote(dir / "m") + " --vocab 400").exit_code, 0);
  auto tok = nlohmann::json::parse(testing::read_bytes(dir / "m" / "tokenizer.json"));
  const auto& vocab = tok["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 400u);
  EXPECT_EQ(tok["model"]["type"], "BPE");
  std::vector<bool> seen(400, false);
  for (auto& [k, v] : vocab.items()) {
    ASSERT_LT(v.get<int>(), 400);
    EXPECT_FALSE(seen[v.get<int>()]) << "duplicate id " << v;
    seen[v.get<int>()] = true;
  }
  // Every merge joins two tokens of the vocabulary into a third.
  for (const auto& m : tok["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    ASSERT_NE(sp, std::string::npos);
    const std::string a = s.substr(0, sp), b = s.substr(sp + 1);
    EXPECT_TRUE(vocab.contains(a)) << a;
    EXPECT_TRUE(vocab.contains(b)) << b;
    EXPECT_TRUE(vocab.contains(a + b)) << a + b;
  }
  auto cfg = nlohmann::json::parse(testing::read_bytes(dir / "m" / "config.json"));
  EXPECT_EQ(cfg["vocab_size"], 400);
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
}

}  // namespace
}  // namespace smelt

namespace smelt {
namespace {

// A GGUF file with one F32 tensor of 4 elements and the given string KVs (any bytes).
std::string gguf_with_strings(const std::vector<std::pair<std::string, std::string>>& kvs) {
  std::string b = "GGUF";
  auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) { u64(s.size()), b += s; };
  u32(3), u64(1), u64(kvs.size());
  for (const auto& [k, v] : kvs) str(k), u32(8), str(v);
  str("w"), u32(1), u64(4), u32(0), u64(0);  // name, 1 dim of 4, F32, offset 0
  while (b.size() % 32) b += '\0';
  b.append(16, '\0');
  return b;
}

// Strangers' metadata must not reach the terminal as escape sequences or invalid UTF-8.
TEST(CliInspect, MetadataControlCharactersAndBadUtf8AreEscaped) {
  TempDir dir;
  const std::string evil = "\x1b[31mred\x1b[0m\xff\xfe\nnext\xe2\x80\xae";
  testing::write_bytes(dir / "m.gguf",
                       gguf_with_strings({{"general.architecture", "llama"}, {"evil", evil}}));
  auto r = run_smelt("inspect " + quote(dir / "m.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\xff'), std::string::npos);
  EXPECT_NE(r.output.find("evil = \\x1b[31mred\\x1b[0m\\xff\\xfe\\nnext\\u{202e}"),
            std::string::npos)
      << r.output;
  auto j = run_smelt("inspect --json " + quote(dir / "m.gguf"));
  ASSERT_EQ(j.exit_code, 0) << j.output;
  const auto parsed = nlohmann::json::parse(j.output);  // valid JSON (throws otherwise)
  const std::string shown = parsed["files"][0]["metadata"]["evil"];
  EXPECT_EQ(shown.rfind("\x1b[31mred", 0), 0u);  // escaped as \u001b in the JSON text
  EXPECT_EQ(j.output.find('\x1b'), std::string::npos);

  // safetensors headers must be UTF-8 (the reader refuses others), but may hold JSON escapes.
  const std::string header =
      R"({"__metadata__":{"note":"\u001b[31mred\u0007"},"w":{"dtype":"F32","shape":[1],)"
      R"("data_offsets":[0,4]}})";
  testing::write_bytes(dir / "m.safetensors", testing::raw_safetensors(header, 4));
  auto s = run_smelt("inspect " + quote(dir / "m.safetensors"));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(s.output.find('\x1b'), std::string::npos) << s.output;
  EXPECT_NE(s.output.find("note = \\x1b[31mred\\x07"), std::string::npos) << s.output;
}

}  // namespace
}  // namespace smelt
