// The tokenizer.json engine against Hugging Face's reference library (the `tokenizers` Node
// binding pinned in tests/node): tokenizers of each style real models use are built in the test
// (tests/node/make_tokenizers.mjs), and every line of tests/data/tokenizer_corpus.txt, and the
// whole file, must encode to the reference's ids and tokens, with and without special tokens,
// and decode to the reference's text. Without tests/node/node_modules/tokenizers the suite fails
// (SMELT_SKIP_NODE_TESTS=1 skips it instead).
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "smelt/tokenizer/tokenizer.h"
#include "test_util.h"

namespace smelt::tok {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::quote;
using testing::run_command;
using testing::TempDir;

const char* const kStyles[] = {"gpt2", "llama3", "llama2", "mistral", "unigram", "wordpiece"};

bool skip_node_tests() {
  const char* v = std::getenv("SMELT_SKIP_NODE_TESTS");
  return v != nullptr && std::string(v) == "1";
}

fs::path node_dir() { return fs::path(SMELT_SOURCE_DIR) / "tests" / "node"; }
fs::path corpus_path() {
  return fs::path(SMELT_SOURCE_DIR) / "tests" / "data" / "tokenizer_corpus.txt";
}

// Why the reference library cannot run here, or "" when it can.
std::string reference_missing() {
  if (!fs::exists(node_dir() / "node_modules" / "tokenizers" / "index.js")) {
    return "tests/node/node_modules/tokenizers is missing: run scripts/setup.sh (npm ci in "
           "tests/node), or set SMELT_SKIP_NODE_TESTS=1 to skip the reference tests";
  }
  auto r =
      run_command(testing::node_command() +
                  " -e 'process.exit(+process.versions.node.split(\".\")[0] >= 20 ? 0 : 1)'");
  if (r.exit_code != 0)
    return "node >= 20 is not installed (scripts/setup.sh installs it): " + r.output;
  return "";
}

// Each test builds its style's tokenizer and the reference's encodings of the corpus (ctest runs
// every test in its own process, so nothing is built that the test does not use).
class TokRefJson : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() {
    if (skip_node_tests()) return;
    setup_error_ = reference_missing();
    if (setup_error_.empty()) dir_ = std::make_unique<TempDir>();
  }
  static void TearDownTestSuite() { dir_.reset(); }
  void SetUp() override {
    if (skip_node_tests()) GTEST_SKIP() << "SMELT_SKIP_NODE_TESTS=1";
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }

  // Writes `style`'s tokenizer.json under dir_ and returns the reference's encodings.
  static json make_reference(const std::string& style) {
    const fs::path err = dir_->path() / "stderr.txt";
    auto made = run_command(testing::node_command() + " " + quote(node_dir() / "make_tokenizers.mjs") + " " +
                            quote(dir_->path()) + " " + quote(corpus_path()) + " " + style + " 2>" +
                            quote(err));
    if (made.exit_code != 0) {
      throw std::runtime_error("make_tokenizers.mjs failed:\n" + made.output +
                               testing::read_bytes(err));
    }
    const fs::path out = dir_->path() / (style + ".json");
    auto r = run_command(testing::node_command() + " " + quote(node_dir() / "tokenize.mjs") + " corpus " +
                         quote(dir_->path() / style / "tokenizer.json") + " " +
                         quote(corpus_path()) + " > " + quote(out) + " 2>" + quote(err));
    if (r.exit_code != 0) {
      throw std::runtime_error("tokenize.mjs failed for " + style + ":\n" +
                               testing::read_bytes(err));
    }
    return json::parse(testing::read_bytes(out));
  }

  static std::unique_ptr<TempDir> dir_;
  static std::string setup_error_;
};
std::unique_ptr<TempDir> TokRefJson::dir_;
std::string TokRefJson::setup_error_;

// Compares smelt with one reference record ({ids, tokens, ids_plain, decoded, decoded_skip,
// decoded_plain}); returns "" or what differs.
std::string compare(const Tokenizer& t, const std::string& text, const json& want) {
  std::string diff;
  auto ids_text = [](const std::vector<int32_t>& v) { return json(v).dump(); };
  // Invalid UTF-8 in smelt's output is shown as U+FFFD rather than throwing.
  auto show = [](const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); };
  const Encoding with = t.encode(text, {.add_special_tokens = true});
  const Encoding plain = t.encode(text, {.add_special_tokens = false});
  const auto want_ids = want.at("ids").get<std::vector<int32_t>>();
  const auto want_plain = want.at("ids_plain").get<std::vector<int32_t>>();
  if (with.ids != want_ids)
    diff += "  ids " + ids_text(with.ids) + "\n  want " + ids_text(want_ids) + "\n";
  if (plain.ids != want_plain) {
    diff += "  ids without special tokens " + ids_text(plain.ids) + "\n  want " +
            ids_text(want_plain) + "\n";
  }
  if (with.ids == want_ids && with.tokens != want.at("tokens").get<std::vector<std::string>>()) {
    diff += "  tokens " + show(with.tokens) + "\n  want " + show(want.at("tokens")) + "\n";
  }
  const std::pair<std::string, std::string> decodes[] = {
      {t.decode(with.ids), want.at("decoded")},
      {t.decode(with.ids, {.skip_special_tokens = true}), want.at("decoded_skip")},
      {t.decode(plain.ids), want.at("decoded_plain")},
  };
  const char* names[] = {"decode", "decode skipping special tokens",
                         "decode without special tokens"};
  for (int i = 0; i < 3; ++i) {
    if (decodes[i].first != decodes[i].second) {
      diff += std::string("  ") + names[i] + " " + show(decodes[i].first) + "\n  want " +
              show(decodes[i].second) + "\n";
    }
  }
  return diff;
}

TEST_P(TokRefJson, EveryLineAndTheWholeCorpusMatchTheReference) {
  const std::string style = GetParam();
  json ref;
  try {
    ref = make_reference(style);
  } catch (const std::exception& e) {
    FAIL() << e.what();
  }
  std::unique_ptr<Tokenizer> t;
  try {
    t = Tokenizer::load(dir_->path() / style);
  } catch (const std::exception& e) {
    FAIL() << "loading the " << style << " tokenizer: " << e.what();
  }
  EXPECT_EQ(t->kind(), "tokenizer.json");
  EXPECT_EQ(t->vocab_size(), ref.at("vocab_size").get<size_t>());
  size_t lines = 0, differing = 0;
  std::string report;
  for (const auto& line : ref.at("lines")) {
    const std::string text = line.at("text");
    ++lines;
    std::string diff;
    try {
      diff = compare(*t, text, line);
    } catch (const std::exception& e) {
      diff = std::string("  threw: ") + e.what() + "\n";
    }
    if (diff.empty()) continue;
    if (++differing <= 5) report += "line " + json(text).dump() + ":\n" + diff;
  }
  EXPECT_GT(lines, 200u);
  EXPECT_EQ(differing, 0u) << differing << " of " << lines << " lines differ; the first:\n"
                           << report;
  const std::string corpus = testing::read_bytes(corpus_path());
  EXPECT_EQ(compare(*t, corpus, ref.at("whole")), "") << "the whole corpus differs";
}

INSTANTIATE_TEST_SUITE_P(TokRef, TokRefJson, ::testing::ValuesIn(kStyles),
                         [](const auto& info) { return std::string(info.param); });

// The corpus covers what the styles must handle: special-token strings inside the text, several
// scripts, emoji with joiners, long digit runs, tabs and space runs.
TEST(TokRefCorpus, CoversTheHardCases) {
  const std::string corpus = testing::read_bytes(corpus_path());
  EXPECT_GE(corpus.size(), 10000u);
  for (const char* s :
       {"<|endoftext|>", "<s>", "[CLS]", "<|im_start|>", "é", "東京", "مرحبا", "नमस्ते",
        "👨‍👩‍👧‍👦", "123456789012345678901234567890", "\t\t", "     ", "def "}) {
    EXPECT_NE(corpus.find(s), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace smelt::tok
