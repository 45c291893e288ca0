// The tokenizer.json engine against Hugging Face's reference library (the `tokenizers` Node
// binding pinned in tests/node): tokenizers of each style real models use are built in the test
// (tests/node/make_tokenizers.mjs), and every line of tests/data/tokenizer_corpus.txt, and the
// whole file, must encode to the reference's ids and tokens, with and without special tokens,
// and decode to the reference's text. Without tests/node/node_modules/tokenizers the suite fails
// (SMELT_SKIP_NODE_TESTS=1 skips it instead).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "smelt/tokenizer/tokenizer.h"
#include "smelt/tokenizer/tokenizer_json.h"
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
  auto r = run_command(testing::node_command() +
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
    auto made = run_command(testing::node_command() + " " +
                            quote(node_dir() / "make_tokenizers.mjs") + " " + quote(dir_->path()) +
                            " " + quote(corpus_path()) + " " + style + " 2>" + quote(err));
    if (made.exit_code != 0) {
      throw std::runtime_error("make_tokenizers.mjs failed:\n" + made.output +
                               testing::read_bytes(err));
    }
    const fs::path out = dir_->path() / (style + ".json");
    auto r = run_command(testing::node_command() + " " + quote(node_dir() / "tokenize.mjs") +
                         " corpus " + quote(dir_->path() / style / "tokenizer.json") + " " +
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

// A tokenizer edited by smelt (ids stripped, tokens added) and saved loads in the reference
// library, which encodes the added tokens to the ids smelt gave them and agrees with smelt on
// text around them.
TEST_F(TokRefJson, AnEditedTokenizerSavedBySmeltLoadsInTheReference) {
  for (const std::string style : {"gpt2", "llama2"}) {
    SCOPED_TRACE(style);
    (void)make_reference(style);
    JsonTokenizer t(dir_->path() / style / "tokenizer.json", dir_->path() / style);
    const size_t before = t.vocab_size();
    // Strip the top of the model vocabulary (added tokens above it go too), then add tokens.
    const size_t keep = before - 40;
    t.truncate_vocab(keep);
    ASSERT_EQ(t.vocab_size(), keep);
    const std::vector<int32_t> ids =
        t.add_tokens({{.content = "<|im_start|>", .special = true, .normalized = false},
                      {.content = "<|im_end|>", .special = true, .normalized = false},
                      {.content = "smeltium", .special = false}});
    ASSERT_EQ(ids.size(), 3u);
    EXPECT_EQ(ids[0], static_cast<int32_t>(keep));
    const fs::path saved = dir_->path() / (style + "-edited");
    fs::create_directories(saved);
    t.save(saved);

    const std::vector<std::string> texts = {"<|im_start|>user hello<|im_end|>",
                                            "a smeltium alloy, 42 times", "plain text only"};
    std::string args;
    for (const auto& x : texts) args += " " + quote(x);
    const fs::path out = dir_->path() / (style + "-edited.json");
    auto r = run_command(testing::node_command() + " " + quote(node_dir() / "tokenize.mjs") +
                         " saved " + quote(saved) + args + " > " + quote(out));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const json ref = json::parse(testing::read_bytes(out));
    EXPECT_EQ(ref.at("vocab_size").get<size_t>(), keep + 3);
    std::map<std::string, int32_t> added;
    for (const auto& a : ref.at("added_tokens")) added[a.at("token")] = a.at("id");
    EXPECT_EQ(added["<|im_start|>"], ids[0]);
    EXPECT_EQ(added["<|im_end|>"], ids[1]);
    EXPECT_EQ(added["smeltium"], ids[2]);
    auto reloaded = Tokenizer::load(saved);
    for (size_t i = 0; i < texts.size(); ++i) {
      const json& want = ref.at("strings").at(i);
      EXPECT_EQ(reloaded->encode(texts[i]).ids, want.at("ids").get<std::vector<int32_t>>())
          << texts[i];
      EXPECT_EQ(t.encode(texts[i]).ids, want.at("ids").get<std::vector<int32_t>>()) << texts[i];
    }
    const auto first = ref.at("strings").at(0).at("ids").get<std::vector<int32_t>>();
    EXPECT_NE(std::find(first.begin(), first.end(), ids[0]), first.end());
    EXPECT_NE(std::find(first.begin(), first.end(), ids[1]), first.end());
    const auto second = ref.at("strings").at(1).at("ids").get<std::vector<int32_t>>();
    EXPECT_NE(std::find(second.begin(), second.end(), ids[2]), second.end());
    for (int32_t id : first) EXPECT_LT(id, static_cast<int32_t>(keep + 3));
  }
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
