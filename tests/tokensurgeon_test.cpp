// `smelt tokensurgeon` on generated models: a model re-targeted to a donor tokenizer that holds
// the model's vocabulary in another order plus new tokens (docs/tokensurgeon.md). Shared rows are
// moved bit for bit, special tokens by role, new rows follow each method's formula computed here
// independently, and the result scores the same in `smelt eval`.
#include "smelt/surgery/tokensurgeon.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "smelt/dev/make_model.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/surgery/approximate.h"
#include "smelt/surgery/token_match.h"
#include "smelt/tokenizer/tokenizer.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::quote;
using testing::read_bytes;
using testing::run_smelt;
using testing::TempDir;
using testing::write_bytes;

const std::vector<std::string> kNewTokens = {"\xC4\xA0hello", "xyzzy", "\xC4\xA0world"};
const std::vector<std::string> kDonorSpecials = {"<|unk|>", "<|bos|>", "<|eos|>"};

// A tensor of a model folder as f32 rows.
struct Rows {
  size_t rows = 0, cols = 0;
  std::vector<float> v;
  const float* row(size_t i) const { return v.data() + i * cols; }
};

Rows read_rows(const fs::path& folder, const std::string& name) {
  auto m = io::Model::open(folder.string());
  const io::ModelTensor t = m->find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return {};
  EXPECT_EQ(t.info->dtype, DType::kF32);
  Rows r{t.info->shape[0], t.info->shape[1], {}};
  r.v.resize(r.rows * r.cols);
  t.file->read(*t.info, 0, r.v.data(), t.info->nbytes);
  return r;
}

std::string raw_row(const fs::path& folder, const std::string& name, size_t row) {
  auto m = io::Model::open(folder.string());
  const io::ModelTensor t = m->find(name);
  const uint64_t row_bytes = t.info->nbytes / t.info->shape[0];
  std::string s(row_bytes, '\0');
  t.file->read(*t.info, row * row_bytes, s.data(), row_bytes);
  return s;
}

json read_json(const fs::path& p) { return json::parse(read_bytes(p)); }

void make(const fs::path& dir, DType dtype, bool tied, uint64_t seed = 1) {
  dev::MakeModelOptions o;
  o.hidden_size = 64;
  o.num_layers = 2;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.vocab_size = 320;
  o.dtype = dtype;
  o.tied_embeddings = tied;
  o.seed = seed;
  dev::make_model(o, dir);
}

// A donor tokenizer folder: `fresh` tokens first, then the model's non-special tokens in reverse
// id order, then the specials under other names (declared by role). Returns the donor's tokens in
// id order.
std::vector<std::string> make_donor_tokenizer(const fs::path& model, const fs::path& dir,
                                              const std::vector<std::string>& fresh) {
  fs::create_directories(dir);
  json tj = read_json(model / "tokenizer.json");
  std::vector<std::string> model_tokens(tj["model"]["vocab"].size());
  for (auto& [tok, id] : tj["model"]["vocab"].items()) model_tokens[id.get<size_t>()] = tok;
  std::vector<std::string> donor = fresh;
  for (size_t i = model_tokens.size(); i-- > 3;) donor.push_back(model_tokens[i]);
  for (const auto& s : kDonorSpecials) donor.push_back(s);
  json vocab = json::object();
  for (size_t i = 0; i < donor.size(); ++i) vocab[donor[i]] = i;
  tj["model"]["vocab"] = vocab;
  json added = json::array();
  for (const auto& s : kDonorSpecials) {
    added.push_back({{"id", vocab[s]},
                     {"content", s},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  tj["added_tokens"] = added;
  write_bytes(dir / "tokenizer.json", tj.dump());
  const json roles = {{"unk_token", kDonorSpecials[0]},
                      {"bos_token", kDonorSpecials[1]},
                      {"eos_token", kDonorSpecials[2]}};
  json tc = roles;
  tc["add_bos_token"] = true;
  tc["add_eos_token"] = false;
  tc["tokenizer_class"] = "PreTrainedTokenizerFast";
  write_bytes(dir / "tokenizer_config.json", tc.dump());
  write_bytes(dir / "special_tokens_map.json", roles.dump());
  return donor;
}

size_t index_of(const std::vector<std::string>& v, const std::string& s) {
  return static_cast<size_t>(std::find(v.begin(), v.end(), s) - v.begin());
}

// Model (F32, untied) + tokenizer-only donor.
struct Fixture {
  TempDir dir;
  fs::path model, donor, out;
  std::vector<std::string> donor_tokens;
  std::unique_ptr<tok::Tokenizer> model_tok;
  Fixture(DType dtype = DType::kF32, bool tied = false,
          const std::vector<std::string>& fresh = kNewTokens) {
    model = dir / "model", donor = dir / "donor", out = dir / "out";
    make(model, dtype, tied);
    donor_tokens = make_donor_tokenizer(model, donor, fresh);
    model_tok = tok::Tokenizer::load(model);
  }
  int32_t model_id(const std::string& t) const { return *model_tok->token_to_id(t); }
  size_t donor_id(const std::string& t) const { return index_of(donor_tokens, t); }
  surgery::TokenSurgeonReport run(const std::string& method, surgery::TokenSurgeonOptions o = {}) {
    o.method = method;
    o.threads = 2;
    return surgery::token_surgeon(model.string(), donor.string(), out, o);
  }
};

// Every token the donor shares with the model: its row at the donor id equals the model's row.
void expect_shared_rows_moved(const Fixture& f, const std::string& name) {
  const Rows orig = read_rows(f.model, name), now = read_rows(f.out, name);
  ASSERT_EQ(now.rows, f.donor_tokens.size());
  ASSERT_EQ(now.cols, orig.cols);
  size_t shared = 0;
  for (size_t id = 0; id < f.donor_tokens.size(); ++id) {
    auto mid = f.model_tok->token_to_id(f.donor_tokens[id]);
    if (!mid) continue;
    ++shared;
    EXPECT_EQ(std::memcmp(now.row(id), orig.row(*mid), orig.cols * 4), 0) << f.donor_tokens[id];
  }
  EXPECT_EQ(shared, 317u);
  // Special tokens by role: <|bos|> gets <s>'s row, <|eos|> </s>'s, <|unk|> <unk>'s.
  const char* model_specials[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(std::memcmp(now.row(f.donor_id(kDonorSpecials[i])),
                          orig.row(f.model_id(model_specials[i])), orig.cols * 4),
              0)
        << kDonorSpecials[i];
  }
}

TEST(TokenSurgeon, SharedRowsMoveBitwiseAndNewRowsAreTheMeanOfAllRows) {
  Fixture f;
  const auto r = f.run("mean");
  EXPECT_EQ(r.embed_name, "model.embed_tokens.weight");
  EXPECT_EQ(r.head_name, "lm_head.weight");
  EXPECT_EQ(r.donor_vocab, 323u);
  EXPECT_EQ(r.embed_counts.exact, 320u);
  EXPECT_EQ(r.embed_counts.approximated, 3u);
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    expect_shared_rows_moved(f, name);
    const Rows orig = read_rows(f.model, name), now = read_rows(f.out, name);
    for (const auto& t : kNewTokens) {
      for (size_t c = 0; c < orig.cols; ++c) {
        double mean = 0;
        for (size_t row = 0; row < orig.rows; ++row) mean += orig.row(row)[c];
        mean /= static_cast<double>(orig.rows);
        EXPECT_NEAR(now.row(f.donor_id(t))[c], mean, 1e-7) << name << " " << t << " " << c;
      }
    }
  }
  // Every other tensor unchanged, bit for bit.
  auto a = io::Model::open(f.model.string()), b = io::Model::open(f.out.string());
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  for (const auto& t : a->tensors()) {
    if (t.info->name == "model.embed_tokens.weight" || t.info->name == "lm_head.weight") continue;
    const io::ModelTensor u = b->find(t.info->name);
    ASSERT_NE(u.info, nullptr) << t.info->name;
    ASSERT_EQ(u.info->shape, t.info->shape);
    std::string x(t.info->nbytes, '\0'), y(u.info->nbytes, '\0');
    t.file->read(*t.info, 0, x.data(), x.size());
    u.file->read(*u.info, 0, y.data(), y.size());
    EXPECT_EQ(x, y) << t.info->name;
  }
  // config.json: the donor's vocabulary size and special ids; the donor's tokenizer files.
  const json cfg = read_json(f.out / "config.json");
  EXPECT_EQ(cfg["vocab_size"], 323);
  EXPECT_EQ(cfg["bos_token_id"], f.donor_id("<|bos|>"));
  EXPECT_EQ(cfg["eos_token_id"], f.donor_id("<|eos|>"));
  EXPECT_EQ(cfg["hidden_size"], 64);
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    EXPECT_EQ(read_bytes(f.out / file), read_bytes(f.donor / file)) << file;
  }
  if (fs::exists(f.out / "generation_config.json")) {
    const json gen = read_json(f.out / "generation_config.json");
    if (gen.contains("bos_token_id")) EXPECT_EQ(gen["bos_token_id"], f.donor_id("<|bos|>"));
  }
}

TEST(TokenSurgeon, BF16RowsAreCopiedBitForBit) {
  Fixture f(DType::kBF16);
  f.run("zero");
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    for (const std::string t : {"a", "\xC4\xA0t", "q"}) {
      EXPECT_EQ(raw_row(f.out, name, f.donor_id(t)), raw_row(f.model, name, f.model_id(t)))
          << name << " " << t;
    }
    EXPECT_EQ(raw_row(f.out, name, f.donor_id("xyzzy")), std::string(128, '\0'));
  }
}

TEST(TokenSurgeon, ZeroGivesNewTokensZeroRows) {
  Fixture f;
  f.run("zero");
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    expect_shared_rows_moved(f, name);
    const Rows now = read_rows(f.out, name);
    for (const auto& t : kNewTokens) {
      for (size_t c = 0; c < now.cols; ++c) EXPECT_EQ(now.row(f.donor_id(t))[c], 0.0f);
    }
  }
}

// Expected subword rows computed here: the model's tokenization of the token's text.
TEST(TokenSurgeon, SubwordCombinesTheRowsOfTheModelsTokenization) {
  for (const std::string method : {"mean", "sum", "weighted_mean", "first_last"}) {
    Fixture f;
    surgery::TokenSurgeonOptions o;
    o.subword_method = method;
    f.run("subword", o);
    const std::map<std::string, std::string> texts = {
        {"\xC4\xA0hello", " hello"}, {"xyzzy", "xyzzy"}, {"\xC4\xA0world", " world"}};
    for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
      const bool head = std::string(name) == "lm_head.weight";
      const Rows orig = read_rows(f.model, name), now = read_rows(f.out, name);
      for (const auto& [token, text] : texts) {
        const auto ids = f.model_tok->encode(text, {.add_special_tokens = false}).ids;
        ASSERT_GE(ids.size(), 2u) << text;  // really pieced together
        const size_t n = ids.size();
        for (size_t c = 0; c < orig.cols; ++c) {
          double want = 0, total = 0;
          for (size_t p = 0; p < n; ++p) {
            double w = 1;
            if (method == "weighted_mean") w = head ? double(n - p) : double(p + 1);
            if (method == "first_last") w = (head ? p == 0 : p == n - 1) ? 1 : 0;
            want += w * orig.row(ids[p])[c];
            total += w;
          }
          if (method != "sum") want /= total;
          EXPECT_NEAR(now.row(f.donor_id(token))[c], want, 1e-6)
              << method << " " << name << " " << text << " " << c;
        }
      }
    }
  }
}

// A donor with weights whose hidden size (96) differs from the model's (64): omp works in the
// donor's space and applies the coefficients to the model's rows.
TEST(TokenSurgeon, OmpRecoversAnExactCombinationOfTwoSharedTokens) {
  Fixture f;
  const size_t vd = f.donor_tokens.size(), hd = 96;
  std::vector<float> e(vd * hd);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : e) x = normal(rng);
  const std::string a = "\xC4\xA0t", b = "th";
  ASSERT_TRUE(f.model_tok->token_to_id(a) && f.model_tok->token_to_id(b));
  const size_t da = f.donor_id(a), db = f.donor_id(b), dh = f.donor_id("\xC4\xA0hello");
  for (size_t c = 0; c < hd; ++c) e[dh * hd + c] = 0.75f * e[da * hd + c] - 1.25f * e[db * hd + c];
  {
    io::SafetensorsWriter w(f.donor / "model.safetensors",
                            {{"model.embed_tokens.weight", DType::kF32, {vd, hd}}}, {});
    w.write(0, 0, e.data(), e.size() * 4);
    w.finish();
  }
  write_bytes(f.donor / "config.json", json({{"architectures", {"LlamaForCausalLM"}},
                                             {"model_type", "llama"},
                                             {"hidden_size", hd},
                                             {"vocab_size", vd},
                                             {"bos_token_id", f.donor_id("<|bos|>")},
                                             {"eos_token_id", f.donor_id("<|eos|>")}})
                                           .dump());
  surgery::TokenSurgeonOptions o;
  o.k = 64;
  const auto r = f.run("omp", o);
  EXPECT_EQ(r.embed_counts.approximated, 3u);
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    expect_shared_rows_moved(f, name);
    const Rows orig = read_rows(f.model, name), now = read_rows(f.out, name);
    const float* ra = orig.row(f.model_id(a));
    const float* rb = orig.row(f.model_id(b));
    for (size_t c = 0; c < orig.cols; ++c) {
      EXPECT_NEAR(now.row(dh)[c], 0.75 * ra[c] - 1.25 * rb[c], 1e-5) << name << " " << c;
    }
    // The other new tokens are combinations of shared rows too: finite and not zero.
    double norm = 0;
    for (size_t c = 0; c < orig.cols; ++c) norm += std::abs(now.row(f.donor_id("xyzzy"))[c]);
    EXPECT_TRUE(std::isfinite(norm));
    EXPECT_GT(norm, 0.0);
  }
  EXPECT_EQ(read_json(f.out / "config.json")["bos_token_id"], f.donor_id("<|bos|>"));
}

TEST(TokenSurgeon, OmpOnItsOwnFindsTheSparseCode) {
  surgery::Matrix dict(5, 3);
  const float rows[5][3] = {{1, 0, 0}, {0, 1, 0}, {1, 1, 0}, {0, 0, 2}, {1, 2, 3}};
  for (size_t i = 0; i < 5; ++i) std::copy_n(rows[i], 3, dict.row(i));
  const float target[3] = {0, 0, -3};  // -1.5 * row 3
  const surgery::OmpCode code = surgery::omp(target, dict, 4);
  ASSERT_EQ(code.atoms.size(), 1u);
  EXPECT_EQ(code.atoms[0], 3u);
  EXPECT_NEAR(code.coeffs[0], -1.5, 1e-12);
  EXPECT_LT(code.relative_residual, 1e-12);
}

TEST(TokenSurgeon, TiedModelGetsOneMatrix) {
  Fixture f(DType::kF32, /*tied=*/true);
  const auto r = f.run("mean");
  EXPECT_EQ(r.head_name, "");
  expect_shared_rows_moved(f, "model.embed_tokens.weight");
  auto m = io::Model::open(f.out.string());
  EXPECT_FALSE(m->has("lm_head.weight"));
}

TEST(TokenSurgeon, ByteAndPrefixMatchesFollowTheirScope) {
  // "<0x41>" is the byte of the model's "A"; "Ġtxq" has the model's "Ġt" as a prefix (and no
  // longer one in the model's vocabulary).
  Fixture f(DType::kF32, false, {"<0x41>", "\xC4\xA0txq"});
  ASSERT_TRUE(f.model_tok->token_to_id("A"));
  ASSERT_FALSE(f.model_tok->token_to_id("\xC4\xA0tx"));
  surgery::TokenSurgeonOptions o;
  o.byte_match = "lm_head";
  o.prefix_match = "embed";
  const auto r = f.run("zero", o);
  EXPECT_EQ(r.embed_counts.prefix, 1u);
  EXPECT_EQ(r.embed_counts.byte, 0u);
  EXPECT_EQ(r.head_counts.byte, 1u);
  EXPECT_EQ(r.head_counts.prefix, 0u);
  const Rows oe = read_rows(f.model, "model.embed_tokens.weight");
  const Rows ne = read_rows(f.out, "model.embed_tokens.weight");
  const Rows oh = read_rows(f.model, "lm_head.weight");
  const Rows nh = read_rows(f.out, "lm_head.weight");
  const size_t byte_id = f.donor_id("<0x41>"), prefix_id = f.donor_id("\xC4\xA0txq");
  EXPECT_EQ(std::memcmp(ne.row(prefix_id), oe.row(f.model_id("\xC4\xA0t")), 64 * 4), 0);
  EXPECT_EQ(std::memcmp(nh.row(byte_id), oh.row(f.model_id("A")), 64 * 4), 0);
  for (size_t c = 0; c < 64; ++c) {
    EXPECT_EQ(ne.row(byte_id)[c], 0.0f);    // byte matching is for the head only
    EXPECT_EQ(nh.row(prefix_id)[c], 0.0f);  // prefix matching for the embedding only
  }
}

// A donor spelling the word-start marker `▁` (SentencePiece) where the model spells `Ġ`: the
// same tokens, matched exactly.
TEST(TokenSurgeon, WordStartMarkersAreEquivalent) {
  Fixture f(DType::kF32, false, {});
  std::string text = read_bytes(f.donor / "tokenizer.json");
  const std::string g = "\xC4\xA0", sp = "\xE2\x96\x81";
  for (size_t at = text.find(g); at != std::string::npos; at = text.find(g, at + sp.size())) {
    text.replace(at, g.size(), sp);
  }
  write_bytes(f.donor / "tokenizer.json", text);
  const auto r = f.run("zero");
  EXPECT_EQ(r.embed_counts.exact, 320u);
  EXPECT_EQ(r.embed_counts.approximated, 0u);
  const Rows orig = read_rows(f.model, "lm_head.weight"), now = read_rows(f.out, "lm_head.weight");
  const size_t id = f.donor_id("\xC4\xA0t");  // now spelled "▁t" at the same id
  EXPECT_EQ(std::memcmp(now.row(id), orig.row(f.model_id("\xC4\xA0t")), 64 * 4), 0);
}

std::string sample_text() {
  std::string s;
  for (int i = 0; i < 40; ++i) s += fmt::format("word{} and {} more; ", i, i * 7 % 13);
  return s;
}

// A donor that only reorders the vocabulary: the text tokenizes to the same token strings under
// other ids, every row moves with its token, so the perplexity is the model's (up to the order
// of the softmax sum).
TEST(TokenSurgeon, PermutedVocabularyKeepsThePerplexityInEval) {
  Fixture f(DType::kF32, false, {});
  write_bytes(f.dir / "text.txt", sample_text());
  auto s = run_smelt("tokensurgeon " + quote(f.model) + " " + quote(f.donor) + " " + quote(f.out) +
                     " -a zero -j 2");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NE(s.output.find("320 exact, 0 byte, 0 prefix, 0 approximated"), std::string::npos)
      << s.output;
  auto r = run_smelt("eval --json -j 2 " + quote(f.model) + " " + quote(f.out) +
                     " --ctx 32 --text " + quote(f.dir / "text.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output.substr(r.output.find('{')));
  const json& a = j["models"][0]["perplexity"];
  const json& b = j["models"][1]["perplexity"];
  EXPECT_EQ(a["tokens"], b["tokens"]);
  EXPECT_GT(a["tokens"].get<int>(), 100);
  EXPECT_NEAR(b["ppl"].get<double>() / a["ppl"].get<double>(), 1.0, 1e-5)
      << a.dump() << " " << b.dump();
  // The donor's tokenizer really is in use: the ids differ.
  auto ta = run_smelt("tokenize --json " + quote(f.model) + " \"word1 and\"");
  auto tb = run_smelt("tokenize --json " + quote(f.out) + " \"word1 and\"");
  EXPECT_NE(ta.output, tb.output);
}

TEST(TokenSurgeon, NewTokensStillEvaluate) {
  Fixture f;
  write_bytes(f.dir / "text.txt", sample_text());
  f.run("mean");
  auto r = run_smelt("eval --json -j 2 " + quote(f.out) + " --ctx 32 --text " +
                     quote(f.dir / "text.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output.substr(r.output.find('{')));
  EXPECT_TRUE(std::isfinite(j["models"][0]["perplexity"]["ppl"].get<double>()));
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenSurgeon, BadInputIsRefusedWithAClearMessage) {
  Fixture f;
  auto has = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
  };
  // omp needs the donor's weights.
  has(error_of([&] { f.run("omp"); }), "omp needs the donor's embeddings");
  EXPECT_FALSE(fs::exists(f.out));
  has(error_of([&] { f.run("frobnicate"); }), "unknown");
  has(error_of([&] { f.run("common_interpolation"); }), "does not support it yet");
  surgery::TokenSurgeonOptions o;
  o.byte_match = "maybe";
  has(error_of([&] { f.run("zero", o); }), "--byte-match 'maybe'");
  o = {};
  o.subword_method = "median";
  has(error_of([&] { f.run("subword", o); }), "--subword-method 'median'");
  // A model without a tokenizer.
  TempDir bare;
  make(bare / "m", DType::kF32, false);
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    fs::remove(bare / "m" / file);
  }
  has(error_of(
          [&] { surgery::token_surgeon((bare / "m").string(), f.donor.string(), bare / "o", {}); }),
      "cannot load its tokenizer");
  // A donor without a tokenizer.
  fs::create_directories(bare / "empty");
  has(error_of([&] {
        surgery::token_surgeon(f.model.string(), (bare / "empty").string(), bare / "o",
                               {.method = "zero"});
      }),
      "cannot load its tokenizer");
  // Donor weights with fewer rows than its tokenizer has ids.
  {
    std::vector<float> e(10 * 8, 1.0f);
    io::SafetensorsWriter w(f.donor / "model.safetensors",
                            {{"model.embed_tokens.weight", DType::kF32, {10, 8}}}, {});
    w.write(0, 0, e.data(), e.size() * 4);
    w.finish();
  }
  has(error_of([&] { f.run("omp"); }), "do not match its tokenizer");
  // A single weights file has no tokenizer next to it.
  has(error_of([&] {
        surgery::token_surgeon((f.model / "model.safetensors").string(), f.donor.string(),
                               bare / "o", {.method = "zero"});
      }),
      "needs a model folder");
  // Never into an input.
  has(error_of([&] {
        surgery::token_surgeon(f.model.string(), f.donor.string(), f.donor / "out",
                               {.method = "zero"});
      }),
      "never writes into");
  EXPECT_FALSE(fs::exists(f.out));
  // The CLI: exit code 1 and the message.
  auto r = run_smelt("tokensurgeon " + quote(f.model) + " " + quote(f.donor) + " " + quote(f.out) +
                     " -a nope");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("unknown"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace smelt
