// `modules: {default: ...}` (mergekit's own model cards write single-module configs this way):
// the same merge as its models/slices at the top level, with the module's parameters between the
// slices' and the top-level ones (docs/config.md, "Parameter resolution").
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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

TEST(ConfigModules, MultiModuleConfigsAreRefusedByName) {
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
  EXPECT_NE(r.output.find("modules text_decoder, vision_tower"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("modules: {default: ...}"), std::string::npos) << r.output;
}

}  // namespace
