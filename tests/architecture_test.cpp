// Architecture inference: layer stacks from names, the family data table, tied heads, and
// vision-language models whose vision tower is copied from the base.
#include "smelt/plan/architecture.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace smelt::plan {
namespace {

using testing::quote;
using testing::TempDir;

TEST(Architecture, LayerNamesSplitAtTheFirstNumericComponent) {
  auto l = parse_layer_name("model.layers.12.self_attn.q_proj.weight");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->prefix, "model.layers");
  EXPECT_EQ(l->index, 12);
  EXPECT_EQ(l->suffix, "self_attn.q_proj.weight");
  EXPECT_EQ(layer_tensor_name(*l, 3), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_FALSE(parse_layer_name("model.norm.weight"));
  EXPECT_FALSE(parse_layer_name("lm_head.weight"));
}

TEST(Architecture, EveryListedFamilyHasATableEntry) {
  const char* types[] = {
      "llama",       "mistral",    "mixtral",  "qwen2",       "qwen2_moe", "qwen3",   "qwen3_moe",
      "gemma",       "gemma2",     "gemma3",   "gemma3_text", "phi3",      "gpt2",    "gpt_neox",
      "falcon",      "starcoder2", "stablelm", "olmo2",       "cohere",    "granite", "deepseek_v2",
      "deepseek_v3", "bert",       "roberta",  "t5",          "whisper",   "llava"};
  for (const char* t : types) {
    const std::string cfg = fmt::format(R"({{"model_type": "{}", "architectures": ["X"]}})", t);
    EXPECT_FALSE(infer_architecture({"a.0.w"}, cfg).family.empty()) << t;
  }
  EXPECT_TRUE(infer_architecture({"a.0.w"}, R"({"model_type": "brand_new"})").family.empty());
}

TEST(Architecture, UnknownModelInfersTheLongestStackAndLayerKey) {
  std::vector<std::string> names = {"emb.weight", "blocks.0.w", "blocks.1.w",
                                    "blocks.2.w", "aux.0.w",    "final.weight"};
  auto a = infer_architecture(names, R"({"model_type": "novel", "n_layers": 3})");
  EXPECT_EQ(a.layer_prefix, "blocks");
  EXPECT_EQ(a.num_layers(), 3);
  EXPECT_EQ(a.layer_count_key, "n_layers");
  EXPECT_EQ(a.layers.layers_by_prefix.at("aux"), 1);
}

TEST(Architecture, TiedHeadsAndConfigFlag) {
  std::vector<std::string> names = {"model.embed_tokens.weight", "model.layers.0.w",
                                    "model.norm.weight"};
  auto tied = infer_architecture(names, R"({"model_type": "llama", "tie_word_embeddings": true})");
  EXPECT_TRUE(tied.tied_in_config);
  EXPECT_EQ(tied.tied_embedding("lm_head.weight", names), "model.embed_tokens.weight");
  EXPECT_EQ(tied.tied_embedding("model.norm.weight", names), "");
  // No flag in the config: a model without a head is tied.
  EXPECT_TRUE(infer_architecture(names, R"({"model_type": "llama"})").tied_in_config);
  names.push_back("lm_head.weight");
  EXPECT_FALSE(infer_architecture(names, R"({"model_type": "llama"})").tied_in_config);
  auto gpt2 = infer_architecture({"transformer.wte.weight", "transformer.h.0.w"},
                                 R"({"model_type": "gpt2"})");
  EXPECT_TRUE(gpt2.is_embedding("transformer.wte.weight"));
  EXPECT_EQ(gpt2.layer_count_key, "");  // n_layer absent from this config
}

TEST(Architecture, Gemma3MultimodalUsesTheLanguageStack) {
  std::vector<std::string> names = {"language_model.model.embed_tokens.weight",
                                    "language_model.model.layers.0.mlp.up_proj.weight",
                                    "language_model.model.layers.1.mlp.up_proj.weight",
                                    "language_model.model.norm.weight",
                                    "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                                    "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight",
                                    "vision_tower.vision_model.encoder.layers.2.mlp.fc1.weight",
                                    "multi_modal_projector.mm_input_projection_weight"};
  auto a = infer_architecture(
      names,
      R"({"model_type": "gemma3", "text_config": {"num_hidden_layers": 2, "vocab_size": 10}})");
  EXPECT_EQ(a.family, "gemma3");
  EXPECT_EQ(a.layer_prefix, "language_model.model.layers");  // not the longer vision stack
  EXPECT_EQ(a.layer_count_key, "text_config.num_hidden_layers");
  EXPECT_EQ(a.vocab_size_key, "text_config.vocab_size");
  EXPECT_TRUE(a.copy_from_base("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"));
  EXPECT_TRUE(a.copy_from_base("multi_modal_projector.mm_input_projection_weight"));
  EXPECT_TRUE(a.is_embedding("language_model.model.embed_tokens.weight"));
  EXPECT_TRUE(a.is_post_weight("language_model.model.norm.weight"));
}

// A tiny LLaVA-style model: language model + vision tower + projector.
void write_llava(const std::filesystem::path& dir, float value) {
  std::filesystem::create_directories(dir);
  nlohmann::json cfg = {
      {"architectures", {"LlavaForConditionalGeneration"}},
      {"model_type", "llava"},
      {"text_config", {{"num_hidden_layers", 2}, {"vocab_size", 8}, {"model_type", "llama"}}}};
  testing::write_bytes(dir / "config.json", cfg.dump());
  std::vector<io::TensorSpec> specs;
  for (const char* n :
       {"language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.mlp.up_proj.weight",
        "language_model.model.layers.1.mlp.up_proj.weight", "language_model.model.norm.weight",
        "language_model.lm_head.weight", "vision_tower.vision_model.encoder.layers.0.fc.weight",
        "multi_modal_projector.linear_1.weight"}) {
    specs.push_back({n, DType::kF32, {8, 4}});
  }
  io::SafetensorsWriter w(dir / "model.safetensors", specs, {});
  std::vector<float> v(32, value);
  for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, v.data(), 128);
  w.finish();
}

TEST(Architecture, VisionTowerIsCopiedFromTheBaseUnlessTheConfigAddressesIt) {
  TempDir dir;
  write_llava(dir / "base", 1.0f);
  write_llava(dir / "ft", 3.0f);
  auto merge = [&](const std::string& extra, const std::string& out) {
    testing::write_bytes(dir / "c.yml",
                         fmt::format("models:\n  - model: {}\n    parameters:\n      weight: 1\n{}"
                                     "base_model: {}\nmerge_method: task_arithmetic\n",
                                     (dir / "ft").string(), extra, (dir / "base").string()));
    auto r = testing::run_smelt("merge -q " + quote(dir / "c.yml") + " " + quote(dir / out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return io::Model::open((dir / out).string());
  };
  auto value = [](const io::Model& m, const std::string& name) {
    auto t = m.find(name);
    float v = -1;
    if (t.info) t.file->read(*t.info, 0, &v, 4);
    return v;
  };
  auto out = merge("", "o1");
  EXPECT_EQ(value(*out, "language_model.model.layers.1.mlp.up_proj.weight"), 3.0f);
  EXPECT_EQ(value(*out, "vision_tower.vision_model.encoder.layers.0.fc.weight"), 1.0f);
  EXPECT_EQ(value(*out, "multi_modal_projector.linear_1.weight"), 1.0f);
  // A filter naming the vision tower makes it part of the merge.
  auto out2 = merge("      density: [{filter: vision_tower, value: 1.0}, {value: 1.0}]\n", "o2");
  EXPECT_EQ(value(*out2, "vision_tower.vision_model.encoder.layers.0.fc.weight"), 3.0f);
  EXPECT_EQ(value(*out2, "multi_modal_projector.linear_1.weight"), 1.0f);
}

}  // namespace
}  // namespace smelt::plan
