// `chat_template:` (docs/config.md, "Chat templates"): built-in names, `auto`, literal templates
// checked for Jinja structure, written to the output's tokenizer_config.json and to a GGUF
// export's tokenizer.chat_template.
#include "smelt/plan/chat_template.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using smelt::plan::builtin_chat_template;
using smelt::plan::check_chat_template;
using smelt::plan::resolve_chat_template;
using smelt::testing::quote;
using smelt::testing::read_bytes;
using smelt::testing::run_command;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const smelt::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, BuiltinsAreValidAndCarryTheirMarkers) {
  const std::pair<const char*, const char*> markers[] = {{"alpaca", "### Instruction:"},
                                                         {"chatml", "<|im_start|>"},
                                                         {"llama3", "<|start_header_id|>"},
                                                         {"mistral", "[INST]"},
                                                         {"exaone", "[|assistant|]"}};
  for (const auto& [name, marker] : markers) {
    const auto t = builtin_chat_template(name);
    ASSERT_TRUE(t) << name;
    EXPECT_NE(t->find(marker), std::string::npos) << name;
    EXPECT_EQ(error_of([&] { check_chat_template(*t); }), "") << name;
    EXPECT_EQ(resolve_chat_template(name, {}), t);
  }
  EXPECT_FALSE(builtin_chat_template("vicuna"));
}

TEST(ChatTemplate, JinjaStructureErrorsSayWhere) {
  EXPECT_EQ(error_of([] { check_chat_template("{% for m in messages %}{{ m }}{% endfor %}"); }),
            "");
  EXPECT_EQ(
      error_of([] { check_chat_template("{%- if a -%}x{%- elif b %}y{% else %}z{% endif %}"); }),
      "");
  EXPECT_EQ(error_of([] { check_chat_template("{% set x = 1 %}{% raw %}{% if %}{% endraw %}"); }),
            "");
  const auto unclosed = error_of([] { check_chat_template("ab\n{{ messages"); });
  EXPECT_NE(unclosed.find("line 2, column 1"), std::string::npos) << unclosed;
  const auto no_end = error_of([] { check_chat_template("{% for m in messages %}{{ m }}"); });
  EXPECT_NE(no_end.find("endfor"), std::string::npos) << no_end;
  const auto wrong = error_of([] { check_chat_template("{% if a %}{% endfor %}"); });
  EXPECT_NE(wrong.find("does not close"), std::string::npos) << wrong;
  EXPECT_NE(error_of([] { check_chat_template("{% else %}"); }).find("not inside an if"),
            std::string::npos);
  EXPECT_NE(error_of([] { check_chat_template("{% endif %}"); }).find("closes nothing"),
            std::string::npos);
  // A bare word that is no built-in is a misspelt name, not a template.
  const auto name = error_of([] { resolve_chat_template("chatlm", {}); });
  EXPECT_NE(name.find("did you mean 'chatml'"), std::string::npos) << name;
  EXPECT_NE(error_of([] { resolve_chat_template("{% for m in x %}", {}); }).find("not valid Jinja"),
            std::string::npos);
}

TEST(ChatTemplate, AutoTakesTheMostCommonTemplateOfTheInputs) {
  TempDir dir;
  auto model = [&](const std::string& name, const std::string& tmpl) {
    fs::create_directories(dir / name);
    nlohmann::json j = {{"model_max_length", 64}};
    if (!tmpl.empty()) j["chat_template"] = tmpl;
    write_bytes(dir / name / "tokenizer_config.json", j.dump());
    return dir / name;
  };
  const auto a = model("a", "{{ 'A' }}"), b = model("b", "{{ 'B' }}"),
             b2 = model("b2", "{{ 'B' }}"), none = model("none", "");
  EXPECT_EQ(resolve_chat_template("auto", {a, b, none, b2}), "{{ 'B' }}");
  EXPECT_EQ(resolve_chat_template("auto", {a, b}), "{{ 'A' }}") << "a tie: the first";
  EXPECT_EQ(resolve_chat_template("auto", {none}), std::nullopt);
  // A list of named templates: the "default" one; chat_template.jinja when the config has none.
  fs::create_directories(dir / "list");
  write_bytes(dir / "list" / "tokenizer_config.json",
              R"({"chat_template": [{"name": "tool_use", "template": "{{ 'T' }}"},
                                     {"name": "default", "template": "{{ 'D' }}"}]})");
  EXPECT_EQ(smelt::plan::model_chat_template(dir / "list"), "{{ 'D' }}");
  write_bytes(dir / "none" / "chat_template.jinja", "{{ 'J' }}");
  EXPECT_EQ(smelt::plan::model_chat_template(dir / "none"), "{{ 'J' }}");
}

// A merge with chat_template: chatml writes it into tokenizer_config.json; a GGUF export carries
// it as tokenizer.chat_template; a bad name fails before anything is written.
TEST(ChatTemplate, MergeWritesTheTemplateWhereTransformersAndLlamaCppReadIt) {
  TempDir dir;
  const fs::path zoo = fs::path(SMELT_SOURCE_DIR) / "examples" / "zoo";
  const std::string models = fmt::format(
      "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n"
      "  - model: {}\n    parameters: {{weight: 1}}\n",
      (zoo / "ft-add").string(), (zoo / "ft-rev").string());
  write_bytes(dir / "c.yml", models + "chat_template: chatml\n");
  auto r = run_command(quote(fs::path(SMELT_BIN)) + " merge -q " + quote(dir / "c.yml") + " " +
                       quote(dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto tc = nlohmann::json::parse(read_bytes(dir / "out" / "tokenizer_config.json"));
  EXPECT_EQ(tc.at("chat_template"), *builtin_chat_template("chatml"));
  r = run_command(quote(fs::path(SMELT_BIN)) + " merge -q " + quote(dir / "c.yml") + " " +
                  quote(dir / "out.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto gguf = smelt::io::GgufFile::open(dir / "out.gguf");
  const smelt::io::GgufValue* v = gguf->find_kv("tokenizer.chat_template");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->as_string(), *builtin_chat_template("chatml"));

  write_bytes(dir / "bad.yml", models + "chat_template: chatlm\n");
  r = run_command(quote(fs::path(SMELT_BIN)) + " merge " + quote(dir / "bad.yml") + " " +
                  quote(dir / "bad"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("chat_template: 'chatlm'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "bad"));
}

}  // namespace
