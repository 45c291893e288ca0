// The SentencePiece engine against libsentencepiece's Python binding: models trained in the test
// (tests/reference/sentencepiece_ref.py) encode tests/data/tokenizer_corpus.txt to the same ids
// and pieces, decode to the same text, and BOS/EOS follow tokenizer_config.json.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/tokenizer/sentencepiece_model.h"
#include "smelt/tokenizer/tokenizer.h"
#include "test_util.h"

namespace smelt::tok {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::quote;
using testing::run_command;
using testing::TempDir;
using testing::write_bytes;

const char* const kPython = "/usr/bin/python3";  // Debian's, with python3-sentencepiece

// Models trained once for the suite, and the library's encodings of the corpus.
class TokSentencePiece : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>();
    const fs::path src = SMELT_SOURCE_DIR;
    const fs::path out = dir_->path() / "reference.json";
    auto r = run_command(std::string(kPython) + " " +
                         quote(src / "tests/reference/sentencepiece_ref.py") + " " +
                         quote(dir_->path()) + " " +
                         quote(src / "tests/data/tokenizer_corpus.txt") + " > " + quote(out));
    if (r.exit_code != 0) {
      setup_error_ = "the reference needs " + std::string(kPython) +
                     " with sentencepiece (Debian: python3-sentencepiece; scripts/setup.sh "
                     "installs it):\n" +
                     r.output;
      return;
    }
    ref_ = json::parse(testing::read_bytes(out));
  }
  static void TearDownTestSuite() { dir_.reset(); }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  static const json& ref(const char* model) { return ref_.at(model); }
  static fs::path model_path(const char* model) { return ref(model).at("path").get<std::string>(); }

  static std::unique_ptr<TempDir> dir_;
  static json ref_;
  static std::string setup_error_;
};
std::unique_ptr<TempDir> TokSentencePiece::dir_;
json TokSentencePiece::ref_;
std::string TokSentencePiece::setup_error_;

// Every line and the whole corpus: ids, pieces and decoded text equal the library's; with special
// tokens the ids gain exactly a leading BOS.
void expect_matches_library(const Tokenizer& t, const json& ref) {
  ASSERT_EQ(t.kind(), "sentencepiece");
  ASSERT_EQ(t.vocab_size(), ref.at("vocab_size").get<size_t>());
  const int32_t bos = ref.at("bos").get<int32_t>();
  const int32_t unk = ref.at("unk").get<int32_t>();
  size_t lines = 0, differing = 0;
  for (const auto& line : ref.at("lines")) {
    const std::string text = line.at("text");
    const auto want = line.at("ids").get<std::vector<int32_t>>();
    const Encoding plain = t.encode(text, {.add_special_tokens = false});
    ++lines;
    if (plain.ids != want) {
      ++differing;
      ADD_FAILURE() << "ids differ for line: " << text;
      continue;
    }
    EXPECT_EQ(plain.tokens, line.at("pieces").get<std::vector<std::string>>()) << text;
    EXPECT_EQ(t.decode(plain.ids), line.at("decoded").get<std::string>()) << text;
    const Encoding with = t.encode(text);
    ASSERT_EQ(with.ids.size(), want.size() + 1) << text;
    EXPECT_EQ(with.ids.front(), bos);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), with.ids.begin() + 1)) << text;
    // libsentencepiece decodes control pieces (BOS) to nothing; skipping special tokens also
    // drops <unk> (transformers counts it special), so compare only where there is none.
    EXPECT_EQ(t.decode(with.ids), line.at("decoded").get<std::string>());
    const bool has_unk = std::find(want.begin(), want.end(), unk) != want.end();
    if (!has_unk) {
      EXPECT_EQ(t.decode(with.ids, {.skip_special_tokens = true}),
                line.at("decoded").get<std::string>());
    }
  }
  EXPECT_GT(lines, 200u);
  EXPECT_EQ(differing, 0u);
  // Invalid UTF-8 is the library's business too (it reads such bytes as U+FFFD).
  for (const auto& raw : ref.at("raw")) {
    const std::string hex = raw.at("hex");
    std::string bytes;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
      bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    }
    EXPECT_EQ(t.encode(bytes, {.add_special_tokens = false}).ids,
              raw.at("ids").get<std::vector<int32_t>>())
        << hex;
  }
  const auto whole = ref.at("whole").at("ids").get<std::vector<int32_t>>();
  const std::string corpus =
      testing::read_bytes(fs::path(SMELT_SOURCE_DIR) / "tests/data/tokenizer_corpus.txt");
  EXPECT_EQ(t.encode(corpus, {.add_special_tokens = false}).ids, whole);
  EXPECT_EQ(t.decode(whole), ref.at("whole").at("decoded").get<std::string>());
}

TEST_F(TokSentencePiece, BpeWithByteFallbackMatchesLibrary) {
  auto t = Tokenizer::load(model_path("bpe"));
  expect_matches_library(*t, ref("bpe"));
}

TEST_F(TokSentencePiece, UnigramWithNormalizationMatchesLibrary) {
  auto t = Tokenizer::load(model_path("unigram"));
  expect_matches_library(*t, ref("unigram"));
  // The corpus has characters the model does not cover: they become <unk> (so the test above
  // checked the unknown path).
  const int32_t unk = ref("unigram").at("unk");
  bool saw_unk = false;
  for (const auto& line : ref("unigram").at("lines")) {
    for (const auto& id : line.at("ids")) saw_unk |= id.get<int32_t>() == unk;
  }
  EXPECT_TRUE(saw_unk);
}

TEST_F(TokSentencePiece, FolderLoadsTokenizerModelAndConfigDecidesBosEos) {
  const fs::path folder = dir_->path() / "bpe";
  const json& r = ref("bpe");
  const int32_t bos = r.at("bos"), eos = r.at("eos");
  const std::string text = "Hello wörld 123";
  auto plain = Tokenizer::load(folder)->encode(text, {.add_special_tokens = false}).ids;
  ASSERT_FALSE(plain.empty());

  write_bytes(folder / "tokenizer_config.json",
              R"({"add_bos_token": false, "add_eos_token": true})");
  auto t = Tokenizer::load(folder);
  auto ids = t->encode(text).ids;
  ASSERT_EQ(ids.size(), plain.size() + 1);
  EXPECT_EQ(ids.back(), eos);
  EXPECT_NE(ids.front(), bos);
  EXPECT_EQ(t->encode(text, {.add_special_tokens = false}).ids, plain);

  write_bytes(folder / "tokenizer_config.json",
              R"({"add_bos_token": true, "add_eos_token": true})");
  ids = Tokenizer::load(folder)->encode(text).ids;
  ASSERT_EQ(ids.size(), plain.size() + 2);
  EXPECT_EQ(ids.front(), bos);
  EXPECT_EQ(ids.back(), eos);

  write_bytes(folder / "tokenizer_config.json", R"({"add_bos_token": "yes"})");
  try {
    Tokenizer::load(folder);
    ADD_FAILURE() << "a non-boolean add_bos_token was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  fs::remove(folder / "tokenizer_config.json");
}

TEST_F(TokSentencePiece, ModelWithoutBosGetsNoneAndStillMatchesLibrary) {
  const json& r = ref("nobos");
  ASSERT_EQ(r.at("bos"), -1);
  auto t = Tokenizer::load(model_path("nobos"));
  for (const auto& line : r.at("lines")) {
    const std::string text = line.at("text");
    const auto want = line.at("ids").get<std::vector<int32_t>>();
    ASSERT_EQ(t->encode(text).ids, want) << text;
    ASSERT_EQ(t->encode(text, {.add_special_tokens = false}).ids, want) << text;
  }
  // EOS exists in this model: asking for it still adds it.
  const fs::path folder = dir_->path() / "nobos";
  testing::write_bytes(folder / "tokenizer_config.json", R"({"add_eos_token": true})");
  const auto ids = Tokenizer::load(folder)->encode("abc").ids;
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), r.at("eos").get<int32_t>());
  fs::remove(folder / "tokenizer_config.json");
}

TEST_F(TokSentencePiece, VocabularyLookupsAndSpecialPieces) {
  auto t = Tokenizer::load(model_path("bpe"));
  const json& r = ref("bpe");
  const int32_t bos = r.at("bos"), eos = r.at("eos"), unk = r.at("unk");
  EXPECT_TRUE(t->is_special(bos));
  EXPECT_TRUE(t->is_special(eos));
  EXPECT_TRUE(t->is_special(unk));
  EXPECT_EQ(t->id_to_token(bos), "<s>");
  EXPECT_EQ(t->token_to_id("</s>"), eos);
  // User-defined pieces are whole tokens, not special ones.
  const auto im_start = t->token_to_id("<|im_start|>");
  ASSERT_TRUE(im_start.has_value());
  EXPECT_FALSE(t->is_special(*im_start));
  EXPECT_EQ(t->encode("<|im_start|>", {.add_special_tokens = false}).ids,
            (std::vector<int32_t>{t->token_to_id("▁").value_or(-1), *im_start}));
  // Byte pieces and ordinary pieces are not special; unknown strings have no id.
  EXPECT_FALSE(t->is_special(*t->token_to_id("<0x41>")));
  EXPECT_FALSE(t->token_to_id("no such piece").has_value());
  EXPECT_FALSE(t->id_to_token(static_cast<int32_t>(t->vocab_size())).has_value());
  EXPECT_FALSE(t->id_to_token(-1).has_value());
  // Special pieces decode to nothing; an id out of range is an error, not a crash.
  EXPECT_EQ(t->decode({bos, eos}), "");
  EXPECT_THROW(t->decode({static_cast<int32_t>(t->vocab_size())}), Error);
}

// read_sentencepiece_vocab: every piece in id order as the tokenizer spells it, with the
// library's types; the trained model's user-defined symbols are told from normal pieces.
TEST_F(TokSentencePiece, VocabularyListsPiecesScoresAndTypes) {
  auto t = Tokenizer::load(model_path("bpe"));
  const SentencePieceVocab v = read_sentencepiece_vocab(model_path("bpe"));
  ASSERT_EQ(v.pieces.size(), t->vocab_size());
  ASSERT_EQ(v.scores.size(), v.pieces.size());
  ASSERT_EQ(v.types.size(), v.pieces.size());
  for (size_t i = 0; i < v.pieces.size(); ++i) {
    ASSERT_EQ(v.pieces[i], t->id_to_token(static_cast<int32_t>(i))) << i;
  }
  const json& r = ref("bpe");
  EXPECT_EQ(v.types[r.at("unk").get<size_t>()], SentencePieceVocab::kUnknown);
  EXPECT_EQ(v.types[r.at("bos").get<size_t>()], SentencePieceVocab::kControl);
  EXPECT_EQ(v.types[r.at("eos").get<size_t>()], SentencePieceVocab::kControl);
  EXPECT_EQ(v.types[*t->token_to_id("<|im_start|>")], SentencePieceVocab::kUserDefined);
  EXPECT_EQ(v.types[*t->token_to_id("<|im_end|>")], SentencePieceVocab::kUserDefined);
  EXPECT_EQ(v.types[*t->token_to_id("<0x41>")], SentencePieceVocab::kByte);
  size_t normal = 0, bytes = 0;
  for (auto type : v.types) {
    normal += type == SentencePieceVocab::kNormal;
    bytes += type == SentencePieceVocab::kByte;
  }
  EXPECT_EQ(bytes, 256u);
  EXPECT_EQ(normal, v.pieces.size() - 256 - 2 - 3);  // bytes, user-defined, unk/bos/eos
  // The scores are the file's: a BPE model's fall with the rank.
  const size_t first_merge = *t->token_to_id("<0xFF>") + 1;
  EXPECT_LT(v.scores.back(), v.scores[first_merge]);
  EXPECT_THROW(read_sentencepiece_vocab(model_path("bpe").parent_path() / "missing.model"), Error);
}

TEST(TokSentencePieceFile, NotAModelIsAnErrorNamingTheFile) {
  TempDir dir;
  const std::pair<const char*, std::string> cases[] = {
      {"text.model", "this is plain text, not a protobuf\n"},
      {"json.model", R"({"model": {"type": "BPE"}})"},
      {"empty.model", ""},
      {"binary.model", std::string("\x0a\xff\xff\xff\xff\x0f\x12\x00\x08", 9)},
  };
  for (const auto& [name, bytes] : cases) {
    write_bytes(dir / name, bytes);
    try {
      load_sentencepiece(dir / name, {});
      ADD_FAILURE() << name << " was accepted as a SentencePiece model";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Tokenizer::load(dir / "missing.model"), Error);
  EXPECT_THROW(Tokenizer::load(dir.path()), Error);  // a folder without a tokenizer
}

}  // namespace
}  // namespace smelt::tok
