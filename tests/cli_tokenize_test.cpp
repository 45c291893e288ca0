// End-to-end tests of `smelt tokenize` through the binary, on a SentencePiece model trained in the
// test by libsentencepiece's Python binding (tests/reference/sentencepiece_ref.py).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::quote;
using testing::run_command;
using testing::run_smelt;
using testing::TempDir;

class CliTokenize : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>();
    const fs::path src = SMELT_SOURCE_DIR;
    const fs::path out = dir_->path() / "reference.json";
    auto r = run_command("/usr/bin/python3 " + quote(src / "tests/reference/sentencepiece_ref.py") +
                         " " + quote(dir_->path()) + " " +
                         quote(src / "tests/data/tokenizer_corpus.txt") + " > " + quote(out));
    if (r.exit_code != 0) {
      setup_error_ =
          "the reference needs /usr/bin/python3 with sentencepiece (Debian: "
          "python3-sentencepiece; scripts/setup.sh installs it):\n" +
          r.output;
      return;
    }
    ref_ = json::parse(testing::read_bytes(out)).at("bpe");
  }
  static void TearDownTestSuite() { dir_.reset(); }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  // A reference line with a tab and a non-ASCII letter (so escaping and byte pieces show).
  static const json& line_with_tab() {
    for (const auto& l : ref_.at("lines")) {
      const std::string t = l.at("text");
      if (t.find('\t') != std::string::npos && t.find("é") != std::string::npos) return l;
    }
    throw std::runtime_error("no corpus line with a tab and an é");
  }

  static std::unique_ptr<TempDir> dir_;
  static json ref_;
  static std::string setup_error_;
};
std::unique_ptr<TempDir> CliTokenize::dir_;
json CliTokenize::ref_;
std::string CliTokenize::setup_error_;

TEST_F(CliTokenize, JsonIdsAndTokensEqualTheLibrarys) {
  const json& line = line_with_tab();
  const std::string text = line.at("text");
  const fs::path model = dir_->path() / "bpe";
  testing::write_bytes(dir_->path() / "text.txt", text);
  auto r = run_smelt("tokenize --json --no-special " + quote(model) + " --file " +
                     quote(dir_->path() / "text.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json got = json::parse(r.output);
  EXPECT_EQ(got.at("ids"), line.at("ids"));
  EXPECT_EQ(got.at("tokens"), line.at("pieces"));

  // With special tokens (the default): the library's ids after BOS.
  r = run_smelt("tokenize --json " + quote(model / "tokenizer.model") + " --file " +
                quote(dir_->path() / "text.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json with_bos = json::array({ref_.at("bos")});
  for (const auto& id : line.at("ids")) with_bos.push_back(id);
  EXPECT_EQ(json::parse(r.output).at("ids"), with_bos);
}

TEST_F(CliTokenize, HumanOutputMarksSpecialTokensAndEscapesDecodedText) {
  const std::string model = quote(dir_->path() / "bpe");
  const std::string text = "\"$(printf 'caf\\303\\251\\tbar\\033[31m')\"";
  auto r = run_smelt("tokenize " + model + " " + text);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("<s>  (special)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("<0x09>"), std::string::npos) << r.output;  // the tab: byte fallback
  EXPECT_NE(r.output.find("tokens (sentencepiece tokenizer, vocabulary of " +
                          std::to_string(ref_.at("vocab_size").get<int>()) + ")"),
            std::string::npos)
      << r.output;

  // Decoded back, the tab and the ESC are shown as escapes, never sent to the terminal.
  auto js = run_smelt("tokenize --json " + model + " " + text);
  ASSERT_EQ(js.exit_code, 0) << js.output;
  const json encoded = json::parse(js.output);
  std::string ids;
  for (const auto& id : encoded.at("ids")) ids += " " + std::to_string(id.get<int>());
  r = run_smelt("tokenize " + model + " --decode" + ids);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "café\\tbar\\x1b[31m\n");
}

TEST_F(CliTokenize, DecodeGivesTheLibrarysText) {
  const json& line = line_with_tab();
  std::string ids;
  for (const auto& id : line.at("ids")) ids += " " + std::to_string(id.get<int>());
  auto r = run_smelt("tokenize --json " + quote(dir_->path() / "bpe") + " --decode" + ids);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json::parse(r.output).at("text"), line.at("decoded"));
}

TEST_F(CliTokenize, UserErrorsAreMessagesNotCrashes) {
  TempDir empty;
  auto r = run_smelt("tokenize " + quote(empty.path()) + " hello");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no tokenizer.json or tokenizer.model"), std::string::npos) << r.output;

  testing::write_bytes(empty / "tokenizer.model", "not a model");
  r = run_smelt("tokenize " + quote(empty.path()) + " hello");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find((empty / "tokenizer.model").string()), std::string::npos) << r.output;

  r = run_smelt("tokenize " + quote(dir_->path() / "bpe"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("nothing to tokenize"), std::string::npos) << r.output;

  r = run_smelt("tokenize " + quote(dir_->path() / "bpe") + " --decode 999999");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("out of range"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace smelt
