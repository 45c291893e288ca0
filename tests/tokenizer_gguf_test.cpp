// Tokenizers from GGUF vocabularies (docs/tokenizer.md, "Tokenizers from GGUF files"): models
// exported by `smelt merge ... out.gguf` with a byte-level BPE tokenizer.json (GPT-2 and Llama 3
// styles, tests/node/make_tokenizers.mjs) and a SentencePiece tokenizer.model (trained by
// tests/reference/sentencepiece_ref.py) tokenize a varied corpus to exactly the ids llama.cpp
// gives for the same file (tests/node/llama_tokenize.mjs) and, where llama.cpp and Hugging Face
// agree by design, the ids of the model folder's own tokenizer. Malformed keys are clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "llama_cpp_client.h"
#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "smelt/tokenizer/gguf_vocab.h"
#include "smelt/tokenizer/tokenizer.h"
#include "test_util.h"

namespace smelt::tok {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::llama_cpp_opted_out;
using testing::node_llama_cpp_missing;
using testing::quote;
using testing::read_bytes;
using testing::run_command;
using testing::run_smelt;
using testing::TempDir;
using testing::write_bytes;

const char* const kPython = "/usr/bin/python3";  // Debian's, with python3-sentencepiece

fs::path node_dir() { return fs::path(SMELT_SOURCE_DIR) / "tests" / "node"; }
fs::path corpus_path() { return fs::path(SMELT_SOURCE_DIR) / "tests/data/tokenizer_corpus.txt"; }

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The texts every tokenizer is checked on: each corpus line, the whole corpus, and strings aimed
// at the edges (whitespace runs, newlines, digits, emoji, CJK, accents, added tokens).
std::vector<std::string> texts() {
  std::vector<std::string> out;
  const std::string corpus = read_bytes(corpus_path());
  size_t at = 0;
  while (at <= corpus.size()) {
    size_t nl = corpus.find('\n', at);
    if (nl == std::string::npos) nl = corpus.size();
    out.push_back(corpus.substr(at, nl - at));
    at = nl + 1;
  }
  out.push_back(corpus);
  for (const char* s : {
           "",
           " ",
           "  ",
           "\n",
           "\n\n\n",
           " \n ",
           "\t",
           "a",
           " a",
           "a ",
           "Hello world",
           " Hello  world   ",
           "hello\nworld\n",
           "line one\r\nline two\r\n",
           "  leading spaces",
           "trailing spaces   ",
           "tabs\tand\t\tmore",
           "12345678901234567890",
           "3.14159 2,718 1e-9",
           "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xc3\x85ngstr\xc3\xb6m",
           "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c",  // 你好，世界
           "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9"
           "\xe3\x83\x88",  // 日本語のテキスト
           "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd "
           "\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5",
           "don't we'll THEY'RE it's",
           "<s> hello </s>",
           "<|endoftext|>",
           "a<|endoftext|>b",
           "<|im_start|>user\nhi<|im_end|>",
           "x<|im_end|>y",
           " <|im_end|> ",
           "<tool_call>{}",
           "<|begin_of_text|>text",
           "<unk>",
           "<0x41>",
           "\xe2\x96\x81 lower block",
       }) {
    out.emplace_back(s);
  }
  return out;
}

// Whether `text` holds the spelling of a token that is special or added in some test tokenizer
// (Hugging Face and llama.cpp split such text differently by design).
bool has_added_token_text(const std::string& text) {
  for (const char* t : {"<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                        "<|begin_of_text|>", "<|end_of_text|>", "<tool_call>"}) {
    if (text.find(t) != std::string::npos) return true;
  }
  return false;
}

struct LlamaCpp {
  int64_t bos = -1, eos = -1;
  std::vector<std::vector<int32_t>> ids;
};

// llama.cpp's ids for `texts` (tests/node/llama_tokenize.mjs).
LlamaCpp llama_cpp_tokenize(const fs::path& gguf, const std::vector<std::string>& texts,
                            const fs::path& work, bool parse_special = false) {
  const fs::path in = work / "texts.json";
  write_bytes(in, json(texts).dump());
  const fs::path out = work / "llama_ids.json";
  const fs::path err = work / "llama_err.txt";
  auto r = run_command(testing::node_command() + " " + quote(node_dir() / "llama_tokenize.mjs") +
                       " " + quote(gguf) + " " + quote(in) + (parse_special ? " --special" : "") +
                       " > " + quote(out) + " 2> " + quote(err));
  if (r.exit_code != 0) throw std::runtime_error("llama_tokenize.mjs failed: " + read_bytes(err));
  const json j = json::parse(read_bytes(out));
  LlamaCpp l;
  l.bos = j.at("bos").is_number() ? j.at("bos").get<int64_t>() : -1;
  l.eos = j.at("eos").is_number() ? j.at("eos").get<int64_t>() : -1;
  for (const auto& v : j.at("ids")) l.ids.push_back(v.get<std::vector<int32_t>>());
  return l;
}

// One exported model: the HF folder and its GGUF.
struct Exported {
  fs::path folder;
  fs::path gguf;
};

// Writes a tiny model around the tokenizer files in `tokenizer_dir` and exports it to GGUF with
// `smelt merge` (passthrough).
Exported export_model(const fs::path& work, const std::string& name, const fs::path& tokenizer_file,
                      size_t vocab, const json& tokenizer_config) {
  Exported e{work / name, work / (name + ".gguf")};
  auto made = run_smelt(fmt::format(
      "dev make-model {} --hidden 32 --heads 2 --kv-heads 1 --layers 1 --vocab {} --dtype F32",
      quote(e.folder), vocab));
  if (made.exit_code != 0) throw std::runtime_error("make-model failed: " + made.output);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    fs::remove(e.folder / f);
  }
  fs::copy_file(tokenizer_file, e.folder / tokenizer_file.filename());
  if (!tokenizer_config.is_null())
    write_bytes(e.folder / "tokenizer_config.json", tokenizer_config.dump());
  write_bytes(
      work / (name + ".yml"),
      fmt::format("models:\n  - model: {}\nmerge_method: passthrough\n", e.folder.string()));
  auto merged = run_smelt(
      fmt::format("merge -q --out-type F32 {} {}", quote(work / (name + ".yml")), quote(e.gguf)));
  if (merged.exit_code != 0) throw std::runtime_error("merge failed: " + merged.output);
  return e;
}

class TokGguf : public ::testing::Test {
 protected:
  static bool skip_node_tests() {
    const char* v = std::getenv("SMELT_SKIP_NODE_TESTS");
    return v != nullptr && std::string(v) == "1";
  }
  static void SetUpTestSuite() {
    // The test models come from the reference library's Node binding (make_tokenizers.mjs).
    if (skip_node_tests()) return;
    dir_ = std::make_unique<TempDir>();
    try {
      const fs::path work = dir_->path();
      // Byte-level BPE tokenizer.json files in the GPT-2 and Llama 3 shapes.
      const fs::path err = work / "stderr.txt";
      auto made = run_command(
          testing::node_command() + " " + quote(node_dir() / "make_tokenizers.mjs") + " " +
          quote(work / "tok") + " " + quote(corpus_path()) + " gpt2 llama3 llama2 2>" + quote(err));
      if (made.exit_code != 0) {
        throw std::runtime_error("make_tokenizers.mjs failed:\n" + made.output + read_bytes(err));
      }
      for (const char* style : {"gpt2", "llama3", "llama2"}) {
        const fs::path tj = work / "tok" / style / "tokenizer.json";
        auto t = Tokenizer::load(tj);
        models_[style] = export_model(work, style, tj, t->vocab_size(), json());
      }
      // Variants: Qwen2's regex (digits one by one, merges not ignored), exported as "qwen2";
      // GPT-2 without its regex, which smelt exports as llama.cpp's generic "default".
      json qwen2 = json::parse(read_bytes(work / "tok" / "llama3" / "tokenizer.json"));
      std::string& pattern =
          qwen2["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].get_ref<std::string&>();
      const size_t digits = pattern.find("\\p{N}{1,3}");
      if (digits == std::string::npos) throw std::runtime_error("llama3 style: no \\p{N}{1,3}");
      pattern.replace(digits, 10, "\\p{N}");
      qwen2["model"]["ignore_merges"] = false;
      write_bytes(work / "tok" / "qwen2.json", qwen2.dump());
      json plain = json::parse(read_bytes(work / "tok" / "gpt2" / "tokenizer.json"));
      plain["pre_tokenizer"]["use_regex"] = false;
      write_bytes(work / "tok" / "default.json", plain.dump());
      for (const char* style : {"qwen2", "default"}) {
        const fs::path src = work / "tok" / (std::string(style) + ".json");
        fs::create_directories(work / "tok" / style);
        fs::rename(src, work / "tok" / style / "tokenizer.json");
        const fs::path tj = work / "tok" / style / "tokenizer.json";
        models_[style] = export_model(work, style, tj, Tokenizer::load(tj)->vocab_size(), json());
      }
      // A SentencePiece BPE model with byte fallback (Llama / Mistral style).
      auto sp =
          run_command(std::string(kPython) + " " +
                      quote(fs::path(SMELT_SOURCE_DIR) / "tests/reference/sentencepiece_ref.py") +
                      " " + quote(work / "sp") + " " + quote(corpus_path()) + " > " +
                      quote(work / "sp.json") + " 2>" + quote(err));
      if (sp.exit_code != 0) {
        throw std::runtime_error("sentencepiece_ref.py needs " + std::string(kPython) +
                                 " with sentencepiece:\n" + read_bytes(err));
      }
      const fs::path model = work / "sp" / "bpe" / "tokenizer.model";
      const size_t n = Tokenizer::load(model)->vocab_size();
      models_["spm"] = export_model(work, "spm", model, n,
                                    {{"add_bos_token", true},
                                     {"add_eos_token", false},
                                     {"bos_token", "<s>"},
                                     {"eos_token", "</s>"},
                                     {"unk_token", "<unk>"}});
    } catch (const std::exception& e) {
      setup_error_ = e.what();
    }
  }
  static void TearDownTestSuite() { dir_.reset(); }
  void SetUp() override {
    if (skip_node_tests()) GTEST_SKIP() << "SMELT_SKIP_NODE_TESTS=1";
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }

  static const Exported& model(const std::string& name) { return models_.at(name); }

  // Checks the GGUF tokenizer of `name` against llama.cpp (every text) and the folder's own
  // tokenizer (texts without added-token spellings).
  static void expect_matches(const std::string& name, bool compare_folder = true) {
    const Exported& m = model(name);
    auto file = io::GgufFile::open(m.gguf);
    auto gguf = load_gguf_tokenizer(*file);
    auto hf = Tokenizer::load(m.folder);
    ASSERT_EQ(gguf->kind(), "gguf");
    ASSERT_EQ(gguf->vocab_size(), hf->vocab_size());
    const std::vector<std::string> all = texts();

    size_t hf_checked = 0, hf_differ = 0;
    std::vector<std::vector<int32_t>> ours;
    for (const std::string& text : all) {
      const Encoding plain = gguf->encode(text, {.add_special_tokens = false});
      ours.push_back(plain.ids);
      ASSERT_EQ(plain.tokens.size(), plain.ids.size());
      if (!compare_folder || has_added_token_text(text)) continue;
      ++hf_checked;
      const Encoding want = hf->encode(text, {.add_special_tokens = false});
      if (plain.ids != want.ids) {
        ++hf_differ;
        ADD_FAILURE() << name << ": ids differ from the folder's tokenizer for: " << text
                      << "\n  gguf: " << json(plain.ids).dump()
                      << "\n  hf:   " << json(want.ids).dump();
        continue;
      }
      EXPECT_EQ(plain.tokens, want.tokens) << text;
      EXPECT_EQ(gguf->encode(text).ids, hf->encode(text).ids) << "with special tokens: " << text;
      EXPECT_EQ(gguf->decode(plain.ids), hf->decode(want.ids)) << text;
    }
    if (compare_folder) EXPECT_GT(hf_checked, 200u);
    EXPECT_EQ(hf_differ, 0u);
    if (compare_folder) {
      std::cout << name << ": " << hf_checked << " texts equal to the folder's tokenizer\n";
    }

    if (const std::string why = node_llama_cpp_missing(); !why.empty()) {
      if (llama_cpp_opted_out()) return;
      FAIL() << why << ": run scripts/setup.sh, or set SMELT_SKIP_LLAMA_CPP=1";
    }
    const LlamaCpp l = llama_cpp_tokenize(m.gguf, all, dir_->path());
    ASSERT_EQ(l.ids.size(), all.size());
    size_t differ = 0, tokens = 0;
    for (size_t i = 0; i < all.size(); ++i) {
      tokens += ours[i].size();
      if (ours[i] != l.ids[i]) {
        ++differ;
        ADD_FAILURE() << name << ": ids differ from llama.cpp for: " << all[i]
                      << "\n  smelt:     " << json(ours[i]).dump()
                      << "\n  llama.cpp: " << json(l.ids[i]).dump();
      }
    }
    EXPECT_EQ(differ, 0u);
    std::cout << name << ": " << all.size() << " texts (" << tokens
              << " tokens) equal to llama.cpp's ids\n";

    // parse_special: control tokens written in the text are split out as well.
    auto special = load_gguf_tokenizer(*file, {.parse_special = true});
    const LlamaCpp ls = llama_cpp_tokenize(m.gguf, all, dir_->path(), /*parse_special=*/true);
    ASSERT_EQ(ls.ids.size(), all.size());
    size_t special_differ = 0, special_changed = 0;
    for (size_t i = 0; i < all.size(); ++i) {
      const auto got = special->encode(all[i], {.add_special_tokens = false}).ids;
      if (got != ours[i]) ++special_changed;
      if (got != ls.ids[i]) {
        ++special_differ;
        ADD_FAILURE() << name << ": parse_special ids differ from llama.cpp for: " << all[i]
                      << "\n  smelt:     " << json(got).dump()
                      << "\n  llama.cpp: " << json(ls.ids[i]).dump();
      }
    }
    EXPECT_EQ(special_differ, 0u);
    EXPECT_GT(special_changed, 0u) << "no text of the corpus holds a control token";
    const GgufTokenizerInfo info = read_gguf_tokenizer_info(*file);
    // node-llama-cpp reports BOS / EOS only when they are control tokens.
    if (l.bos >= 0) EXPECT_EQ(info.bos_id.value_or(-1), l.bos);
    if (l.eos >= 0) EXPECT_EQ(info.eos_id.value_or(-1), l.eos);
  }

  static std::unique_ptr<TempDir> dir_;
  static std::map<std::string, Exported> models_;
  static std::string setup_error_;
};
std::unique_ptr<TempDir> TokGguf::dir_;
std::map<std::string, Exported> TokGguf::models_;
std::string TokGguf::setup_error_;

TEST_F(TokGguf, Gpt2ByteLevelBpeMatchesLlamaCppAndFolder) {
  REQUIRE_NODE_LLAMA_CPP();
  expect_matches("gpt2");
}

TEST_F(TokGguf, Llama3ByteLevelBpeMatchesLlamaCppAndFolder) {
  REQUIRE_NODE_LLAMA_CPP();
  expect_matches("llama3");
}

TEST_F(TokGguf, Qwen2ByteLevelBpeMatchesLlamaCppAndFolder) {
  REQUIRE_NODE_LLAMA_CPP();
  auto file = io::GgufFile::open(model("qwen2").gguf);
  ASSERT_EQ(read_gguf_tokenizer_info(*file).pre, "qwen2");
  expect_matches("qwen2");
}

// llama.cpp's generic splitting (four regexes one after the other) is not the folder's
// tokenizer, so only llama.cpp is the reference.
TEST_F(TokGguf, DefaultPreTokenizerMatchesLlamaCpp) {
  REQUIRE_NODE_LLAMA_CPP();
  auto file = io::GgufFile::open(model("default").gguf);
  ASSERT_EQ(read_gguf_tokenizer_info(*file).pre, "default");
  expect_matches("default", /*compare_folder=*/false);
}

// A SentencePiece-style BPE tokenizer.json (byte fallback), which smelt exports as "llama" with
// equal scores as llama.cpp's converter does: llama.cpp's score-ordered merging then differs from
// the folder's merge ranks, so only llama.cpp is the reference.
TEST_F(TokGguf, LlamaVocabularyFromTokenizerJsonMatchesLlamaCpp) {
  REQUIRE_NODE_LLAMA_CPP();
  auto file = io::GgufFile::open(model("llama2").gguf);
  ASSERT_EQ(read_gguf_tokenizer_info(*file).model, "llama");
  expect_matches("llama2", /*compare_folder=*/false);
}

TEST_F(TokGguf, SentencePieceMatchesLlamaCppAndFolder) {
  REQUIRE_NODE_LLAMA_CPP();
  expect_matches("spm");
}

TEST_F(TokGguf, InfoAndSpecialTokens) {
  {
    auto file = io::GgufFile::open(model("llama3").gguf);
    const GgufTokenizerInfo info = read_gguf_tokenizer_info(*file);
    EXPECT_EQ(info.model, "gpt2");
    EXPECT_EQ(info.pre, "llama-bpe");
    auto t = load_gguf_tokenizer(*file);
    const int32_t bos = *t->token_to_id("<|begin_of_text|>");
    EXPECT_EQ(info.bos_id, bos);
    EXPECT_TRUE(info.add_bos);
    EXPECT_TRUE(t->is_special(bos));
    const auto with = t->encode("hi there").ids;
    ASSERT_FALSE(with.empty());
    EXPECT_EQ(with.front(), bos);
    EXPECT_EQ(t->decode(with), "<|begin_of_text|>hi there");
    EXPECT_EQ(t->decode(with, {.skip_special_tokens = true}), "hi there");
    // Control tokens written in the text stay text; user-defined tokens are split out.
    const auto ctl = t->encode("<|im_start|>", {.add_special_tokens = false}).ids;
    EXPECT_GT(ctl.size(), 1u);
    const int32_t tool = *t->token_to_id("<tool_call>");
    EXPECT_FALSE(t->is_special(tool));
    EXPECT_EQ(t->encode("a<tool_call>b", {.add_special_tokens = false}).ids.at(1), tool);
  }
  {
    auto file = io::GgufFile::open(model("gpt2").gguf);
    const GgufTokenizerInfo info = read_gguf_tokenizer_info(*file);
    EXPECT_EQ(info.pre, "gpt-2");
    EXPECT_FALSE(info.add_bos);
  }
  {
    auto file = io::GgufFile::open(model("spm").gguf);
    const GgufTokenizerInfo info = read_gguf_tokenizer_info(*file);
    EXPECT_EQ(info.model, "llama");
    EXPECT_TRUE(info.add_bos);
    EXPECT_TRUE(info.add_space_prefix);
    auto t = load_gguf_tokenizer(*file);
    EXPECT_EQ(info.bos_id, t->token_to_id("<s>"));
    EXPECT_EQ(info.eos_id, t->token_to_id("</s>"));
    const auto ids = t->encode("Hello world \xf0\x9f\x98\x80").ids;  // emoji: byte tokens
    EXPECT_EQ(ids.front(), *info.bos_id);
    EXPECT_EQ(t->decode(ids), "Hello world \xf0\x9f\x98\x80");
    // User-defined tokens are split out, and the text after them gets its own space prefix.
    const int32_t im_start = *t->token_to_id("<|im_start|>");
    const auto u = t->encode("a<|im_start|>b", {.add_special_tokens = false}).ids;
    EXPECT_EQ(u, (std::vector<int32_t>{*t->token_to_id("\xe2\x96\x81"
                                                       "a"),
                                       im_start,
                                       *t->token_to_id("\xe2\x96\x81"
                                                       "b")}));
    EXPECT_FALSE(t->is_special(im_start));
    // llama.cpp makes end-of-turn tokens such as <|im_end|> control tokens by their text, so they
    // are not split out of plain text even when the file says user-defined.
    const int32_t im_end = *t->token_to_id("<|im_end|>");
    EXPECT_TRUE(t->is_special(im_end));
    const auto e = t->encode("a<|im_end|>", {.add_special_tokens = false}).ids;
    EXPECT_EQ(std::find(e.begin(), e.end(), im_end), e.end());
    EXPECT_TRUE(t->encode("", {.add_special_tokens = false}).ids.empty());
    EXPECT_EQ(t->encode("").ids, std::vector<int32_t>{*info.bos_id});
  }
}

// Tokenizer::load and `smelt tokenize` take a .gguf file.
TEST_F(TokGguf, LoadAndCliTakeGgufFiles) {
  const fs::path gguf = model("llama3").gguf;
  auto t = Tokenizer::load(gguf);
  EXPECT_EQ(t->kind(), "gguf");
  const std::string text = "Hello world, 12345!";
  const auto want = t->encode(text);
  auto r = run_smelt("tokenize --json " + quote(gguf) + " " + quote(fs::path(text)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json out = json::parse(r.output);
  EXPECT_EQ(out.at("ids").get<std::vector<int32_t>>(), want.ids) << r.output;
}

// A copy of `src` with `edit` applied to its KVs (tensors dropped: only the vocabulary matters).
fs::path rewrite(const fs::path& src, const fs::path& dst,
                 const std::function<void(std::vector<io::GgufKv>&)>& edit) {
  auto file = io::GgufFile::open(src);
  std::vector<io::GgufKv> kvs = file->kvs();
  edit(kvs);
  io::GgufWriter w(dst, kvs, {});
  w.finish();
  return dst;
}

std::string load_error(const fs::path& p) {
  return error_of([&] {
    auto f = io::GgufFile::open(p);
    load_gguf_tokenizer(*f);
  });
}

TEST_F(TokGguf, MalformedKeysAreClearErrors) {
  const fs::path work = dir_->path();
  const fs::path gpt2 = model("llama3").gguf;
  const fs::path spm = model("spm").gguf;
  auto tokens_of = [](const fs::path& p) {
    auto f = io::GgufFile::open(p);
    auto v = *f->find_kv("tokenizer.ggml.tokens")->string_array();
    return std::vector<std::string>(v.begin(), v.end());
  };
  const std::vector<std::string> tokens = tokens_of(gpt2);
  struct Case {
    const char* what;
    fs::path base;
    std::function<void(std::vector<io::GgufKv>&)> edit;
    std::vector<std::string> expect;  // substrings of the message
  };
  auto set = [](const char* key, io::GgufValue v) {
    return [key, v](std::vector<io::GgufKv>& kvs) { io::gguf_set_kv(kvs, key, v); };
  };
  std::vector<std::string> dup = tokens;
  dup[300] = dup[301];
  std::vector<std::string> empty = tokens;
  empty[5] = "";
  std::vector<int32_t> bad_types(tokens.size(), 1);
  bad_types[7] = 9;
  const std::vector<Case> cases = {
      {"missing model",
       gpt2,
       [](auto& kvs) { io::gguf_remove_kv(kvs, "tokenizer.ggml.model"); },
       {"tokenizer.ggml.model", "missing"}},
      {"unknown model",
       gpt2,
       set("tokenizer.ggml.model", io::GgufValue::of("bert")),
       {"tokenizer.ggml.model", "'bert'", "gpt2"}},
      {"unknown pre",
       gpt2,
       set("tokenizer.ggml.pre", io::GgufValue::of("mystery")),
       {"tokenizer.ggml.pre", "'mystery'", "llama-bpe", "qwen2", "gpt-2", "default"}},
      {"missing tokens",
       gpt2,
       [](auto& kvs) { io::gguf_remove_kv(kvs, "tokenizer.ggml.tokens"); },
       {"tokenizer.ggml.tokens", "missing"}},
      {"tokens not strings",
       gpt2,
       set("tokenizer.ggml.tokens", io::GgufValue::array(std::vector<int32_t>{1, 2})),
       {"tokenizer.ggml.tokens", "strings"}},
      {"duplicate token",
       gpt2,
       set("tokenizer.ggml.tokens", io::GgufValue::array(dup)),
       {"tokenizer.ggml.tokens", "ids 300 and 301"}},
      {"short token_type",
       gpt2,
       set("tokenizer.ggml.token_type", io::GgufValue::array(std::vector<int32_t>{1, 1})),
       {"tokenizer.ggml.token_type", "2 elements", std::to_string(tokens.size())}},
      {"bad token type",
       gpt2,
       set("tokenizer.ggml.token_type", io::GgufValue::array(bad_types)),
       {"tokenizer.ggml.token_type", "token 7", "type 9"}},
      {"bos out of range",
       gpt2,
       set("tokenizer.ggml.bos_token_id", io::GgufValue::of(uint32_t{1u << 30})),
       {"tokenizer.ggml.bos_token_id", "out of range"}},
      {"bos not an integer",
       gpt2,
       set("tokenizer.ggml.eos_token_id", io::GgufValue::of("x")),
       {"tokenizer.ggml.eos_token_id", "token id"}},
      {"add_bos not a bool",
       gpt2,
       set("tokenizer.ggml.add_bos_token", io::GgufValue::of(uint32_t{1})),
       {"tokenizer.ggml.add_bos_token", "bool"}},
      {"missing merges",
       gpt2,
       [](auto& kvs) { io::gguf_remove_kv(kvs, "tokenizer.ggml.merges"); },
       {"tokenizer.ggml.merges", "missing"}},
      {"merge without space",
       gpt2,
       set("tokenizer.ggml.merges", io::GgufValue::array(std::vector<std::string>{"ab"})),
       {"tokenizer.ggml.merges", "merge 0", "'left right'"}},
      {"merge of unknown tokens",
       gpt2,
       set("tokenizer.ggml.merges",
           io::GgufValue::array(std::vector<std::string>{"zz\xe2\x98\x83 q"})),
       {"tokenizer.ggml.merges", "merge 0", "not a token"}},
      {"scores not numbers",
       spm,
       set("tokenizer.ggml.scores", io::GgufValue::array(std::vector<std::string>{"a"})),
       {"tokenizer.ggml.scores"}},
      {"short scores",
       spm,
       set("tokenizer.ggml.scores", io::GgufValue::array(std::vector<float>{0.0f})),
       {"tokenizer.ggml.scores", "1 elements"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const fs::path p = rewrite(c.base, work / fmt::format("bad{}.gguf", i), c.edit);
    const std::string msg = load_error(p);
    EXPECT_NE(msg.find(p.string()), std::string::npos) << c.what << ": " << msg;
    for (const std::string& s : c.expect) {
      EXPECT_NE(msg.find(s), std::string::npos) << c.what << ": '" << s << "' not in: " << msg;
    }
  }
  // A byte token not spelled <0xNN>, and a NaN score.
  {
    auto f = io::GgufFile::open(spm);
    auto v = *f->find_kv("tokenizer.ggml.tokens")->string_array();
    std::vector<std::string> toks(v.begin(), v.end());
    const auto types_v = f->find_kv("tokenizer.ggml.token_type");
    size_t byte_id = 0;
    for (size_t i = 0; i < toks.size(); ++i) {
      if (types_v->at(i).as_int() == 6) {
        byte_id = i;
        break;
      }
    }
    ASSERT_GT(byte_id, 0u);
    toks[byte_id] = "<0xzz>";
    const fs::path p = rewrite(spm, work / "badbyte.gguf",
                               set("tokenizer.ggml.tokens", io::GgufValue::array(toks)));
    const std::string msg = load_error(p);
    EXPECT_NE(msg.find("tokenizer.ggml.token_type"), std::string::npos) << msg;
    EXPECT_NE(msg.find("<0xzz>"), std::string::npos) << msg;
    std::vector<float> scores(toks.size(), 0.0f);
    scores[9] = std::nanf("");
    const fs::path q =
        rewrite(spm, work / "nan.gguf", set("tokenizer.ggml.scores", io::GgufValue::array(scores)));
    const std::string nan_msg = load_error(q);
    EXPECT_NE(nan_msg.find("tokenizer.ggml.scores"), std::string::npos) << nan_msg;
    EXPECT_NE(nan_msg.find("not finite"), std::string::npos) << nan_msg;
  }
  // An empty token is named "[EMPTY_<id>]", as llama.cpp names it.
  {
    const fs::path p = rewrite(gpt2, work / "empty.gguf",
                               set("tokenizer.ggml.tokens", io::GgufValue::array(empty)));
    auto f = io::GgufFile::open(p);
    EXPECT_EQ(load_gguf_tokenizer(*f)->id_to_token(5), "[EMPTY_5]");
  }
  // Decoding an id past the vocabulary names it.
  auto f = io::GgufFile::open(gpt2);
  auto t = load_gguf_tokenizer(*f);
  const std::string msg = error_of([&] { t->decode({static_cast<int32_t>(tokens.size())}); });
  EXPECT_NE(msg.find("out of range"), std::string::npos) << msg;
}

}  // namespace
}  // namespace smelt::tok
