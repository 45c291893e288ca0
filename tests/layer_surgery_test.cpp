// Layer surgery and "any model" (issue: frankenmerges, inferred architectures, tied heads,
// embedding rectification, raw tensor files, multi-stage recipes), end to end through the binary.
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/random.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

#define EXPECT_HAS(haystack, needle)                                                            \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                        << (haystack)

void make(const std::string& args) {
  auto r = run_smelt("dev make-model " + args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

std::string bytes_of(const io::Model& m, const std::string& name) {
  auto t = m.find(name);
  if (!t.info) return "<missing " + name + ">";
  std::string b(t.info->nbytes, '\0');
  t.file->read(*t.info, 0, b.data(), b.size());
  return b;
}

std::vector<float> floats_of(const io::Model& m, const std::string& name) {
  auto t = m.find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return {};
  std::string b = bytes_of(m, name);
  std::vector<float> f(t.info->numel());
  kernels::to_f32(t.info->dtype, b.data(), f.data(), f.size());
  return f;
}

json config_of(const fs::path& dir) {
  return json::parse(testing::read_bytes(dir / "config.json"));
}

testing::CommandResult merge(const TempDir& dir, const std::string& yaml, const std::string& out,
                             const std::string& extra = "") {
  testing::write_bytes(dir / (out + ".yml"), yaml);
  return run_smelt("merge -q " + quote(dir / (out + ".yml")) + " " + quote(dir / out) + " " +
                   extra);
}

class LayerSurgery : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string small = " --hidden 16 --heads 2 --vocab 260";
    make(quote(*dir_ / "a40") + small + " --layers 40 --seed 1");
    make(quote(*dir_ / "b40") + small + " --layers 40 --seed 2");
    make(quote(*dir_ / "untied") + small + " --layers 2 --seed 3 --dtype F32");
    make(quote(*dir_ / "tied") + small + " --layers 2 --seed 4 --dtype F32 --tied");
    make(quote(*dir_ / "tied2") + " --base " + quote(*dir_ / "tied") + " --seed 5");
    make(quote(*dir_ / "bigvocab") +
         " --hidden 16 --heads 2 --vocab 300 --layers 2 --seed 6 --dtype F32");
    make(quote(*dir_ / "g") +
         " --style gpt2 --arch MysteryLMHeadModel --model-type mystery"
         " --hidden 16 --heads 2 --vocab 260 --layers 3 --dtype F32 --seed 7");
    make(quote(*dir_ / "g2") + " --base " + quote(*dir_ / "g") + " --seed 8 --delta-scale 0.1");
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string p(const std::string& name) { return (*dir_ / name).string(); }
  static TempDir* dir_;
};
TempDir* LayerSurgery::dir_ = nullptr;

TEST_F(LayerSurgery, FrankenmergeOf40LayerModelsHas44LayersCopiedBitForBit) {
  TempDir work;
  // mergekit's examples/orcamini-platy-44layer.yml with the models mapped.
  auto r = merge(work,
                 fmt::format("slices:\n  - sources:\n    - model: {}\n      layer_range: [0, 24]\n"
                             "  - sources:\n    - model: {}\n      layer_range: [20, 40]\n"
                             "merge_method: passthrough\n",
                             p("a40"), p("b40")),
                 "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(config_of(work / "out")["num_hidden_layers"], 44);
  auto out = io::Model::open((work / "out").string());
  auto a = io::Model::open(p("a40")), b = io::Model::open(p("b40"));
  EXPECT_EQ(out->tensors().size(), 2 + 44 * 9 + 1u);
  const char* parts[] = {"input_layernorm.weight", "self_attn.q_proj.weight",
                         "mlp.down_proj.weight", "post_attention_layernorm.weight"};
  for (int layer = 0; layer < 44; ++layer) {
    for (const char* part : parts) {
      const std::string name = fmt::format("model.layers.{}.{}", layer, part);
      const std::string src = layer < 24 ? fmt::format("model.layers.{}.{}", layer, part)
                                         : fmt::format("model.layers.{}.{}", layer - 24 + 20, part);
      EXPECT_EQ(bytes_of(*out, name), bytes_of(layer < 24 ? *a : *b, src)) << name;
    }
  }
  EXPECT_FALSE(out->has("model.layers.44.mlp.up_proj.weight"));
  EXPECT_EQ(bytes_of(*out, "model.embed_tokens.weight"), bytes_of(*a, "model.embed_tokens.weight"));
  EXPECT_EQ(bytes_of(*out, "model.norm.weight"), bytes_of(*b, "model.norm.weight"));
  EXPECT_EQ(bytes_of(*out, "lm_head.weight"), bytes_of(*b, "lm_head.weight"));
}

TEST_F(LayerSurgery, LayerUsedTwiceIsWrittenUnderEachNameWithScale) {
  TempDir work;
  auto r = merge(work,
                 fmt::format("slices:\n  - sources:\n    - model: {0}\n      layer_range: [0, 4]\n"
                             "  - sources:\n    - model: {0}\n      layer_range: [2, 6]\n"
                             "    parameters:\n      scale:\n        - filter: o_proj\n"
                             "          value: 0\n        - value: 1\n"
                             "merge_method: passthrough\n",
                             p("a40")),
                 "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out").string());
  auto a = io::Model::open(p("a40"));
  EXPECT_EQ(config_of(work / "out")["num_hidden_layers"], 8);
  for (int i : {2, 3}) {
    const std::string up = fmt::format("model.layers.{}.mlp.up_proj.weight", i);
    EXPECT_EQ(bytes_of(*out, up), bytes_of(*a, up));
    EXPECT_EQ(bytes_of(*out, fmt::format("model.layers.{}.mlp.up_proj.weight", i + 2)),
              bytes_of(*a, up));
  }
  // The second slice scales o_proj by 0; the first slice does not.
  for (float v : floats_of(*out, "model.layers.5.self_attn.o_proj.weight")) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(bytes_of(*out, "model.layers.1.self_attn.o_proj.weight"),
            bytes_of(*a, "model.layers.1.self_attn.o_proj.weight"));
}

TEST_F(LayerSurgery, UnknownArchitectureWithGpt2NamesMergesWithoutTableEntry) {
  TempDir work;
  auto r =
      merge(work,
            fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.25}}\n"
                        "  - model: {}\n    parameters: {{weight: 0.75}}\nmerge_method: linear\n",
                        p("g"), p("g2")),
            "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out").string());
  auto g = io::Model::open(p("g")), g2 = io::Model::open(p("g2"));
  EXPECT_EQ(out->tensors().size(), g->tensors().size());
  EXPECT_FALSE(out->has("lm_head.weight"));  // tied: nothing the config does not expect
  for (const auto& t : g->tensors()) {
    auto x = floats_of(*g, t.info->name), y = floats_of(*g2, t.info->name);
    auto o = floats_of(*out, t.info->name);
    ASSERT_EQ(o.size(), x.size()) << t.info->name;
    for (size_t i = 0; i < o.size(); ++i) {
      const double want = (0.25 * x[i] + 0.75 * y[i]) / 1.0;
      EXPECT_NEAR(o[i], want, 1e-6 * (std::fabs(want) + 1e-3)) << t.info->name << " " << i;
    }
  }
  // Slices over the inferred stack rewrite the config's n_layer.
  auto s = merge(work,
                 fmt::format("slices:\n  - sources:\n    - model: {0}\n      layer_range: [0, 3]\n"
                             "  - sources:\n    - model: {0}\n      layer_range: [1, 3]\n"
                             "merge_method: passthrough\n",
                             p("g")),
                 "stack");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(config_of(work / "stack")["n_layer"], 5);
  auto st = io::Model::open((work / "stack").string());
  EXPECT_EQ(bytes_of(*st, "transformer.h.4.attn.c_attn.weight"),
            bytes_of(*g, "transformer.h.2.attn.c_attn.weight"));
  EXPECT_EQ(bytes_of(*st, "transformer.ln_f.bias"), bytes_of(*g, "transformer.ln_f.bias"));
}

TEST_F(LayerSurgery, InspectArchShowsWhatWasInferred) {
  auto r = run_smelt("inspect --arch " + quote(*dir_ / "g"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "transformer.h");
  EXPECT_HAS(r.output, "3 layers");
  EXPECT_HAS(r.output, "n_layer");
  EXPECT_HAS(r.output, "MysteryLMHeadModel");
}

TEST_F(LayerSurgery, MixedArchitecturesNeedAllowCrimes) {
  TempDir work;
  const std::string yaml = fmt::format(
      "models:\n  - model: {}\n    parameters: {{weight: 1}}\n  - model: {}\n    parameters: "
      "{{weight: 1}}\nmerge_method: linear\n",
      p("untied"), p("g"));
  auto r = merge(work, yaml, "out");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "models[1]");
  EXPECT_HAS(r.output, "--allow-crimes");
  EXPECT_FALSE(fs::exists(work / "out"));
}

TEST_F(LayerSurgery, UntiedDonorGetsAHeadBuiltFromTiedInputsEmbeddings) {
  TempDir work;
  auto r =
      merge(work,
            fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.5}}\n"
                        "  - model: {}\n    parameters: {{weight: 0.5}}\nmerge_method: linear\n",
                        p("untied"), p("tied")),
            "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out").string());
  auto u = io::Model::open(p("untied")), t = io::Model::open(p("tied"));
  auto head = floats_of(*out, "lm_head.weight");
  auto uh = floats_of(*u, "lm_head.weight"), te = floats_of(*t, "model.embed_tokens.weight");
  ASSERT_EQ(head.size(), uh.size());
  for (size_t i = 0; i < head.size(); ++i) EXPECT_NEAR(head[i], 0.5 * uh[i] + 0.5 * te[i], 1e-6);
  EXPECT_EQ(config_of(work / "out")["tie_word_embeddings"], false);
}

TEST_F(LayerSurgery, TiedDonorWritesNoHeadEvenIfAnInputHasOne) {
  TempDir work;
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  testing::write_bytes(
      work / "c.yml",
      fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.5}}\n"
                  "  - model: {}\n    parameters: {{weight: 0.5}}\nmerge_method: linear\n",
                  p("tied"), p("untied")));
  r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "'lm_head.weight' of the inputs is not written");
  auto out = io::Model::open((work / "out").string());
  EXPECT_FALSE(out->has("lm_head.weight"));
  EXPECT_EQ(config_of(work / "out")["tie_word_embeddings"], true);
}

TEST_F(LayerSurgery, NoInputWithHeadWritesNone) {
  TempDir work;
  auto r = merge(work,
                 fmt::format("models:\n  - model: {}\n  - model: {}\nbase_model: {}\n"
                             "merge_method: ties\nparameters:\n  weight: 1\n  density: 0.5\n",
                             p("tied2"), p("tied2"), p("tied")),
                 "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = io::Model::open((work / "out").string());
  EXPECT_FALSE(out->has("lm_head.weight"));
  EXPECT_TRUE(out->has("model.embed_tokens.weight"));
}

TEST_F(LayerSurgery, EmbeddingsOfDifferentVocabularyAreCroppedAndVocabSizeUpdated) {
  TempDir work;
  auto r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  testing::write_bytes(
      work / "c.yml",
      fmt::format("models:\n  - model: {}\n    parameters: {{weight: 1}}\n"
                  "  - model: {}\n    parameters: {{weight: 3}}\nmerge_method: linear\n",
                  p("bigvocab"), p("untied")));
  r = run_smelt("merge " + quote(work / "c.yml") + " " + quote(work / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_HAS(r.output, "cropped to the common block [260, 16]");
  EXPECT_EQ(config_of(work / "out")["vocab_size"], 260);
  auto out = io::Model::open((work / "out").string());
  auto big = io::Model::open(p("bigvocab")), small = io::Model::open(p("untied"));
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    auto o = floats_of(*out, name), x = floats_of(*big, name), y = floats_of(*small, name);
    ASSERT_EQ(o.size(), 260u * 16);
    for (size_t i = 0; i < o.size(); ++i)
      EXPECT_NEAR(o[i], (x[i] + 3.0 * y[i]) / 4.0, 1e-6) << name;
  }
}

TEST_F(LayerSurgery, SliceBadInputsNameTheYamlPath) {
  TempDir work;
  auto beyond =
      merge(work,
            fmt::format("slices:\n  - sources:\n    - model: {}\n      layer_range: [0, 41]\n"
                        "merge_method: passthrough\n",
                        p("a40")),
            "o1");
  EXPECT_NE(beyond.exit_code, 0);
  EXPECT_HAS(beyond.output, "slices[0].sources[0].layer_range");
  EXPECT_HAS(beyond.output, "40 layers");
  auto spans =
      merge(work,
            fmt::format("slices:\n  - sources:\n    - model: {}\n      layer_range: [0, 4]\n"
                        "    - model: {}\n      layer_range: [0, 5]\nbase_model: {}\n"
                        "merge_method: slerp\nparameters: {{t: 0.5}}\n",
                        p("a40"), p("b40"), p("a40")),
            "o2");
  EXPECT_NE(spans.exit_code, 0);
  EXPECT_HAS(spans.output, "slices[0].sources[1].layer_range");
  EXPECT_HAS(spans.output, "same number of layers");
  // A config.json without a layer-count key cannot describe a frankenmerge.
  fs::copy(*dir_ / "a40", work / "nokey", fs::copy_options::recursive);
  json cfg = config_of(work / "nokey");
  cfg.erase("num_hidden_layers");
  testing::write_bytes(work / "nokey" / "config.json", cfg.dump());
  auto nokey =
      merge(work,
            fmt::format("slices:\n  - sources:\n    - model: {}\n      layer_range: [0, 4]\n"
                        "merge_method: passthrough\n",
                        (work / "nokey").string()),
            "o3");
  EXPECT_NE(nokey.exit_code, 0);
  EXPECT_HAS(nokey.output, "no layer-count key");
  EXPECT_FALSE(fs::exists(work / "o1"));
  EXPECT_FALSE(fs::exists(work / "o3"));
}

// ---- raw tensor files (Stable Diffusion style single-file checkpoints) ----

std::vector<std::string> sd_names() {
  std::vector<std::string> n;
  const std::string u = "model.diffusion_model.";
  for (int b = 0; b < 12; ++b) {
    const std::string p = u + fmt::format("input_blocks.{}.", b);
    for (const char* s :
         {"0.in_layers.0.weight", "0.in_layers.0.bias", "0.in_layers.2.weight",
          "0.in_layers.2.bias", "0.out_layers.3.weight", "0.out_layers.3.bias", "1.proj_in.weight",
          "1.transformer_blocks.0.attn1.to_q.weight", "1.transformer_blocks.0.attn1.to_k.weight"}) {
      n.push_back(p + s);
    }
  }
  for (const char* s : {"0.in_layers.0.weight", "0.out_layers.3.weight", "1.proj_in.weight",
                        "1.transformer_blocks.0.attn2.to_v.weight", "2.in_layers.2.weight"}) {
    n.push_back(u + "middle_block." + s);
  }
  for (int b = 0; b < 12; ++b) {
    const std::string p = u + fmt::format("output_blocks.{}.", b);
    for (const char* s :
         {"0.in_layers.0.weight", "0.in_layers.2.weight", "0.skip_connection.weight",
          "1.proj_out.weight", "1.transformer_blocks.0.ff.net.0.proj.weight",
          "1.transformer_blocks.0.ff.net.2.weight", "1.norm.weight", "1.norm.bias"}) {
      n.push_back(p + s);
    }
  }
  for (const char* s :
       {"time_embed.0.weight", "time_embed.2.weight", "out.0.weight", "out.2.weight"}) {
    n.push_back(u + s);
  }
  for (int l = 0; l < 12; ++l) {
    n.push_back(fmt::format(
        "cond_stage_model.transformer.text_model.encoder.layers.{}.self_attn.q_proj.weight", l));
    n.push_back(
        fmt::format("cond_stage_model.transformer.text_model.encoder.layers.{}.mlp.fc1.weight", l));
  }
  for (const char* s : {"encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight"}) {
    n.push_back(std::string("first_stage_model.") + s);
  }
  return n;
}

// Writes an SD-like single file; returns the values written per tensor (f16-rounded).
std::map<std::string, std::vector<float>> write_sd(const fs::path& path, uint64_t seed,
                                                   const std::vector<std::string>& names) {
  std::vector<io::TensorSpec> specs;
  for (const auto& n : names) specs.push_back({n, DType::kF16, {4, 6}});
  specs.push_back(
      {"cond_stage_model.transformer.text_model.embeddings.position_ids", DType::kI64, {1, 5}});
  io::SafetensorsWriter w(path, specs, {});
  std::map<std::string, std::vector<float>> values;
  for (size_t i = 0; i + 1 < specs.size(); ++i) {
    std::vector<float> v(24);
    for (size_t j = 0; j < v.size(); ++j)
      v[j] = kernels::random_normal(kernels::stream_key(seed, names[i]), j);
    std::vector<uint16_t> h(24);
    kernels::from_f32(DType::kF16, v.data(), h.data(), 24);
    kernels::to_f32(DType::kF16, h.data(), v.data(), 24);
    w.write(i, 0, h.data(), 48);
    values[names[i]] = v;
  }
  int64_t ids[5] = {0, 1, 2, 3, static_cast<int64_t>(seed)};
  w.write(specs.size() - 1, 0, ids, sizeof(ids));
  w.finish();
  return values;
}

TEST(RawMode, StableDiffusionCheckpointMergesWithPerBlockWeights) {
  TempDir work;
  const auto names = sd_names();
  ASSERT_GT(names.size(), 200u);
  auto a = write_sd(work / "a.safetensors", 1, names);
  auto b = write_sd(work / "b.safetensors", 2, names);
  // A block-weighted merge: in / mid / out blocks get their own weight for model a.
  testing::write_bytes(work / "c.yml", fmt::format(R"(models:
  - model: {}
    parameters:
      weight:
        - filter: input_blocks
          value: 0.2
        - filter: middle_block
          value: 0.5
        - filter: output_blocks
          value: 0.9
        - value: 0.7
  - model: {}
    parameters:
      weight: 0.3
merge_method: linear
dtype: float32
)",
                                                   (work / "a.safetensors").string(),
                                                   (work / "b.safetensors").string()));
  auto r = run_smelt("merge -q " + quote(work / "c.yml") + " " + quote(work / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(work / "out" / "config.json"));
  auto out = io::Model::open((work / "out").string());
  EXPECT_EQ(out->tensors().size(), names.size() + 1);
  for (const auto& n : names) {
    const double wa = n.find("input_blocks") != std::string::npos    ? 0.2
                      : n.find("middle_block") != std::string::npos  ? 0.5
                      : n.find("output_blocks") != std::string::npos ? 0.9
                                                                     : 0.7;
    auto o = floats_of(*out, n);
    ASSERT_EQ(o.size(), 24u) << n;
    for (size_t j = 0; j < 24; ++j) {
      const double want = (wa * a[n][j] + 0.3 * b[n][j]) / (wa + 0.3);
      // f32 arithmetic: error relative to the size of the terms, not of their (small) sum.
      const double scale = (wa * std::fabs(a[n][j]) + 0.3 * std::fabs(b[n][j])) / (wa + 0.3);
      EXPECT_NEAR(o[j], want, 1e-6 * scale + 1e-9) << n;
    }
  }
  // The integer tensor is copied from the first model.
  auto ids = out->find("cond_stage_model.transformer.text_model.embeddings.position_ids");
  ASSERT_NE(ids.info, nullptr);
  EXPECT_EQ(ids.info->dtype, DType::kI64);
  int64_t back[5];
  ids.file->read(*ids.info, 0, back, sizeof(back));
  EXPECT_EQ(back[4], 1);
}

TEST(RawMode, TensorsOnlySomeFilesHaveNeedAChoice) {
  TempDir work;
  auto names = sd_names();
  write_sd(work / "a.safetensors", 1, names);
  names.pop_back();
  write_sd(work / "b.safetensors", 2, names);
  testing::write_bytes(
      work / "c.yml",
      fmt::format("models:\n  - model: {}\n  - model: {}\n"
                  "merge_method: linear\nparameters: {{weight: 1}}\n",
                  (work / "a.safetensors").string(), (work / "b.safetensors").string()));
  auto r = run_smelt("merge -q " + quote(work / "c.yml") + " " + quote(work / "o1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "first_stage_model.quant_conv.weight");
  EXPECT_HAS(r.output, "--tensor-intersection");
  auto i = run_smelt("merge -q --tensor-intersection " + quote(work / "c.yml") + " " +
                     quote(work / "o2"));
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_FALSE(io::Model::open((work / "o2").string())->has("first_stage_model.quant_conv.weight"));
  auto u = run_smelt("merge -q --tensor-union " + quote(work / "c.yml") + " " + quote(work / "o3"));
  ASSERT_EQ(u.exit_code, 0) << u.output;
  auto o3 = io::Model::open((work / "o3").string());
  auto a = io::Model::open((work / "a.safetensors").string());
  EXPECT_EQ(bytes_of(*o3, "first_stage_model.quant_conv.weight"),
            bytes_of(*a, "first_stage_model.quant_conv.weight"));
}

TEST(RawMode, OneNameWithDifferentShapesIsAnError) {
  TempDir work;
  {
    io::SafetensorsWriter w(work / "a.safetensors", {{"w", DType::kF32, {2, 3}}}, {});
    float v[6] = {};
    w.write(0, 0, v, sizeof(v));
    w.finish();
    io::SafetensorsWriter w2(work / "b.safetensors", {{"w", DType::kF32, {3, 2}}}, {});
    w2.write(0, 0, v, sizeof(v));
    w2.finish();
  }
  testing::write_bytes(
      work / "c.yml",
      fmt::format("models:\n  - model: {}\n  - model: {}\n"
                  "merge_method: linear\nparameters: {{weight: 1}}\n",
                  (work / "a.safetensors").string(), (work / "b.safetensors").string()));
  auto r = run_smelt("merge -q " + quote(work / "c.yml") + " " + quote(work / "out"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.output, "models[1]");
  EXPECT_HAS(r.output, "[3, 2]");
  EXPECT_HAS(r.output, "b.safetensors");
}

// ---- multi-stage recipes ----

class Recipes : public LayerSurgery {};

std::string stage1(const std::string& a, const std::string& b) {
  return fmt::format(
      "name: first\nmodels:\n  - model: {}\n  - model: {}\nmerge_method: linear\n"
      "parameters:\n  weight: 0.5\ndtype: bfloat16\n",
      a, b);
}
std::string stage2(const std::string& first, const std::string& c) {
  return fmt::format(
      "name: second\nmodels:\n  - model: {}\n  - model: {}\nbase_model: {}\n"
      "merge_method: slerp\nparameters:\n  t: 0.3\n",
      first, c, first);
}
std::string stage3(const std::string& second, const std::string& base) {
  return fmt::format(
      "models:\n  - model: {}\n    parameters:\n      density: 0.6\n      weight: 0.5\n"
      "base_model: {}\nmerge_method: dare_ties\n",
      second, base);
}

TEST_F(Recipes, ThreeStageRecipeEqualsThreeMergesWithFilesInBetween) {
  TempDir work;
  make(quote(work / "base") + " --hidden 32 --heads 2 --vocab 260 --layers 2 --seed 11");
  make(quote(work / "x") + " --base " + quote(work / "base") + " --seed 12 --delta-scale 0.05");
  make(quote(work / "y") + " --base " + quote(work / "base") + " --seed 13 --delta-scale 0.05");
  make(quote(work / "z") + " --base " + quote(work / "base") + " --seed 14 --delta-scale 0.05");
  const std::string x = (work / "x").string(), y = (work / "y").string(), z = (work / "z").string();
  const std::string base = (work / "base").string();
  testing::write_bytes(work / "recipe.yml", stage1(x, y) + "---\n" + stage2("first", z) + "---\n" +
                                                stage3("second", base));
  auto r = run_smelt("merge -q --random-seed 5 -j 2 " + quote(work / "recipe.yml") + " " +
                     quote(work / "chained") + " --keep-intermediates " + quote(work / "inter"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(work / "inter" / "first" / "model.safetensors"));
  // The same three merges run one after another with files in between.
  testing::write_bytes(work / "s1.yml", stage1(x, y));
  testing::write_bytes(work / "s2.yml", stage2((work / "m1").string(), z));
  testing::write_bytes(work / "s3.yml", stage3((work / "m2").string(), base));
  for (auto [cfg, out] : {std::pair{"s1.yml", "m1"}, {"s2.yml", "m2"}, {"s3.yml", "m3"}}) {
    auto s = run_smelt("merge -q --random-seed 5 " + quote(work / cfg) + " " + quote(work / out));
    ASSERT_EQ(s.exit_code, 0) << s.output;
  }
  auto chained = io::Model::open((work / "chained").string());
  auto m3 = io::Model::open((work / "m3").string());
  ASSERT_EQ(chained->tensors().size(), m3->tensors().size());
  for (const auto& t : m3->tensors()) {
    EXPECT_EQ(bytes_of(*chained, t.info->name), bytes_of(*m3, t.info->name)) << t.info->name;
  }
  auto inter = io::Model::open((work / "inter" / "second").string());
  auto m2 = io::Model::open((work / "m2").string());
  for (const auto& t : m2->tensors()) {
    EXPECT_EQ(bytes_of(*inter, t.info->name), bytes_of(*m2, t.info->name)) << t.info->name;
  }
  EXPECT_HAS(testing::read_bytes(work / "chained" / "mergekit_config.yml"), "name: second");
  EXPECT_TRUE(fs::exists(work / "chained" / "tokenizer.json"));
}

TEST_F(Recipes, CyclesDuplicatesAndUnknownNamesAreErrors) {
  TempDir work;
  const std::string a = p("untied"), b = p("tied");
  auto run = [&](const std::string& yaml) {
    testing::write_bytes(work / "r.yml", yaml);
    return run_smelt("merge -q " + quote(work / "r.yml") + " " + quote(work / "out"));
  };
  auto cycle =
      run(fmt::format("name: one\nmodels:\n  - model: two\n  - model: {}\nmerge_method: linear\n"
                      "parameters: {{weight: 1}}\n---\nname: two\nmodels:\n  - model: one\n"
                      "  - model: {}\nmerge_method: linear\nparameters: {{weight: 1}}\n---\n"
                      "models:\n  - model: two\nmerge_method: passthrough\n",
                      a, b));
  EXPECT_NE(cycle.exit_code, 0);
  EXPECT_HAS(cycle.output, "cycle");
  auto dup = run(stage1(a, b) + "---\n" + stage1(a, b) +
                 "---\nmodels:\n  - model: first\n"
                 "merge_method: passthrough\n");
  EXPECT_NE(dup.exit_code, 0);
  EXPECT_HAS(dup.output, "'first' is used by another document");
  auto unknown = run(stage1(a, b) + "---\nmodels:\n  - model: frist\nmerge_method: passthrough\n");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_HAS(unknown.output, "models[0].model");
  EXPECT_HAS(unknown.output, "not the name of an earlier stage");
  EXPECT_FALSE(fs::exists(work / "out"));
}

}  // namespace
}  // namespace smelt
