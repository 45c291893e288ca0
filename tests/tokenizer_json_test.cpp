// tokenizer.json engine: small tokenizers in the shapes real models use, with encodings derived by
// hand from each algorithm's definition (docs/tokenizer.md), decode round trips, added tokens,
// the BOS/EOS rule, edit/save, and every bad-input error.
#include "smelt/tokenizer/tokenizer_json.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/tokenizer/split.h"
#include "test_util.h"

namespace smelt::tok {
namespace {

using Json = nlohmann::ordered_json;
using smelt::testing::TempDir;
using Strings = std::vector<std::string>;
using Ids = std::vector<int32_t>;

// "Ġ": GPT-2's byte-level spelling of the space byte (0x20 -> U+0120).
const std::string kG = "\xC4\xA0";
// "▁": SentencePiece's word-boundary mark (U+2581).
const std::string kSp = "\xE2\x96\x81";

// Writes `doc` (and optional tokenizer_config.json) into a fresh folder and loads it.
class Loaded {
 public:
  explicit Loaded(const Json& doc, const Json& config = nullptr) {
    testing::write_bytes(dir_ / "tokenizer.json", doc.dump());
    if (!config.is_null()) testing::write_bytes(dir_ / "tokenizer_config.json", config.dump());
    tok_ = std::make_unique<JsonTokenizer>(dir_ / "tokenizer.json", dir_.path());
  }
  JsonTokenizer& operator*() { return *tok_; }
  JsonTokenizer* operator->() { return tok_.get(); }
  const std::filesystem::path& dir() const { return dir_.path(); }

 private:
  TempDir dir_;
  std::unique_ptr<JsonTokenizer> tok_;
};

Json skeleton(Json model) {
  return Json{{"version", "1.0"},          {"truncation", nullptr},
              {"padding", nullptr},        {"added_tokens", Json::array()},
              {"normalizer", nullptr},     {"pre_tokenizer", nullptr},
              {"post_processor", nullptr}, {"decoder", nullptr},
              {"model", std::move(model)}};
}

Json vocab_of(const Strings& tokens) {
  Json v = Json::object();
  for (size_t i = 0; i < tokens.size(); ++i) v[tokens[i]] = i;
  return v;
}

Json bpe_model(const Strings& tokens, const Strings& merges) {
  return Json{{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"ignore_merges", false},
              {"vocab", vocab_of(tokens)},
              {"merges", merges}};
}

Json added(int id, const std::string& content, bool special, bool normalized = false) {
  return Json{{"id", id},          {"content", content}, {"single_word", false},
              {"lstrip", false},   {"rstrip", false},    {"normalized", normalized},
              {"special", special}};
}

// GPT-2's shape: ByteLevel pre-tokenizer with its regex, ByteLevel decoder, <|endoftext|>.
Json gpt2() {
  Strings vocab = {"h",        "e",        "l",       "o",        kG,          "w",
                   "r",        "d",        "!",       "he",       "ll",        "hell",
                   "hello",    kG + "w",   "or",      kG + "wor", kG + "worl", kG + "world",
                   "\xC3\x83", "\xC2\xA9",               // Ã ©: the bytes of "é"
                   "\xC3\xAF", "\xC2\xBF", "\xC2\xBD"};  // ï ¿ ½: the bytes of U+FFFD
  Strings merges = {"h e", "l l",       "he ll",      "hell o",     kG + " w",
                    "o r", kG + "w or", kG + "wor l", kG + "worl d"};
  Json doc = skeleton(bpe_model(vocab, merges));
  doc["added_tokens"] = Json::array({added(23, "<|endoftext|>", true)});
  doc["pre_tokenizer"] = {{"type", "ByteLevel"},
                          {"add_prefix_space", false},
                          {"trim_offsets", true},
                          {"use_regex", true}};
  doc["post_processor"] = {{"type", "ByteLevel"},
                           {"add_prefix_space", true},
                           {"trim_offsets", false},
                           {"use_regex", true}};
  doc["decoder"] = {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}};
  return doc;
}

TEST(TokJsonBpe, Gpt2ByteLevelMergesWordsSplitByTheRegex) {
  Loaded t(gpt2());
  // The regex splits "hello", " world", "!"; the merges then build each word.
  Encoding e = t->encode("hello world!");
  EXPECT_EQ(e.tokens, (Strings{"hello", kG + "world", "!"}));
  EXPECT_EQ(e.ids, (Ids{12, 17, 8}));
  EXPECT_EQ(t->decode(e.ids), "hello world!");
  EXPECT_EQ(t->vocab_size(), 24u);
}

TEST(TokJsonBpe, Gpt2NonAsciiGoesThroughItsBytes) {
  Loaded t(gpt2());
  Encoding e = t->encode("\xC3\xA9");  // é = C3 A9 -> Ã ©
  EXPECT_EQ(e.tokens, (Strings{"\xC3\x83", "\xC2\xA9"}));
  EXPECT_EQ(t->decode(e.ids), "\xC3\xA9");
}

TEST(TokJsonBpe, InvalidUtf8BecomesReplacementCharacter) {
  Loaded t(gpt2());
  // 0xFF is never valid: it is read as U+FFFD (EF BF BD), whose bytes spell ï ¿ ½.
  Encoding e = t->encode("\xFF");
  EXPECT_EQ(e.tokens, (Strings{"\xC3\xAF", "\xC2\xBF", "\xC2\xBD"}));
  // A truncated 3-byte sequence (E2 96) is one maximal subpart: one U+FFFD, then "h".
  Encoding f = t->encode("\xE2\x96h");
  EXPECT_EQ(f.tokens, (Strings{"\xC3\xAF", "\xC2\xBF", "\xC2\xBD", "h"}));
}

TEST(TokJsonBpe, SpecialTokenInsideTextAndSkippedOnDecode) {
  Loaded t(gpt2());
  Encoding e = t->encode("hello<|endoftext|> world");
  EXPECT_EQ(e.tokens, (Strings{"hello", "<|endoftext|>", kG + "world"}));
  EXPECT_EQ(e.ids, (Ids{12, 23, 17}));
  EXPECT_TRUE(t->is_special(23));
  EXPECT_FALSE(t->is_special(12));
  EXPECT_EQ(t->decode(e.ids), "hello<|endoftext|> world");
  EXPECT_EQ(t->decode(e.ids, {.skip_special_tokens = true}), "hello world");
}

TEST(TokJsonBpe, LowerRankMergesFirst) {
  Strings vocab = {"a", "b", "c", "ab", "bc"};
  Loaded first_bc(skeleton(bpe_model(vocab, {"b c", "a b"})));
  EXPECT_EQ(first_bc->encode("abc").tokens, (Strings{"a", "bc"}));
  Loaded first_ab(skeleton(bpe_model(vocab, {"a b", "b c"})));
  EXPECT_EQ(first_ab->encode("abc").tokens, (Strings{"ab", "c"}));
  // Equal pairs merge leftmost first: "bbb" with "b b" -> "bb", "b".
  Loaded bb(skeleton(bpe_model({"b", "bb"}, {"b b"})));
  EXPECT_EQ(bb->encode("bbb").tokens, (Strings{"bb", "b"}));
  // The same word twice (the second from the cache) gives the same tokens.
  EXPECT_EQ(bb->encode("bbb").tokens, (Strings{"bb", "b"}));
}

TEST(TokJsonBpe, MergesInPairFormEqualStringForm) {
  Json model = bpe_model({"a", "b", "c", "ab", "bc"}, {});
  model["merges"] = Json::array({Json::array({"b", "c"}), Json::array({"a", "b"})});
  Loaded t(skeleton(model));
  EXPECT_EQ(t->encode("abc").tokens, (Strings{"a", "bc"}));
}

TEST(TokJsonBpe, UnknownCharactersUseUnkFusedOrNot) {
  Json model = bpe_model({"<unk>", "a"}, {});
  model["unk_token"] = "<unk>";
  Loaded plain(skeleton(model));
  EXPECT_EQ(plain->encode("axya").ids, (Ids{1, 0, 0, 1}));
  model["fuse_unk"] = true;
  Loaded fused(skeleton(model));
  EXPECT_EQ(fused->encode("axya").ids, (Ids{1, 0, 1}));
  // Without unk_token the unknown characters vanish.
  Loaded none(skeleton(bpe_model({"a"}, {})));
  EXPECT_EQ(none->encode("axya").ids, (Ids{0, 0}));
}

TEST(TokJsonBpe, SubwordPrefixAndSuffix) {
  // Characters after the first carry "##"; the last carries "</w>".
  Json model = bpe_model({"a", "##b", "##c</w>", "##b##c</w>", "a##b"}, {});
  model["continuing_subword_prefix"] = "##";
  model["end_of_word_suffix"] = "</w>";
  // Merging "a" "##b" makes "a" + "b" = "ab" (the prefix of the right part is cut).
  model["vocab"]["ab"] = 5;
  model["merges"] = Strings{"a ##b"};
  Loaded t(skeleton(model));
  EXPECT_EQ(t->encode("abc").tokens, (Strings{"ab", "##c</w>"}));
}

TEST(TokJsonBpe, IgnoreMergesTakesWholeWordsFromTheVocab) {
  // Llama-3's shape: Split with its regex, then ByteLevel without the GPT-2 regex.
  Strings vocab = {"I", "'M", kG, "1", "2", "3", "4", "5", "123", "45", "<|begin_of_text|>"};
  Json model = bpe_model(vocab, {"4 5"});
  model["ignore_merges"] = true;
  Json doc = skeleton(model);
  doc["added_tokens"] = Json::array({added(10, "<|begin_of_text|>", true)});
  doc["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array(
           {{{"type", "Split"},
             {"pattern",
              {{"Regex",
                R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"},
             {"add_prefix_space", false},
             {"trim_offsets", true},
             {"use_regex", false}}})}};
  doc["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", Json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"pair", Json::array({{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                            {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
      {"special_tokens",
       {{"<|begin_of_text|>",
         {{"id", "<|begin_of_text|>"}, {"ids", {10}}, {"tokens", {"<|begin_of_text|>"}}}}}}};
  doc["decoder"] = {{"type", "ByteLevel"}};
  Loaded t(doc);
  // (?i:'m) takes "'M"; " " before a digit is its own \s+ piece; digits go in threes.
  Encoding e = t->encode("I'M 12345");
  EXPECT_EQ(e.tokens, (Strings{"<|begin_of_text|>", "I", "'M", kG, "123", "45"}));
  EXPECT_EQ(e.ids, (Ids{10, 0, 1, 2, 8, 9}));
  EXPECT_EQ(t->encode("I'M 12345", {.add_special_tokens = false}).ids, (Ids{0, 1, 2, 8, 9}));
  EXPECT_EQ(t->decode(e.ids, {.skip_special_tokens = true}), "I'M 12345");
}

// Llama-2 / Mistral's shape: SentencePiece-style BPE with byte fallback.
Json llama2() {
  Strings vocab = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) vocab.push_back(fmt::format("<0x{:02X}>", b));
  for (const std::string& s : {kSp, std::string("h"), std::string("i"), kSp + "h", kSp + "hi"}) {
    vocab.push_back(s);
  }
  Json model = bpe_model(vocab, {kSp + " h", kSp + "h i"});
  model["unk_token"] = "<unk>";
  model["fuse_unk"] = true;
  model["byte_fallback"] = true;
  Json doc = skeleton(model);
  doc["added_tokens"] =
      Json::array({added(0, "<unk>", true), added(1, "<s>", true), added(2, "</s>", true)});
  doc["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       Json::array({{{"type", "Prepend"}, {"prepend", kSp}},
                    {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSp}}})}};
  doc["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", Json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"pair", nullptr},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  doc["decoder"] = {
      {"type", "Sequence"},
      {"decoders",
       Json::array({{{"type", "Replace"}, {"pattern", {{"String", kSp}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}},
                    {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  return doc;
}

TEST(TokJsonBpe, SentencePieceStyleByteFallback) {
  Loaded t(llama2());
  // "hi 😀" -> "▁hi▁😀"; 😀 (F0 9F 98 80) is not in the vocab, so its bytes are used.
  Encoding e = t->encode("hi \xF0\x9F\x98\x80");
  EXPECT_EQ(e.tokens, (Strings{"<s>", kSp + "hi", kSp, "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"}));
  EXPECT_EQ(e.ids, (Ids{1, 263, 259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
  EXPECT_EQ(t->decode(e.ids, {.skip_special_tokens = true}), "hi \xF0\x9F\x98\x80");
  // Special tokens are matched in the raw text, before the normalizer runs.
  EXPECT_EQ(t->encode("hi</s>", {.add_special_tokens = false}).tokens,
            (Strings{kSp + "hi", "</s>"}));
  // An incomplete byte run decodes to one U+FFFD per byte.
  EXPECT_EQ(t->decode({3 + 0xF0, 3 + 0x9F, 260}), "\xEF\xBF\xBD\xEF\xBF\xBDh");
}

TEST(TokJsonBpe, BosEosFromTokenizerConfigOverrideTheTemplate) {
  Json both = {{"add_bos_token", true},
               {"add_eos_token", true},
               {"bos_token", "<s>"},
               {"eos_token", {{"content", "</s>"}, {"special", true}}}};
  Loaded t(llama2(), both);
  EXPECT_EQ(t->encode("hi").ids, (Ids{1, 263, 2}));
  Json neither = {{"add_bos_token", false}, {"add_eos_token", false}, {"bos_token", "<s>"}};
  Loaded u(llama2(), neither);
  EXPECT_EQ(u->encode("hi").ids, (Ids{263}));
  // Only add_eos_token present: add_bos_token takes its default, true.
  Json eos_only = {{"add_eos_token", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
  Loaded v(llama2(), eos_only);
  EXPECT_EQ(v->encode("hi").ids, (Ids{1, 263, 2}));
  // Neither key: the template decides.
  Loaded w(llama2(), Json{{"bos_token", "<s>"}});
  EXPECT_EQ(w->encode("hi").ids, (Ids{1, 263}));
}

TEST(TokJsonBpe, BosRequestedWithoutBosTokenIsAnError) {
  Json config = {{"add_bos_token", true}};
  try {
    Loaded t(llama2(), config);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bos_token"), std::string::npos) << e.what();
  }
}

// A Unigram model with Metaspace: scores chosen so the best path is not the greedy one.
Json unigram() {
  Json model = {{"type", "Unigram"},
                {"unk_id", 0},
                {"vocab", Json::array({Json::array({"<unk>", 0.0}), Json::array({kSp, -1.0}),
                                       Json::array({kSp + "a", -2.0}), Json::array({"b", -2.0}),
                                       Json::array({kSp + "ab", -5.0}), Json::array({"a", -1.5}),
                                       Json::array({"<0x78>", -20.0})})},
                {"byte_fallback", false}};
  Json doc = skeleton(model);
  doc["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "always"}, {"split", true}};
  doc["decoder"] = {
      {"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "always"}, {"split", true}};
  return doc;
}

TEST(TokJsonUnigram, ViterbiPicksTheBestScoringPath) {
  Loaded t(unigram());
  // "▁ab": ▁ab = -5, ▁a+b = -4, ▁+a+b = -4.5 -> ▁a, b.
  Encoding e = t->encode("ab");
  EXPECT_EQ(e.tokens, (Strings{kSp + "a", "b"}));
  EXPECT_EQ(e.ids, (Ids{2, 3}));
  EXPECT_EQ(t->decode(e.ids), "ab");
  // Two words: the split keeps "▁" at the start of each.
  EXPECT_EQ(t->encode("ab ab").tokens, (Strings{kSp + "a", "b", kSp + "a", "b"}));
  EXPECT_EQ(t->decode(t->encode("ab ab").ids), "ab ab");
}

TEST(TokJsonUnigram, UnknownRunsFuseIntoOneUnk) {
  Loaded t(unigram());
  // "▁xyb": x and y are unknown (score min - 10 each) and fuse; the token spells the text.
  Encoding e = t->encode("xyb");
  EXPECT_EQ(e.ids, (Ids{1, 0, 3}));
  EXPECT_EQ(e.tokens, (Strings{kSp, "xy", "b"}));
}

TEST(TokJsonUnigram, ByteFallbackReplacesUnknownPieces) {
  Json doc = unigram();
  doc["model"]["byte_fallback"] = true;
  Loaded t(doc);
  // "x" has no piece; its byte 0x78 has one (<0x78>), which replaces the unk.
  Encoding e = t->encode("x");
  EXPECT_EQ(e.tokens, (Strings{kSp, "<0x78>"}));
  EXPECT_EQ(e.ids, (Ids{1, 6}));
}

TEST(TokJsonUnigram, MetaspacePrependFirstOnlyAtTheStartOfTheInput) {
  Json doc = unigram();
  doc["pre_tokenizer"]["prepend_scheme"] = "first";
  doc["pre_tokenizer"]["split"] = false;
  doc["added_tokens"] = Json::array({added(5, "a", true)});  // "a" as a special token
  Loaded t(doc);
  // "ab": "a" is the added token; "b" starts at offset 1, so no "▁" is prepended.
  EXPECT_EQ(t->encode("ab").tokens, (Strings{"a", "b"}));
  EXPECT_EQ(t->encode("b").tokens, (Strings{kSp, "b"}));
}

// BERT's shape: BertNormalizer, BertPreTokenizer, WordPiece, BertProcessing, WordPiece decoder.
Json bert() {
  Strings vocab = {"[PAD]",  "[UNK]", "[CLS]", "[SEP]", "un", "##aff",
                   "##able", "hello", "!",     ",",     "ea", "[MASK]"};
  Json model = {{"type", "WordPiece"},
                {"unk_token", "[UNK]"},
                {"continuing_subword_prefix", "##"},
                {"max_input_chars_per_word", 10},
                {"vocab", vocab_of(vocab)}};
  Json doc = skeleton(model);
  doc["added_tokens"] =
      Json::array({added(0, "[PAD]", true), added(1, "[UNK]", true), added(2, "[CLS]", true),
                   added(3, "[SEP]", true), added(11, "[MASK]", true)});
  doc["normalizer"] = {{"type", "BertNormalizer"},
                       {"clean_text", true},
                       {"handle_chinese_chars", true},
                       {"strip_accents", nullptr},
                       {"lowercase", true}};
  doc["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  doc["post_processor"] = {
      {"type", "BertProcessing"}, {"sep", {"[SEP]", 3}}, {"cls", {"[CLS]", 2}}};
  doc["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
  return doc;
}

TEST(TokJsonWordPiece, BertPipeline) {
  Loaded t(bert());
  Encoding e = t->encode("UnAffable, HELLO!");
  EXPECT_EQ(e.tokens, (Strings{"[CLS]", "un", "##aff", "##able", ",", "hello", "!", "[SEP]"}));
  EXPECT_EQ(t->decode(e.ids), "[CLS] unaffable, hello! [SEP]");
  EXPECT_EQ(t->decode(e.ids, {.skip_special_tokens = true}), "unaffable, hello!");
  // Accents are stripped (lowercase implies strip_accents); "É" -> "e".
  EXPECT_EQ(t->encode("\xC3\x89"
                      "a",
                      {.add_special_tokens = false})
                .tokens,
            (Strings{"ea"}));
  // A word that cannot be covered, or is longer than 10 characters, is one [UNK].
  EXPECT_EQ(t->encode("unx", {.add_special_tokens = false}).tokens, (Strings{"[UNK]"}));
  EXPECT_EQ(t->encode("unaffableaffable", {.add_special_tokens = false}).tokens,
            (Strings{"[UNK]"}));
}

TEST(TokJsonAdded, LstripRstripAndSingleWord) {
  Json doc = bert();
  doc["added_tokens"][4]["lstrip"] = true;  // [MASK]
  doc["added_tokens"][4]["rstrip"] = true;
  doc["pre_tokenizer"] = nullptr;  // so that surrounding spaces would reach the model
  doc["model"]["vocab"][" hello"] = 12;
  doc["model"]["vocab"]["hello "] = 13;
  Loaded t(doc);
  // [MASK] swallows the spaces on both sides (its token spells them, as the reference library's
  // does); without lstrip/rstrip they would be " hello"'s and "hello "'s.
  Encoding e = t->encode("hello [MASK] hello", {.add_special_tokens = false});
  EXPECT_EQ(e.tokens, (Strings{"hello", " [MASK] ", "hello"}));
  EXPECT_EQ(e.ids, (Ids{7, 11, 7}));

  Json sw = gpt2();
  sw["added_tokens"].push_back(Json{{"id", 9},
                                    {"content", "he"},
                                    {"single_word", true},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", false},
                                    {"special", false}});
  Loaded u(sw);
  // "he" (the model's id 9) inside "hello" is not a single word; the "he" of "he!" is.
  EXPECT_EQ(u->encode("hello he!").tokens, (Strings{"hello", kG, "he", "!"}));
}

TEST(TokJsonAdded, NormalizedTokensMatchAfterTheNormalizer) {
  Json doc = skeleton(bpe_model({"a", "b"}, {}));
  doc["normalizer"] = {{"type", "Lowercase"}};
  doc["added_tokens"] = Json::array({added(2, "XY", false, true), added(3, "<Z>", true, false)});
  Loaded t(doc);
  // "XY" is normalized: it matches "xy" and "XY" alike once the text is lowercased.
  EXPECT_EQ(t->encode("axyb").ids, (Ids{0, 2, 1}));
  EXPECT_EQ(t->encode("aXYb").ids, (Ids{0, 2, 1}));
  // "<Z>" is not normalized: it matches only its raw spelling.
  EXPECT_EQ(t->encode("a<Z>").ids, (Ids{0, 3}));
  EXPECT_EQ(t->encode("a<z>").ids, (Ids{0}));  // "<", "z", ">" are not in the vocab: dropped
}

TEST(TokJsonNormalizer, UnicodeFormsLowercaseStrip) {
  // Checked through a WordLevel vocabulary that holds only the expected normalized words.
  auto words = [](Json normalizer, const std::string& text, const Strings& vocab) {
    Json doc =
        skeleton(Json{{"type", "WordLevel"}, {"vocab", vocab_of(vocab)}, {"unk_token", "<unk>"}});
    doc["normalizer"] = std::move(normalizer);
    doc["pre_tokenizer"] = {{"type", "WhitespaceSplit"}};
    Loaded t(doc);
    return t->encode(text).tokens;
  };
  // NFKC folds the ligature "ﬁ" (U+FB01) to "fi"; NFC leaves it.
  EXPECT_EQ(words({{"type", "NFKC"}}, "\xEF\xAC\x81", {"<unk>", "fi"}), (Strings{"fi"}));
  EXPECT_EQ(words({{"type", "NFC"}}, "\xEF\xAC\x81", {"<unk>", "fi"}), (Strings{"<unk>"}));
  // NFC composes e + U+0301 into é; NFD splits it again.
  EXPECT_EQ(words({{"type", "NFC"}}, "e\xCC\x81", {"<unk>", "\xC3\xA9"}), (Strings{"\xC3\xA9"}));
  EXPECT_EQ(words({{"type", "NFD"}}, "\xC3\xA9", {"<unk>", "e\xCC\x81"}), (Strings{"e\xCC\x81"}));
  // Lowercase maps İ (U+0130) to "i" + U+0307, as Rust's to_lowercase does.
  EXPECT_EQ(words({{"type", "Lowercase"}}, "\xC4\xB0X", {"<unk>", "i\xCC\x87x"}),
            (Strings{"i\xCC\x87x"}));
  // Strip left only, then Replace by regex.
  Json seq = {
      {"type", "Sequence"},
      {"normalizers",
       Json::array({{{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}},
                    {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+$"}}}, {"content", "_"}}})}};
  EXPECT_EQ(words(seq, "  ab  ", {"<unk>", "ab_"}), (Strings{"ab_"}));
}

TEST(TokJsonNormalizer, NmtAndByteLevel) {
  auto words = [](Json normalizer, const std::string& text, const Strings& vocab) {
    Json doc =
        skeleton(Json{{"type", "WordLevel"}, {"vocab", vocab_of(vocab)}, {"unk_token", "<unk>"}});
    doc["normalizer"] = std::move(normalizer);
    Loaded t(doc);
    return t->encode(text).tokens;
  };
  // Nmt drops U+0001 and turns a tab and U+200B into spaces.
  EXPECT_EQ(words({{"type", "Nmt"}}, "a\x01\tb\xE2\x80\x8B", {"<unk>", "a b "}), (Strings{"a b "}));
  // ByteLevel spells the space byte as Ġ.
  EXPECT_EQ(words({{"type", "ByteLevel"}}, "a b", {"<unk>", "a" + kG + "b"}),
            (Strings{"a" + kG + "b"}));
}

std::string base64(const std::string& bytes) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out.push_back(kAlphabet[(v >> (6 * k)) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= uint8_t(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// A SentencePiece charsmap with the rules 'A' -> "a" and 'B' -> "xy", built as a darts double
// array by hand: the root's offset is 256, so byte c lives in unit 256 ^ c = 256 + c (label c,
// leaf bit 8, offset 1024), whose value unit is 1280 + c.
std::string tiny_charsmap() {
  std::vector<uint32_t> units(1536, 0);
  units[0] = 256u << 10;
  std::string replacements = "a" + std::string(1, '\0') + "xy" + std::string(1, '\0');
  auto rule = [&](unsigned char c, uint32_t index) {
    units[256 + c] = c | (1u << 8) | (1024u << 10);
    units[1280 + c] = (1u << 31) | index;
  };
  rule('A', 0);
  rule('B', 2);
  std::string bytes;
  auto put = [&](uint32_t v) {
    for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
  };
  put(static_cast<uint32_t>(units.size() * 4));
  for (uint32_t u : units) put(u);
  return base64(bytes + replacements);
}

TEST(TokJsonNormalizer, PrecompiledCharsmapRulesPerGrapheme) {
  auto words = [](const std::string& text, const Strings& vocab) {
    Json doc =
        skeleton(Json{{"type", "WordLevel"}, {"vocab", vocab_of(vocab)}, {"unk_token", "<unk>"}});
    doc["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", tiny_charsmap()}};
    doc["pre_tokenizer"] = {{"type", "WhitespaceSplit"}};
    Loaded t(doc);
    return t->encode(text).tokens;
  };
  EXPECT_EQ(words("ABC", {"<unk>", "axyC"}), (Strings{"axyC"}));
  // "A" + U+0308 is one grapheme shorter than 6 bytes: the rule for its prefix "A" replaces the
  // whole cluster, so the diaeresis goes too (the reference library's behavior).
  EXPECT_EQ(words("A\xCC\x88"
                  "C",
                  {"<unk>", "aC"}),
            (Strings{"aC"}));
}

TEST(TokJsonPreTokenizer, SplitBehaviorsFollowTheirDefinitions) {
  // "a-b--c" split at each "-": parts a, -, b, -, -, c.
  std::string text = "a-b--c";
  Ranges matches;
  find_literal(text, "-", matches);
  auto run = [&](SplitBehavior b, bool invert) {
    Ranges out;
    split_ranges(text.size(), matches, b, invert, out);
    Strings s;
    for (auto [x, y] : out) s.push_back(text.substr(x, y - x));
    return s;
  };
  EXPECT_EQ(run(SplitBehavior::kRemoved, false), (Strings{"a", "b", "c"}));
  EXPECT_EQ(run(SplitBehavior::kIsolated, false), (Strings{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithPrevious, false), (Strings{"a-", "b-", "-", "c"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithNext, false), (Strings{"a", "-b", "-", "-c"}));
  EXPECT_EQ(run(SplitBehavior::kContiguous, false), (Strings{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(run(SplitBehavior::kRemoved, true), (Strings{"-", "-", "-"}));
}

TEST(TokJsonPreTokenizer, DigitsPunctuationWhitespace) {
  // The pieces come back as WordLevel tokens (each piece is one vocabulary word).
  auto pieces = [](Json pre, const std::string& text) {
    Json wl = skeleton(
        Json{{"type", "WordLevel"},
             {"vocab", vocab_of({"<unk>", "a", "ab", "12", "1", "2", "!", "?", "!?", "a1", "b"})},
             {"unk_token", "<unk>"}});
    wl["pre_tokenizer"] = std::move(pre);
    Loaded w(wl);
    return w->encode(text).tokens;
  };
  EXPECT_EQ(pieces({{"type", "Digits"}, {"individual_digits", false}}, "a12b"),
            (Strings{"a", "12", "b"}));
  EXPECT_EQ(pieces({{"type", "Digits"}, {"individual_digits", true}}, "a12b"),
            (Strings{"a", "1", "2", "b"}));
  EXPECT_EQ(pieces({{"type", "Punctuation"}, {"behavior", "Isolated"}}, "ab!?"),
            (Strings{"ab", "!", "?"}));
  EXPECT_EQ(pieces({{"type", "Punctuation"}, {"behavior", "Contiguous"}}, "ab!?"),
            (Strings{"ab", "!?"}));
  EXPECT_EQ(pieces({{"type", "Whitespace"}}, "a1  !?b"), (Strings{"a1", "!?", "b"}));
  EXPECT_EQ(pieces({{"type", "WhitespaceSplit"}}, " ab \t12 "), (Strings{"ab", "12"}));
  EXPECT_EQ(pieces({{"type", "FixedLength"}, {"length", 2}}, "ab12!"), (Strings{"ab", "12", "!"}));
}

TEST(TokJsonPreTokenizer, PunctuationUsesTheReferenceLibrarysOlderTable) {
  Json doc = skeleton(Json{{"type", "WordLevel"},
                           {"vocab", vocab_of({"<unk>", "a", "b", "\xC2\xBF",
                                               "a\xE2\xB9\x8C"
                                               "b"})},
                           {"unk_token", "<unk>"}});
  doc["pre_tokenizer"] = {{"type", "Punctuation"}, {"behavior", "Isolated"}};
  Loaded t(doc);
  // ¿ (U+00BF, Unicode 1.1) is punctuation; ⹌ (U+2E4C, Po since Unicode 11) is not to it.
  EXPECT_EQ(t->encode("a\xC2\xBF"
                      "b")
                .tokens,
            (Strings{"a", "\xC2\xBF", "b"}));
  EXPECT_EQ(t->encode("a\xE2\xB9\x8C"
                      "b")
                .tokens,
            (Strings{"a\xE2\xB9\x8C"
                     "b"}));
}

TEST(TokJsonDecoder, CtcCollapsesRepeatsAndDropsPad) {
  Json doc = skeleton(Json{{"type", "WordLevel"},
                           {"vocab", vocab_of({"<pad>", "|", "h", "e", "l", "o"})},
                           {"unk_token", "<pad>"}});
  doc["decoder"] = {
      {"type", "CTC"}, {"pad_token", "<pad>"}, {"word_delimiter_token", "|"}, {"cleanup", true}};
  Loaded t(doc);
  // h h e l <pad> l o | h -> "hel" "l" "o" " " "h" (repeats collapse; the pad separates l's).
  EXPECT_EQ(t->decode({2, 2, 3, 4, 0, 4, 5, 1, 2}), "hello h");
}

TEST(TokJsonBpe, TruncationLeavesRoomForSpecialTokensAndPaddingFills) {
  Json doc = llama2();
  doc["truncation"] = {
      {"max_length", 3}, {"strategy", "LongestFirst"}, {"stride", 0}, {"direction", "Right"}};
  Loaded right(doc);
  // "hi hi hi" -> ▁hi ▁hi ▁hi; with <s> only 2 fit: <s> ▁hi ▁hi. Without specials, 3 fit.
  EXPECT_EQ(right->encode("hi hi hi").ids, (Ids{1, 263, 263}));
  EXPECT_EQ(right->encode("hi hi hi hi", {.add_special_tokens = false}).ids, (Ids{263, 263, 263}));
  doc["truncation"]["direction"] = "Left";
  doc["truncation"]["max_length"] = 2;
  Loaded left(doc);
  // Left truncation keeps the last token of "h hi": <s> ▁hi.
  EXPECT_EQ(left->encode("h hi").ids, (Ids{1, 263}));

  Json padded = llama2();
  padded["padding"] = {{"strategy", {{"Fixed", 4}}},
                       {"direction", "Left"},
                       {"pad_to_multiple_of", nullptr},
                       {"pad_id", 0},
                       {"pad_type_id", 0},
                       {"pad_token", "<unk>"}};
  Loaded p(padded);
  Encoding e = p->encode("hi");
  EXPECT_EQ(e.ids, (Ids{0, 0, 1, 263}));
  EXPECT_EQ(e.tokens, (Strings{"<unk>", "<unk>", "<s>", kSp + "hi"}));
  padded["padding"]["strategy"] = "BatchLongest";
  padded["padding"]["direction"] = "Right";
  padded["padding"]["pad_to_multiple_of"] = 3;
  Loaded m(padded);
  EXPECT_EQ(m->encode("hi hi").ids, (Ids{1, 263, 263}));  // 3 already a multiple of 3
  EXPECT_EQ(m->encode("hi").ids, (Ids{1, 263, 0}));       // 2 -> 3
}

// --- edit and save ---

TEST(TokJsonEdit, AddTokensGetNextIdsAndAreMatched) {
  Loaded t(gpt2());
  auto ids = t->add_tokens({{0, "<tool>", true, false, false, false, false},
                            {0, "hello", false, false, false, false, true},
                            {0, "<|endoftext|>", true, false, false, false, false}});
  // New content gets 24; "hello" is in the model vocab (12); <|endoftext|> keeps 23.
  EXPECT_EQ(ids, (Ids{24, 12, 23}));
  EXPECT_EQ(t->vocab_size(), 25u);
  EXPECT_EQ(t->encode("hello<tool>!").ids, (Ids{12, 24, 8}));
  EXPECT_TRUE(t->is_special(24));
}

TEST(TokJsonEdit, TruncateRemovesIdsAndTheMergesThatNeedThem) {
  Json doc = gpt2();
  doc["x_extension"] = {{"note", "unknown to smelt"}, {"n", 7}};  // must survive a save
  doc["model"]["my_field"] = "kept";
  Loaded t(doc);
  t->truncate_vocab(12);  // drops "hello" (12) and everything after, <|endoftext|> included
  EXPECT_EQ(t->vocab_size(), 12u);
  EXPECT_FALSE(t->token_to_id("hello"));
  EXPECT_FALSE(t->token_to_id("<|endoftext|>"));
  // "hell o" produced "hello" and is gone; "hell" stays.
  EXPECT_EQ(t->encode("hello").tokens, (Strings{"hell", "o"}));
  for (const Json& m : t->json()["model"]["merges"]) EXPECT_NE(m.get<std::string>(), "hell o");

  TempDir out;
  t->save(out.path());
  JsonTokenizer back(out / "tokenizer.json", out.path());
  EXPECT_EQ(back.encode("hello world!").ids, t->encode("hello world!").ids);
  EXPECT_EQ(back.vocab_size(), 12u);
  Json saved = Json::parse(testing::read_bytes(out / "tokenizer.json"));
  EXPECT_EQ(saved["x_extension"]["n"], 7);
  EXPECT_EQ(saved["model"]["my_field"], "kept");
  EXPECT_TRUE(std::filesystem::exists(out / "special_tokens_map.json"));
}

TEST(TokJsonEdit, SaveWritesAddedTokensDecoderAndReloads) {
  Json config = {{"add_bos_token", true},
                 {"bos_token", "<s>"},
                 {"model_max_length", 4096},
                 {"eos_token", "</s>"}};
  Loaded t(llama2(), config);
  auto ids = t->add_tokens({{0, "<extra>", true, false, false, false, false}});
  EXPECT_EQ(ids, (Ids{264}));
  TempDir out;
  t->save(out.path());
  Json saved_config = Json::parse(testing::read_bytes(out / "tokenizer_config.json"));
  EXPECT_EQ(saved_config["model_max_length"], 4096);
  EXPECT_EQ(saved_config["added_tokens_decoder"]["264"]["content"], "<extra>");
  EXPECT_EQ(saved_config["added_tokens_decoder"]["264"]["special"], true);
  JsonTokenizer back(out / "tokenizer.json", out.path());
  EXPECT_EQ(back.encode("hi<extra>").ids, (Ids{1, 263, 264}));

  // Removing ▁hi (263) removes the merge that makes it, and <extra>.
  t->truncate_vocab(263);
  EXPECT_EQ(t->encode("hi<extra>").ids,
            (Ids{1, 262, 261, 3 + '<', 3 + 'e', 3 + 'x', 3 + 't', 3 + 'r', 3 + 'a', 3 + '>'}));
  // Removing </s> (2) drops it from the saved tokenizer_config.json.
  t->truncate_vocab(2);
  TempDir out2;
  t->save(out2.path());
  Json config2 = Json::parse(testing::read_bytes(out2 / "tokenizer_config.json"));
  EXPECT_TRUE(config2["eos_token"].is_null());
  EXPECT_EQ(config2["bos_token"], "<s>");
  EXPECT_EQ(config2["added_tokens_decoder"].size(), 2u);  // <unk>, <s>
  Json map2 = Json::parse(testing::read_bytes(out2 / "special_tokens_map.json"));
  EXPECT_FALSE(map2.contains("eos_token"));
  EXPECT_EQ(map2["bos_token"], "<s>");
}

// --- parsing: parse_json builds what Json::parse builds, in linear time ---

TEST(TokJsonParse, SameDocumentAsJsonParse) {
  std::string big = "{";
  for (int i = 0; i < 200; ++i) big += fmt::format("\"k{}\": {}, ", (i * 37) % 211, i);
  big += "\"k5\": \"last\"}";  // a repeated key in an indexed object
  for (const std::string& text :
       {std::string(R"({"b": 1, "a": [1, -2, 3.5, 1e300, 18446744073709551615, true, null],
                         "c": {"z": "\u00e9\ud83d\ude00", "y": {}, "x": []}, "b": 2})"),
        std::string(R"([{"a": 1, "a": {"q": 1}, "b": 0}, "s", 0, -0, 0.0])"), std::string("42"),
        std::string(" \"text\" "), big}) {
    Json expected = Json::parse(text);
    Json got = parse_json(text);
    EXPECT_EQ(got, expected) << text;
    EXPECT_EQ(got.dump(), expected.dump()) << text;  // same key order and number kinds
  }
}

TEST(TokJsonParse, SameErrorsAsJsonParse) {
  for (const std::string& text :
       {"", "{", "{\"a\": [1, 2", "[1,]", "{\"a\" 1}", "1 2", "\"\\x\"", "nul", "{\"a\": 1}}"}) {
    std::string expected, got;
    try {
      (void)Json::parse(text);
    } catch (const Json::exception& e) {
      expected = e.what();
    }
    try {
      (void)parse_json(text);
    } catch (const Json::exception& e) {
      got = e.what();
    }
    EXPECT_FALSE(expected.empty()) << text;
    EXPECT_EQ(got, expected) << text;
  }
}

TEST(TokJsonParse, LargeVocabLoadsInFileOrder) {
  // 60k entries: quadratic insertion would take seconds here.
  Strings tokens;
  for (char c = 'a'; c <= 'z'; ++c) tokens.push_back(std::string(1, c));
  for (int i = 0; tokens.size() < 60000; ++i) tokens.push_back(fmt::format("w{}", i));
  Json model = bpe_model({}, {});
  auto& entries = model["vocab"].get_ref<Json::object_t&>();  // model["vocab"][t] is quadratic
  for (size_t i = 0; i < tokens.size(); ++i) entries.emplace_back(tokens[i], i);
  Loaded t(skeleton(model));
  EXPECT_EQ(t->vocab_size(), 60000u);
  EXPECT_EQ(t->token_to_id("w12345"), 26 + 12345);
  EXPECT_EQ(t->id_to_token(59999), tokens.back());
  auto& vocab = t->json()["model"]["vocab"];
  EXPECT_EQ(vocab.begin().key(), "a");
  EXPECT_EQ(std::prev(vocab.end()).key(), tokens.back());
}

// --- bad input: one clear error each, naming the file ---

void expect_error(const Json& doc, const std::string& fragment) {
  TempDir dir;
  testing::write_bytes(dir / "tokenizer.json", doc.dump());
  try {
    JsonTokenizer t(dir / "tokenizer.json", dir.path());
    FAIL() << "expected an error containing " << fragment;
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("tokenizer.json"), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
  }
}

TEST(TokJsonErrors, UnknownComponentTypeNamesItsPath) {
  Json doc = gpt2();
  doc["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers", Json::array({{{"type", "Digits"}}, {{"type", "Bogus"}}})}};
  expect_error(doc, "pre_tokenizer.pretokenizers[1].type: unknown pre-tokenizer type \"Bogus\"");
  Json n = gpt2();
  n["normalizer"] = {{"type", "Frobnicate"}};
  expect_error(n, "normalizer.type: unknown normalizer type \"Frobnicate\"");
  Json d = gpt2();
  d["decoder"] = {{"type", "CTC2"}};
  expect_error(d, "decoder.type");
  Json m = gpt2();
  m["model"]["type"] = "Bigram";
  expect_error(m, "model.type: unknown model type \"Bigram\"");
  Json p = gpt2();
  p["post_processor"] = {{"type", "Nope"}};
  expect_error(p, "post_processor.type");
}

TEST(TokJsonErrors, MetaspaceAddPrefixSpaceMustAgreeWithPrependScheme) {
  Json doc = unigram();
  doc["pre_tokenizer"].erase("prepend_scheme");
  doc["pre_tokenizer"]["add_prefix_space"] = false;
  expect_error(
      doc,
      "pre_tokenizer.add_prefix_space: add_prefix_space does not match declared prepend_scheme");
  doc["pre_tokenizer"]["prepend_scheme"] = "never";
  Loaded t(doc);
  EXPECT_EQ(t->encode("ab").tokens, (Strings{"a", "b"}));
}

TEST(TokJsonErrors, BadRegexShowsPcre2MessageAndOffset) {
  Json doc = gpt2();
  doc["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"Regex", "ab(c"}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
  expect_error(doc,
               "pre_tokenizer.pattern.Regex: regex \"ab(c\" does not compile: missing closing "
               "parenthesis at offset 4");
}

TEST(TokJsonErrors, VocabAndMergeProblems) {
  Json collide = skeleton(bpe_model({"a", "b"}, {}));
  collide["model"]["vocab"]["b"] = 0;
  expect_error(collide, "ids collide");
  Json hole = skeleton(bpe_model({"a", "b"}, {}));
  hole["model"]["vocab"]["b"] = 2;
  expect_error(hole, "id 1 is neither in the model vocab nor an added token");
  expect_error(skeleton(bpe_model({"a", "b"}, {"a c"})),
               "model.merges[0]: merge names \"c\", which is not in the vocab");
  expect_error(skeleton(bpe_model({"a", "b"}, {"a b"})), "merge produces \"ab\"");
  expect_error(skeleton(bpe_model({"a", "b"}, {"ab"})), "is not two tokens separated by one space");
  Json dropout = skeleton(bpe_model({"a"}, {}));
  dropout["model"]["dropout"] = 0.1;
  expect_error(dropout, "model.dropout: BPE dropout 0.1");
  Json added_bad = gpt2();
  added_bad["added_tokens"][0]["id"] = 30;
  expect_error(added_bad,
               "added_tokens[0].id: added token \"<|endoftext|>\" has id 30, but the "
               "reference library gives it id 23");
  Json unigram_bad = unigram();
  unigram_bad["model"]["unk_id"] = 99;
  expect_error(unigram_bad, "model.unk_id: unk_id 99 is past the vocab");
}

TEST(TokJsonErrors, MissingFieldsAndWrongTypes) {
  Json no_model = gpt2();
  no_model.erase("model");
  expect_error(no_model, "missing required field \"model\"");
  Json array_vocab = gpt2();
  array_vocab["model"]["vocab"] = Json::array();
  expect_error(array_vocab, "model.vocab: expected an object, got array");
  Json string_id = gpt2();
  string_id["model"]["vocab"]["h"] = "0";
  expect_error(string_id, "model.vocab.h: expected an integer, got string");
  Json no_pattern = gpt2();
  no_pattern["pre_tokenizer"] = {{"type", "Split"}, {"behavior", "Isolated"}};
  expect_error(no_pattern, "pre_tokenizer: missing required field \"pattern\"");
  Json behavior = gpt2();
  behavior["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}};
  expect_error(behavior, "pre_tokenizer.behavior: unknown split behavior \"Sideways\"");
  Json template_bad = llama2();
  template_bad["post_processor"]["special_tokens"] = Json::object();
  expect_error(template_bad,
               "post_processor.single[0].SpecialToken.id: template names special token \"<s>\"");
  Json huge_pad = gpt2();
  huge_pad["padding"] = {{"strategy", {{"Fixed", 2000000000}}}, {"pad_id", 0}, {"pad_token", "h"}};
  expect_error(huge_pad,
               "padding.strategy.Fixed: integer 2000000000 is out of range [0, 16777216]");
  Json not_object = Json::array({1, 2});
  expect_error(not_object, "expected an object, got array");
}

TEST(TokJsonErrors, DeeplyNestedSequencesAreRefused) {
  Json n = {{"type", "Lowercase"}};
  for (int i = 0; i < 100; ++i) n = {{"type", "Sequence"}, {"normalizers", Json::array({n})}};
  Json doc = gpt2();
  doc["normalizer"] = n;
  expect_error(doc, "components nested more than 64 levels deep");
}

TEST(TokJsonErrors, BadPrecompiledCharsmap) {
  Json doc = unigram();
  doc["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "!!!"}};
  expect_error(doc, "normalizer.precompiled_charsmap: not valid base64");
  doc["normalizer"]["precompiled_charsmap"] =
      base64(std::string("\xFF\xFF\x00\x00"
                         "abcd",
                         8));
  expect_error(doc,
               "normalizer.precompiled_charsmap: trie size 65535 exceeds the 4 bytes that follow");
}

TEST(TokJsonErrors, NotJsonAtAll) {
  TempDir dir;
  testing::write_bytes(dir / "tokenizer.json", "{\"model\": [1, 2");
  try {
    JsonTokenizer t(dir / "tokenizer.json", dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: not valid JSON"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace smelt::tok
