// `modules: {default: ...}` (mergekit's own model cards write single-module configs this way):
// the same merge as its models/slices at the top level, with the module's parameters between the
// slices' and the top-level ones (docs/config.md, "Parameter resolution").
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using smelt::testing::quote;
using smelt::testing::read_bytes;
using smelt::testing::run_command;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

const fs::path kZoo = fs::path(SMELT_SOURCE_DIR) / "examples" / "zoo";

// The tensor data of a merge's model.safetensors (its header's metadata records the config).
std::string merge_data(const TempDir& dir, const std::string& name, const std::string& yaml) {
  write_bytes(dir / (name + ".yml"), yaml);
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " merge -q " + quote(dir / (name + ".yml")) +
                       " " + quote(dir / name));
  EXPECT_EQ(r.exit_code, 0) << name << ": " << r.output;
  const std::string bytes = read_bytes(dir / name / "model.safetensors");
  if (bytes.size() < 8) return "";
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(bytes[i]);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  header.erase("__metadata__");
  return header.dump() + bytes.substr(8 + n);
}

TEST(ConfigModules, DefaultModuleMergesAsTheTopLevelForm) {
  TempDir dir;
  const std::string add = (kZoo / "ft-add").string(), rev = (kZoo / "ft-rev").string();
  const std::string slices = fmt::format(
      "slices:\n"
      "  - sources:\n"
      "      - model: {0}\n        layer_range: [0, 4]\n        parameters: {{weight: 0.7}}\n"
      "      - model: {1}\n        layer_range: [0, 4]\n",
      add, rev);
  const std::string top = merge_data(
      dir, "top", "merge_method: linear\nparameters: {weight: 0.3}\ndtype: float32\n" + slices);
  // The same slices under modules.default, indented one level deeper.
  std::string indented;
  for (size_t i = 0, j; i < slices.size(); i = j + 1) {
    j = slices.find('\n', i);
    indented += "    " + slices.substr(i, j - i) + "\n";
  }
  const std::string module = merge_data(
      dir, "module",
      "merge_method: linear\nparameters: {weight: 0.3}\ndtype: float32\nmodules:\n  default:\n" +
          indented);
  EXPECT_FALSE(top.empty());
  EXPECT_TRUE(top == module);

  // Module parameters sit above the top-level ones: weight 0.3 at the module beats the top
  // level's 0.9, and gives the merge above.
  const std::string above = merge_data(
      dir, "above",
      "merge_method: linear\nparameters: {weight: 0.9}\ndtype: float32\nmodules:\n  default:\n"
      "    parameters: {weight: 0.3}\n" +
          indented);
  EXPECT_TRUE(above == top);
  // A module filter list with no match for a tensor falls through to the top level.
  const std::string through = merge_data(
      dir, "through",
      "merge_method: linear\nparameters: {weight: 0.3}\ndtype: float32\nmodules:\n  default:\n"
      "    parameters:\n      weight:\n        - filter: no_such_tensor\n          value: 5\n" +
          indented);
  EXPECT_TRUE(through == top);
  // And a different module value really changes the merge (the comparisons above can fail).
  const std::string other = merge_data(
      dir, "other",
      "merge_method: linear\nparameters: {weight: 0.3}\ndtype: float32\nmodules:\n  default:\n"
      "    parameters: {weight: 0.6}\n" +
          indented);
  EXPECT_FALSE(other == top);

  // The models: form too.
  const std::string models = fmt::format(
      "  - model: {}\n    parameters: {{weight: 0.7}}\n  - model: {}\n    parameters: {{weight: "
      "0.3}}\n",
      add, rev);
  const std::string m_top =
      merge_data(dir, "mtop", "merge_method: linear\ndtype: float32\nmodels:\n" + models);
  std::string m_indented;
  for (size_t i = 0, j; i < models.size(); i = j + 1) {
    j = models.find('\n', i);
    m_indented += "    " + models.substr(i, j - i) + "\n";
  }
  const std::string m_module = merge_data(
      dir, "mmodule",
      "merge_method: linear\ndtype: float32\nmodules:\n  default:\n    models:\n" + m_indented);
  EXPECT_TRUE(m_top == m_module);
}

TEST(ConfigModules, ModulesAModelDoesNotHaveAreRefusedByName) {
  TempDir dir;
  const std::string add = (kZoo / "ft-add").string();
  write_bytes(dir / "m.yml",
              fmt::format("merge_method: linear\nmodules:\n  text_decoder:\n    models:\n"
                          "      - model: {0}\n        parameters: {{weight: 1}}\n"
                          "  vision_tower:\n    models:\n      - model: {0}\n"
                          "        parameters: {{weight: 1}}\n",
                          add));
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " plan " + quote(dir / "m.yml"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("modules.text_decoder: module 'text_decoder' matches no tensor"),
            std::string::npos)
      << r.output;
}

// A LLaVA-shaped vision-language model: a text decoder (2 layers), a vision tower (2 layers) and
// a projector, with values from `seed`.
void make_vlm(const fs::path& dir, uint32_t seed) {
  fs::create_directories(dir);
  write_bytes(dir / "config.json", R"({"architectures": ["LlavaForConditionalGeneration"],
    "model_type": "llava", "text_config": {"model_type": "llama", "num_hidden_layers": 2,
    "vocab_size": 12, "hidden_size": 4}, "vision_config": {"num_hidden_layers": 2}})");
  std::vector<smelt::io::TensorSpec> specs = {
      {"language_model.model.embed_tokens.weight", smelt::DType::kF32, {12, 4}},
      {"language_model.model.layers.0.mlp.up_proj.weight", smelt::DType::kF32, {4, 4}},
      {"language_model.model.layers.1.mlp.up_proj.weight", smelt::DType::kF32, {4, 4}},
      {"language_model.model.norm.weight", smelt::DType::kF32, {4}},
      {"language_model.lm_head.weight", smelt::DType::kF32, {12, 4}},
      {"vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", smelt::DType::kF32, {3, 3}},
      {"vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight", smelt::DType::kF32, {3, 3}},
      {"vision_tower.vision_model.post_layernorm.weight", smelt::DType::kF32, {3}},
      {"multi_modal_projector.linear_1.weight", smelt::DType::kF32, {4, 3}},
  };
  smelt::io::SafetensorsWriter w(dir / "model.safetensors", specs, {});
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<float> v(specs[i].nbytes() / 4);
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(seed * 1000 + i * 50 + k);
    w.write(i, 0, v.data(), v.size() * 4);
  }
  w.finish();
}

std::vector<float> floats(const fs::path& model, const std::string& name) {
  auto m = smelt::io::Model::open(model.string());
  auto t = m->find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return {};
  std::vector<float> v(t.info->numel());
  t.file->read(*t.info, 0, v.data(), v.size() * 4);
  return v;
}

TEST(ConfigModules, EachModuleMergesItsOwnTensorsWithItsOwnModelsAndSlices) {
  TempDir dir;
  make_vlm(dir / "a", 1);
  make_vlm(dir / "b", 2);
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  write_bytes(dir / "m.yml",
              fmt::format("merge_method: linear\ndtype: float32\nparameters: {{weight: 1}}\n"
                          "modules:\n"
                          "  text_decoder:\n    models:\n"
                          "      - model: {0}\n        parameters: {{weight: 0.25}}\n"
                          "      - model: {1}\n        parameters: {{weight: 0.75}}\n"
                          "  vision_tower:\n    slices:\n"
                          "      - sources: [{{model: {1}, layer_range: [1, 2]}}]\n"
                          "      - sources: [{{model: {0}, layer_range: [0, 2]}}]\n"
                          "  multi_modal_projector:\n    models:\n      - model: {1}\n",
                          a, b));
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " merge -q " + quote(dir / "m.yml") + " " +
                       quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path out = dir / "out";
  for (const char* name :
       {"language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.mlp.up_proj.weight", "language_model.lm_head.weight"}) {
    auto o = floats(out, name), x = floats(dir / "a", name), y = floats(dir / "b", name);
    ASSERT_EQ(o.size(), x.size());
    for (size_t i = 0; i < o.size(); ++i) EXPECT_FLOAT_EQ(o[i], 0.25f * x[i] + 0.75f * y[i]);
  }
  const std::string fc1 = "vision_tower.vision_model.encoder.layers.{}.mlp.fc1.weight";
  EXPECT_EQ(floats(out, fmt::format(fmt::runtime(fc1), 0)),
            floats(dir / "b", fmt::format(fmt::runtime(fc1), 1)));
  EXPECT_EQ(floats(out, fmt::format(fmt::runtime(fc1), 1)),
            floats(dir / "a", fmt::format(fmt::runtime(fc1), 0)));
  EXPECT_EQ(floats(out, fmt::format(fmt::runtime(fc1), 2)),
            floats(dir / "a", fmt::format(fmt::runtime(fc1), 1)));
  EXPECT_EQ(floats(out, "multi_modal_projector.linear_1.weight"),
            floats(dir / "b", "multi_modal_projector.linear_1.weight"));
  const auto config = nlohmann::json::parse(read_bytes(out / "config.json"));
  EXPECT_EQ(config["vision_config"]["num_hidden_layers"], 3);
  EXPECT_EQ(config["text_config"]["num_hidden_layers"], 2);

  // Leaving a module out would leave its tensors out of the model: refused before any work.
  write_bytes(dir / "partial.yml",
              fmt::format("merge_method: linear\nparameters: {{weight: 1}}\nmodules:\n"
                          "  text_decoder:\n    models:\n      - model: {0}\n"
                          "  vision_tower:\n    models:\n      - model: {0}\n",
                          a));
  r = run_command(quote(fs::path(SMELT_BIN)) + " merge -q " + quote(dir / "partial.yml") + " " +
                  quote(dir / "out2"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("belong to none of the modules (text_decoder, vision_tower), e.g. "
                          "'multi_modal_projector.linear_1.weight'"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "out2"));
}

}  // namespace
