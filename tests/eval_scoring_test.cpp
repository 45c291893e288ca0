// Scoring (perplexity, task lines, sampling) against values computed by hand from a language
// model whose logits the test constructs (docs/eval.md).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "smelt/error.h"
#include "smelt/eval/perplexity.h"
#include "smelt/eval/sampler.h"
#include "smelt/eval/tasks.h"
#include "test_util.h"

namespace smelt::eval {
namespace {

using smelt::testing::TempDir;
using smelt::testing::write_bytes;

// Bytes as tokens: id = byte + 1; id 0 is BOS, added by encode with special tokens; id 257 EOS.
class ByteTokenizer : public tok::Tokenizer {
 public:
  tok::Encoding encode(std::string_view text, const tok::EncodeOptions& o) const override {
    tok::Encoding e;
    if (o.add_special_tokens) e.ids.push_back(0);
    for (unsigned char c : text) e.ids.push_back(c + 1);
    e.tokens.resize(e.ids.size());
    return e;
  }
  std::string decode(const std::vector<int32_t>& ids, const tok::DecodeOptions&) const override {
    std::string s;
    for (int32_t id : ids)
      if (id >= 1 && id <= 256) s.push_back(static_cast<char>(id - 1));
    return s;
  }
  size_t vocab_size() const override { return 258; }
  std::optional<int32_t> token_to_id(std::string_view) const override { return std::nullopt; }
  std::optional<std::string> id_to_token(int32_t) const override { return std::nullopt; }
  bool is_special(int32_t id) const override { return id == 0 || id == 257; }
  std::string_view kind() const override { return "bytes"; }
};

// A model whose logits after a prefix are a function of the whole prefix, so that any mistake in
// which tokens a position sees shows: logits[v] = fn(prefix, v).
class FakeLm : public infer::LanguageModel {
 public:
  using Fn = std::function<float(const std::vector<int32_t>&, int32_t)>;
  FakeLm(int vocab, int n_ctx, Fn fn) : vocab_(vocab), n_ctx_(n_ctx), fn_(std::move(fn)) {}
  int vocab_size() const override { return vocab_; }
  int context_size() const override { return n_ctx_; }
  int n_past() const override { return static_cast<int>(cache_.size()); }
  void truncate(int n) override { cache_.resize(static_cast<size_t>(n)); }
  void decode(std::span<const int32_t> tokens, int n_logits, std::vector<float>& out) override {
    if (cache_.size() + tokens.size() > static_cast<size_t>(n_ctx_)) fail("context overflow");
    out.assign(static_cast<size_t>(n_logits) * vocab_, 0.0f);
    for (size_t i = 0; i < tokens.size(); ++i) {
      cache_.push_back(tokens[i]);
      const size_t row = i + static_cast<size_t>(n_logits) - tokens.size();
      if (i + static_cast<size_t>(n_logits) >= tokens.size())
        for (int v = 0; v < vocab_; ++v) out[row * vocab_ + v] = fn_(cache_, v);
    }
    ++calls;
  }
  int calls = 0;

 private:
  int vocab_, n_ctx_;
  Fn fn_;
  std::vector<int32_t> cache_;
};

double log_softmax_of(const FakeLm::Fn& fn, const std::vector<int32_t>& prefix, int vocab,
                      int32_t token) {
  long double sum = 0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(static_cast<long double>(fn(prefix, v)));
  return static_cast<double>(fn(prefix, token) - std::log(sum));
}

// Logits that depend on the prefix length, its first token and its last token.
float mixing_fn(const std::vector<int32_t>& p, int32_t v) {
  return 0.01f * static_cast<float>((v * 7 + p.back() * 13 + p.front() * 5 + p.size() * 3) % 97);
}

TEST(EvalPerplexity, ChunksReplaceTheFirstTokenByBosAndScoreTheSecondHalf) {
  const int vocab = 50, n_ctx = 8;
  std::vector<int32_t> tokens;
  for (int i = 0; i < 27; ++i) tokens.push_back(1 + (i * 11) % 49);  // 3 chunks, 3 left over
  FakeLm lm(vocab, 16, mixing_fn);
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  o.bos = 0;
  const PerplexityResult r = perplexity(lm, tokens, o);
  // Independently: chunk c = tokens[8c, 8c+8) with its first token BOS; positions 4..6 predict
  // tokens 8c+5..8c+7.
  double nll = 0, nll2 = 0;
  size_t n = 0;
  for (int c = 0; c < 3; ++c) {
    for (int j = 4; j <= 6; ++j) {
      std::vector<int32_t> prefix(tokens.begin() + 8 * c, tokens.begin() + 8 * c + j + 1);
      prefix[0] = 0;
      const double x = -log_softmax_of(mixing_fn, prefix, vocab, tokens[8 * c + j + 1]);
      nll += x, nll2 += x * x, ++n;
    }
  }
  EXPECT_EQ(r.chunks, 3u);
  EXPECT_EQ(r.tokens, n);
  EXPECT_NEAR(r.nll_sum, nll, 1e-9);
  EXPECT_NEAR(r.ppl(), std::exp(nll / n), 1e-9);
  const double mean = nll / n;
  EXPECT_NEAR(r.ppl_stderr(), std::sqrt((nll2 / n - mean * mean) / (n - 1)) * std::exp(mean), 1e-9);
  // Without BOS replacement the first token stays: a different result.
  PerplexityOptions no_bos = o;
  no_bos.bos.reset();
  EXPECT_GT(std::abs(perplexity(lm, tokens, no_bos).nll_sum - nll), 1e-6);
}

TEST(EvalPerplexity, BitsPerByteAndEarlyStop) {
  FakeLm lm(50, 8, mixing_fn);
  std::vector<int32_t> tokens(20, 3);
  PerplexityOptions o;
  o.n_ctx = 8;
  o.bytes_of = [](const std::vector<int32_t>& t) { return static_cast<uint64_t>(2 * t.size()); };
  o.on_chunk = [](size_t done, size_t, size_t) { return done < 1; };
  const PerplexityResult r = perplexity(lm, tokens, o);
  EXPECT_EQ(r.chunks, 1u);
  EXPECT_EQ(r.chunks_total, 2u);
  EXPECT_EQ(r.bytes, 2 * r.tokens);
  EXPECT_NEAR(r.bits_per_byte(), r.nll_sum / r.bytes / std::log(2.0), 1e-12);
}

TEST(EvalPerplexity, TooShortTextIsAnError) {
  FakeLm lm(50, 64, mixing_fn);
  std::vector<int32_t> tokens(15, 3);
  PerplexityOptions o;
  o.n_ctx = 8;
  try {
    perplexity(lm, tokens, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at least 16"), std::string::npos) << e.what();
  }
}

TaskFile task_file(const TempDir& dir, const std::string& jsonl) {
  write_bytes(dir / "t.jsonl", jsonl);
  return load_task_file((dir / "t.jsonl").string());
}

// A model that continues any prompt with `text` then EOS (257), whatever came before.
FakeLm::Fn parrot(const std::string& text, size_t prompt_len) {
  return [text, prompt_len](const std::vector<int32_t>& p, int32_t v) {
    const size_t k = p.size() - prompt_len;  // tokens generated so far
    const int32_t want = k < text.size() ? static_cast<unsigned char>(text[k]) + 1 : 257;
    return v == want ? 5.0f : 0.0f;
  };
}

TEST(EvalTasks, GenerationStopsAtTheStopStringAndComparesExactly) {
  TempDir dir;
  ByteTokenizer tok;
  // prompt "1+1=" is 5 tokens with BOS.
  const TaskFile f = task_file(dir,
                               "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n"
                               "\n"
                               "{\"prompt\": \"1+1=\", \"answer\": \"2 \"}\n"
                               "{\"prompt\": \"1+1=\", \"answer\": \"2\\n3\", \"stop\": [\"4\"]}\n"
                               "{\"prompt\": \"1+1=\", \"answer\": \"2\\n\", \"max_tokens\": 2}\n");
  ASSERT_EQ(f.lines.size(), 4u);
  EXPECT_EQ(f.lines[1].line, 3u);
  FakeLm lm(258, 64, parrot("2\n34", 5));
  Scorer s{.lm = &lm, .tokenizer = &tok, .eos = {257}, .max_new_tokens = 10};
  auto r0 = score_line(s, f, f.lines[0]);
  EXPECT_EQ(r0.output, "2");
  EXPECT_TRUE(r0.correct);
  EXPECT_FALSE(score_line(s, f, f.lines[1]).correct);  // no strip: "2" != "2 "
  auto r2 = score_line(s, f, f.lines[2]);
  EXPECT_EQ(r2.output, "2\n3");
  EXPECT_TRUE(r2.correct);
  auto r3 = score_line(s, f, f.lines[3]);  // the stop string is cut on the budget's last token too
  EXPECT_EQ(r3.output, "2");
  const TaskResult t = score_task(s, f, 0);
  EXPECT_EQ(t.lines, 4u);
  EXPECT_EQ(t.exact_match, 2u);
  EXPECT_DOUBLE_EQ(t.score(), 0.5);
  EXPECT_NEAR(t.stderr_(), std::sqrt(0.25 / 3), 1e-12);
  EXPECT_EQ(score_task(s, f, 1).lines, 1u);
}

TEST(EvalTasks, GenerationStopsAtEos) {
  TempDir dir;
  ByteTokenizer tok;
  const TaskFile f = task_file(dir, "{\"prompt\": \"ab\", \"answer\": \"xyz\", \"stop\": []}\n");
  FakeLm lm(258, 64, parrot("xyz", 3));
  Scorer s{.lm = &lm, .tokenizer = &tok, .eos = {257}, .max_new_tokens = 50};
  auto r = score_line(s, f, f.lines[0]);
  EXPECT_EQ(r.output, "xyz");
  EXPECT_TRUE(r.correct);
}

// Bigram logits: the log-likelihood of a continuation is a sum the test computes by hand.
float bigram(const std::vector<int32_t>& p, int32_t v) {
  const int32_t last = p.back();
  return 0.1f * static_cast<float>((last * 31 + v * 17) % 23);
}

TEST(EvalTasks, ChoicesScoreByLogLikelihoodAndAccNormByCharacters) {
  TempDir dir;
  ByteTokenizer tok;
  // The prompt's trailing space moves into each continuation (lm-evaluation-harness).
  const TaskFile f = task_file(
      dir, "{\"prompt\": \"Q: ab \", \"choices\": [\"c\", \"dd\", \"\\u00e9e\"], \"label\": 1}\n");
  FakeLm lm(258, 64, bigram);
  Scorer s{.lm = &lm, .tokenizer = &tok, .eos = {257}};
  const LineResult r = score_line(s, f, f.lines[0]);
  ASSERT_EQ(r.loglikelihoods.size(), 3u);
  const std::vector<int32_t> ctx = tok.encode("Q: ab", {}).ids;
  const std::vector<std::string> conts = {" c", " dd",
                                          " \xc3\xa9"
                                          "e"};
  std::vector<double> want;
  for (const auto& cont : conts) {
    std::vector<int32_t> prefix = ctx;
    double ll = 0;
    for (unsigned char c : cont) {
      ll += log_softmax_of(bigram, prefix, 258, c + 1);
      prefix.push_back(c + 1);
    }
    want.push_back(ll);
  }
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(r.loglikelihoods[i], want[i], 1e-5) << i;
  const size_t best = std::max_element(want.begin(), want.end()) - want.begin();
  const std::vector<double> chars = {1, 2, 2};  // code points, not bytes: "\u00e9e" is 2
  size_t best_norm = 0;
  for (size_t i = 1; i < 3; ++i)
    if (want[i] / chars[i] > want[best_norm] / chars[best_norm]) best_norm = i;
  EXPECT_EQ(r.correct, best == 1);
  EXPECT_EQ(r.correct_norm, best_norm == 1);
  ASSERT_NE(best, best_norm) << "the test's logits must tell acc from acc_norm";
}

TEST(EvalTasks, DelimiterGoesBeforeEachChoice) {
  TempDir dir;
  ByteTokenizer tok;
  const TaskFile f = task_file(
      dir,
      "{\"prompt\": \"Q\", \"choices\": [\"a\", \"b\"], \"label\": 0, \"delimiter\": \"=\"}\n");
  FakeLm lm(258, 64, bigram);
  Scorer s{.lm = &lm, .tokenizer = &tok, .eos = {257}};
  const LineResult r = score_line(s, f, f.lines[0]);
  std::vector<int32_t> prefix = tok.encode("Q", {}).ids;
  double ll = log_softmax_of(bigram, prefix, 258, '=' + 1);
  prefix.push_back('=' + 1);
  ll += log_softmax_of(bigram, prefix, 258, 'a' + 1);
  EXPECT_NEAR(r.loglikelihoods[0], ll, 1e-5);
}

void expect_load_error(const std::string& jsonl, const std::string& needle) {
  TempDir dir;
  write_bytes(dir / "bad.jsonl", jsonl);
  try {
    load_task_file((dir / "bad.jsonl").string());
    FAIL() << "expected an error for " << jsonl;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.jsonl"), std::string::npos) << e.what();
  }
}

TEST(EvalTasks, BadLinesNameTheFileAndLine) {
  expect_load_error("{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": \"a\", \"answer\"\n",
                    "bad.jsonl:2: not valid JSON");
  expect_load_error("{\"prompt\": \"a\", \"choices\": [\"x\", \"y\"], \"label\": 2}\n",
                    ":1: \"label\" 2 is out of range");
  expect_load_error("{\"prompt\": \"a\"}\n", "neither");
  expect_load_error("{\"prompt\": \"a\", \"answer\": \"b\", \"choices\": [\"x\", \"y\"]}\n",
                    "both");
  expect_load_error("{\"prompt\": 3, \"answer\": \"b\"}\n", "\"prompt\" must be a string");
  expect_load_error("{\"prompt\": \"a\", \"choices\": [\"x\", \"\"], \"label\": 0}\n",
                    "choice 1 is empty");
  expect_load_error("\n\n", "no lines");
}

TEST(EvalTasks, PromptLongerThanTheContextIsAnError) {
  TempDir dir;
  ByteTokenizer tok;
  const TaskFile f = task_file(dir, "{\"prompt\": \"abcdefgh\", \"answer\": \"x\"}\n");
  FakeLm lm(258, 8, bigram);
  Scorer s{.lm = &lm, .tokenizer = &tok, .eos = {257}};
  try {
    score_line(s, f, f.lines[0]);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("t.jsonl:1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("raise --ctx"), std::string::npos) << e.what();
  }
}

TEST(EvalSampler, GreedyTopKTopPAndSeeds) {
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, -5.0f};
  Sampler greedy({});
  EXPECT_EQ(greedy.sample(logits.data(), logits.size()), 1);
  // top-k 1 is greedy at any temperature.
  Sampler k1({.temperature = 5.0, .top_k = 1, .seed = 3});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k1.sample(logits.data(), logits.size()), 1);
  // top-p just above p(1) keeps tokens 1 and 3 only.
  const double z = std::exp(0.0) + std::exp(3.0) + std::exp(1.0) + std::exp(2.9) + std::exp(-5.0);
  Sampler p({.temperature = 1.0, .top_p = std::exp(3.0) / z + 1e-3, .seed = 1});
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[p.sample(logits.data(), logits.size())];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[1], 150);
  EXPECT_GT(seen[3], 150);
  // The same seed draws the same tokens; another seed differs somewhere.
  Sampler a({.temperature = 1.0, .seed = 9}), b({.temperature = 1.0, .seed = 9}),
      c({.temperature = 1.0, .seed = 10});
  bool differ = false;
  for (int i = 0; i < 64; ++i) {
    const int x = a.sample(logits.data(), logits.size());
    EXPECT_EQ(x, b.sample(logits.data(), logits.size()));
    differ |= x != c.sample(logits.data(), logits.size());
  }
  EXPECT_TRUE(differ);
  EXPECT_THROW(Sampler({.top_p = 0.0}), Error);
  EXPECT_THROW(Sampler({.temperature = -1}), Error);
}

TEST(EvalSampler, TextStreamHoldsBackIncompleteCharacters) {
  ByteTokenizer tok;
  TextStream s(tok);
  EXPECT_EQ(s.push('h' + 1), "h");
  EXPECT_EQ(s.push(0xC3 + 1), "");  // first byte of "é"
  EXPECT_EQ(s.push(0xA9 + 1), "\xc3\xa9");
  EXPECT_EQ(s.push(0xE2 + 1), "");
  EXPECT_EQ(s.finish(), "\xe2");
}

}  // namespace
}  // namespace smelt::eval
