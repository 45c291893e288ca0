// Tokenizer merges (docs/tokenizer-merge.md): `tokenizer_source` base / model / union and the
// `tokenizer:` block, end to end through the binary. The expected embedding rows are computed here
// from the inputs' tensors with the fallback rules of the docs (mergekit's), independently of
// smelt's row gathering; the output tokenizer is checked with Hugging Face's own library.
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "smelt/io/gguf.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

#define EXPECT_HAS(haystack, needle)                                                            \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                        << (haystack)

constexpr size_t kH = 16;  // hidden size of the test models
const char* kEmbed = "model.embed_tokens.weight";
const char* kHead = "lm_head.weight";

using Rows = std::vector<std::vector<double>>;

Rows rows_of(const io::Model& m, const std::string& name) {
  auto t = m.find(name);
  EXPECT_NE(t.info, nullptr) << name;
  if (!t.info) return {};
  std::string b(t.info->nbytes, '\0');
  t.file->read(*t.info, 0, b.data(), b.size());
  std::vector<float> f(t.info->numel());
  kernels::to_f32(t.info->dtype, b.data(), f.data(), f.size());
  // 1-D tensors (norms) as one row.
  const size_t n_rows = t.info->shape.size() == 2 ? t.info->shape[0] : 1;
  const size_t cols = n_rows == 0 ? 0 : f.size() / n_rows;
  Rows rows(n_rows, std::vector<double>(cols));
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t c = 0; c < cols; ++c) rows[r][c] = f[r * cols + c];
  return rows;
}

json json_of(const fs::path& p) { return json::parse(testing::read_bytes(p)); }

// Models shared by the tests: `base` (a byte-level BPE of 320 tokens) and `chat`, a ChatML-style
// fine-tune whose tokenizer has the same 320 tokens, two of them (ids 300, 301) swapped, and two
// added special tokens <|im_start|> = 320 and <|im_end|> = 321 (embeddings of 322 rows).
class TokenizerMerge : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    make(
        "--vocab 320 --hidden 16 --layers 1 --heads 2 --dtype F32 "
        "--seed 1",
        "base");
    make(
        "--vocab 322 --hidden 16 --layers 1 --heads 2 --dtype F32 "
        "--seed 2",
        "chat");
    make(
        "--vocab 320 --hidden 32 --layers 1 --heads 2 --dtype F32 "
        "--seed 3",
        "wide");
    // chat's tokenizer: the last two BPE tokens (and their merges) become added tokens.
    const fs::path tj = p("chat") / "tokenizer.json";
    ordered_json t = ordered_json::parse(testing::read_bytes(tj));
    auto& vocab = t["model"]["vocab"];
    std::string t300, t301;
    ordered_json kept = ordered_json::object();
    for (auto& [tok, id] : vocab.items()) {
      const int i = id.get<int>();
      if (i >= 320) continue;
      if (i == 300) t300 = tok;
      if (i == 301) t301 = tok;
      kept[tok] = i;
    }
    kept[t300] = 301;
    kept[t301] = 300;
    vocab = kept;
    auto& merges = t["model"]["merges"];
    merges.erase(merges.end() - 2, merges.end());
    int id = 320;
    for (const char* s : {"<|im_start|>", "<|im_end|>"}) {
      t["added_tokens"].push_back({{"id", id++},
                                   {"content", s},
                                   {"single_word", false},
                                   {"lstrip", false},
                                   {"rstrip", false},
                                   {"normalized", false},
                                   {"special", true}});
    }
    testing::write_bytes(tj, t.dump(2));
    swapped_ = {t300, t301};
  }
  static void TearDownTestSuite() { delete dir_; }

  static void make(const std::string& args, const std::string& name) {
    auto r = run_smelt("dev make-model " + args + " " + quote(p(name)));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static fs::path p(const std::string& name) { return dir_->path() / name; }

  // Runs `smelt merge` on `yaml` (MODEL_BASE / MODEL_CHAT / MODEL_WIDE replaced by paths).
  static testing::CommandResult merge(std::string yaml, const std::string& out,
                                      const std::string& verb = "merge -q",
                                      const std::string& extra = "") {
    for (const auto& [key, name] : std::vector<std::pair<std::string, std::string>>{
             {"MODEL_BASE", "base"}, {"MODEL_CHAT", "chat"}, {"MODEL_WIDE", "wide"}}) {
      for (size_t at = yaml.find(key); at != std::string::npos; at = yaml.find(key))
        yaml.replace(at, key.size(), p(name).string());
    }
    testing::write_bytes(p(out + ".yml"), yaml);
    const std::string target = verb.rfind("plan", 0) == 0 ? "" : " " + quote(p(out));
    return run_smelt(verb + " " + quote(p(out + ".yml")) + target + " " + extra);
  }

  // chat's row for the token base has at id r (r < 320).
  static size_t chat_id(size_t r) { return r == 300 ? 301 : r == 301 ? 300 : r; }

  static TempDir* dir_;
  static std::pair<std::string, std::string> swapped_;
};

TempDir* TokenizerMerge::dir_ = nullptr;
std::pair<std::string, std::string> TokenizerMerge::swapped_;

void expect_rows_near(const Rows& got, const Rows& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t r = 0; r < got.size(); ++r) {
    for (size_t c = 0; c < got[r].size(); ++c) {
      ASSERT_NEAR(got[r][c], want[r][c], 1e-6) << what << " row " << r << " col " << c;
    }
  }
}

TEST_F(TokenizerMerge, UnionAlignsRowsAndTheTokenizerLoadsInTheReferenceLibrary) {
  auto r = merge(
      "models:\n  - model: MODEL_BASE\n    parameters: {weight: 0.25}\n"
      "  - model: MODEL_CHAT\n    parameters: {weight: 0.75}\n"
      "merge_method: linear\ndtype: float32\ntokenizer_source: union\n",
      "union");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("union") / "config.json")["vocab_size"], 322);
  auto out = io::Model::open(p("union").string());
  auto base = io::Model::open(p("base").string()), chat = io::Model::open(p("chat").string());
  for (const char* name : {kEmbed, kHead}) {
    const Rows b = rows_of(*base, name), c = rows_of(*chat, name);
    Rows want(322, std::vector<double>(kH));
    for (size_t row = 0; row < 322; ++row) {
      // Rows 320, 321: only chat has the token, so base's aligned row is chat's.
      const auto& brow = row < 320 ? b[row] : c[row];
      const auto& crow = c[row < 320 ? chat_id(row) : row];
      for (size_t k = 0; k < kH; ++k) want[row][k] = 0.25 * brow[k] + 0.75 * crow[k];
    }
    expect_rows_near(rows_of(*out, name), want, name);
  }
  // Hugging Face's library loads the tokenizer and encodes the added tokens to their new ids.
  const fs::path node_dir = fs::path(SMELT_SOURCE_DIR) / "tests" / "node";
  ASSERT_TRUE(fs::exists(node_dir / "node_modules" / "tokenizers" / "index.js"))
      << "tests/node/node_modules/tokenizers is missing: run scripts/setup.sh";
  const fs::path ref_out = p("union-ref.json");
  auto n = testing::run_command(testing::node_command() + " " + quote(node_dir / "tokenize.mjs") +
                                " saved " + quote(p("union")) + " '<|im_start|>' '<|im_end|>' " +
                                quote(swapped_.first) + " > " + quote(ref_out));
  ASSERT_EQ(n.exit_code, 0) << n.output;
  const json ref = json_of(ref_out);
  EXPECT_EQ(ref["vocab_size"], 322);
  EXPECT_EQ(ref["strings"][0]["ids_plain"], json::array({320}));
  EXPECT_EQ(ref["strings"][1]["ids_plain"], json::array({321}));
  EXPECT_EQ(ref["strings"][2]["ids_plain"], json::array({300}));  // base's id order is kept
  const json tc = json_of(p("union") / "tokenizer_config.json");
  EXPECT_EQ(tc["added_tokens_decoder"]["320"]["content"], "<|im_start|>");
  EXPECT_EQ(tc["added_tokens_decoder"]["321"]["special"], true);
  EXPECT_FALSE(fs::exists(p("union") / "tokenizer.model"));
}

TEST_F(TokenizerMerge, PadToMultipleFillsPaddingRowsWithTheMeanOfRealRows) {
  auto r = merge(
      "models:\n  - model: MODEL_BASE\n    parameters: {weight: 0.25}\n"
      "  - model: MODEL_CHAT\n    parameters: {weight: 0.75}\n"
      "merge_method: linear\ndtype: float32\ntokenizer:\n  source: union\n"
      "  pad_to_multiple_of: 64\n",
      "padded");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("padded") / "config.json")["vocab_size"], 384);
  auto out = io::Model::open(p("padded").string());
  auto base = io::Model::open(p("base").string()), chat = io::Model::open(p("chat").string());
  for (const char* name : {kEmbed, kHead}) {
    const Rows b = rows_of(*base, name), c = rows_of(*chat, name);
    Rows ab(384, std::vector<double>(kH)), ac = ab;
    for (size_t row = 0; row < 322; ++row) {
      ab[row] = row < 320 ? b[row] : c[row];
      ac[row] = c[row < 320 ? chat_id(row) : row];
    }
    for (Rows* m : {&ab, &ac}) {
      std::vector<double> mean(kH, 0.0);
      for (size_t row = 0; row < 322; ++row)
        for (size_t k = 0; k < kH; ++k) mean[k] += (*m)[row][k] / 322.0;
      for (size_t row = 322; row < 384; ++row) (*m)[row] = mean;
    }
    Rows want(384, std::vector<double>(kH));
    for (size_t row = 0; row < 384; ++row)
      for (size_t k = 0; k < kH; ++k) want[row][k] = 0.25 * ab[row][k] + 0.75 * ac[row][k];
    const Rows got = rows_of(*out, name);
    ASSERT_EQ(got.size(), 384u);
    for (size_t row = 0; row < 384; ++row)
      for (size_t k = 0; k < kH; ++k) ASSERT_NEAR(got[row][k], want[row][k], 1e-5) << row;
  }
}

TEST_F(TokenizerMerge, BaseAndModelSourcesPickTheirVocabulary) {
  auto base = io::Model::open(p("base").string()), chat = io::Model::open(p("chat").string());
  // source: base: the base's 320 tokens; chat's rows permuted to them, its added tokens dropped.
  auto r = merge(
      "models:\n  - model: MODEL_BASE\n  - model: MODEL_CHAT\n"
      "merge_method: linear\nparameters: {weight: 1}\ndtype: float32\ntokenizer_source: base\n",
      "src-base");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("src-base") / "config.json")["vocab_size"], 320);
  {
    auto out = io::Model::open(p("src-base").string());
    const Rows b = rows_of(*base, kEmbed), c = rows_of(*chat, kEmbed);
    Rows want(320, std::vector<double>(kH));
    for (size_t row = 0; row < 320; ++row)
      for (size_t k = 0; k < kH; ++k) want[row][k] = 0.5 * b[row][k] + 0.5 * c[chat_id(row)][k];
    expect_rows_near(rows_of(*out, kEmbed), want, "source: base");
  }
  // source: chat (a model): chat's ids; base's rows permuted to them, chat's tokens only in chat.
  r = merge(
      "models:\n  - model: MODEL_BASE\n  - model: MODEL_CHAT\nbase_model: MODEL_BASE\n"
      "merge_method: linear\nparameters: {weight: 1}\ndtype: float32\ntokenizer_source: "
      "MODEL_CHAT\n",
      "src-chat");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("src-chat") / "config.json")["vocab_size"], 322);
  EXPECT_EQ(testing::read_bytes(p("src-chat") / "tokenizer.json").find("<|im_start|>") !=
                std::string::npos,
            true);
  auto out = io::Model::open(p("src-chat").string());
  const Rows b = rows_of(*base, kHead), c = rows_of(*chat, kHead);
  Rows want(322, std::vector<double>(kH));
  for (size_t row = 0; row < 322; ++row) {
    const auto& brow = row < 320 ? b[chat_id(row)] : c[row];
    for (size_t k = 0; k < kH; ++k) want[row][k] = 0.5 * brow[k] + 0.5 * c[row][k];
  }
  expect_rows_near(rows_of(*out, kHead), want, "source: chat");
}

TEST_F(TokenizerMerge, TokenBlockSourcesAndForce) {
  auto r = merge(
      "models:\n  - model: MODEL_BASE\n    parameters: {weight: 0.25}\n"
      "  - model: MODEL_CHAT\n    parameters: {weight: 0.75}\n"
      "merge_method: linear\ndtype: float32\ntokenizer:\n  source: union\n  tokens:\n"
      "    \"<|im_start|>\":\n      source: {kind: model_token, model: MODEL_BASE, token: "
      "\"<s>\"}\n"
      "    \"<|im_end|>\":\n      source: {kind: zero}\n"
      "    \"<|new|>\":\n      source: {kind: model_token, model: MODEL_CHAT, token_id: 5}\n"
      "    \"" +
          swapped_.second + "\":\n      source: MODEL_BASE\n      force: true\n",
      "block");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("block") / "config.json")["vocab_size"], 323);
  auto out = io::Model::open(p("block").string());
  auto base = io::Model::open(p("base").string()), chat = io::Model::open(p("chat").string());
  const Rows b = rows_of(*base, kEmbed), c = rows_of(*chat, kEmbed), o = rows_of(*out, kEmbed);
  ASSERT_EQ(o.size(), 323u);
  for (size_t k = 0; k < kH; ++k) {
    // <|im_start|>: base lacks it and gets base's "<s>" (id 1); chat keeps its own row.
    EXPECT_NEAR(o[320][k], 0.25 * b[1][k] + 0.75 * c[320][k], 1e-6);
    // <|im_end|>: base gets zeros.
    EXPECT_NEAR(o[321][k], 0.75 * c[321][k], 1e-6);
    // <|new|> (id 322, in no model): every model gets chat's row 5.
    EXPECT_NEAR(o[322][k], c[5][k], 1e-6);
    // The forced token (base id 301): every model gets base's row.
    EXPECT_NEAR(o[301][k], b[301][k], 1e-6);
    // An ordinary shared token.
    EXPECT_NEAR(o[300][k], 0.25 * b[300][k] + 0.75 * c[301][k], 1e-6);
  }
}

TEST_F(TokenizerMerge, TiesMergesTheAlignedMatricesAsIfTheyWereStored) {
  // The same ties merge, once with tokenizer_source: union on the originals and once without on
  // models whose embeddings the test aligned itself: every tensor must match bit for bit.
  auto base = io::Model::open(p("base").string()), chat = io::Model::open(p("chat").string());
  auto write_aligned = [&](const io::Model& m, bool is_chat, const std::string& name) {
    fs::create_directories(p(name));
    for (const char* f : {"config.json", "tokenizer_config.json", "special_tokens_map.json"})
      fs::copy_file(p(is_chat ? "chat" : "base") / f, p(name) / f);
    fs::copy_file(p("chat") / "tokenizer.json", p(name) / "tokenizer.json");
    json cfg = json_of(p(name) / "config.json");
    cfg["vocab_size"] = 322;
    testing::write_bytes(p(name) / "config.json", cfg.dump(2));
    std::vector<io::TensorSpec> specs;
    for (const auto& t : m.tensors()) {
      auto shape = t.info->shape;
      if (t.info->name == kEmbed || t.info->name == kHead) shape[0] = 322;
      specs.push_back({t.info->name, t.info->dtype, shape});
    }
    io::SafetensorsWriter w(p(name) / "model.safetensors", specs, {});
    for (size_t i = 0; i < specs.size(); ++i) {
      const std::string& tn = specs[i].name;
      if (tn == kEmbed || tn == kHead) {
        const Rows own = rows_of(m, tn), c = rows_of(*chat, tn);
        std::vector<float> f;
        for (size_t row = 0; row < 322; ++row) {
          // chat's ids are the output's (union keeps base order; chat swaps 300/301).
          const std::vector<double>& src =
              is_chat ? own[row < 320 ? chat_id(row) : row] : (row < 320 ? own[row] : c[row]);
          for (double v : src) f.push_back(static_cast<float>(v));
        }
        w.write(i, 0, f.data(), f.size() * 4);
      } else {
        auto t = m.find(tn);
        std::string bytes(t.info->nbytes, '\0');
        t.file->read(*t.info, 0, bytes.data(), bytes.size());
        w.write(i, 0, bytes.data(), bytes.size());
      }
    }
    w.finish();
  };
  write_aligned(*base, false, "aligned-base");
  write_aligned(*chat, true, "aligned-chat");
  const std::string body =
      "  - model: {}\n    parameters: {{weight: 0.7, density: 0.6}}\n"
      "base_model: {}\nmerge_method: ties\ndtype: float32\n";
  auto r = merge("models:\n" + fmt::format(fmt::runtime(body), "MODEL_CHAT", "MODEL_BASE") +
                     "tokenizer_source: union\n",
                 "ties-union");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = merge("models:\n" + fmt::format(fmt::runtime(body), p("aligned-chat").string(),
                                      p("aligned-base").string()),
            "ties-aligned");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto a = io::Model::open(p("ties-union").string());
  auto e = io::Model::open(p("ties-aligned").string());
  ASSERT_EQ(a->tensors().size(), e->tensors().size());
  for (const auto& t : e->tensors()) {
    const Rows x = rows_of(*a, t.info->name), y = rows_of(*e, t.info->name);
    EXPECT_EQ(x, y) << t.info->name;
  }
}

TEST_F(TokenizerMerge, PaddedVocabulariesKeepTheirPaddingWithoutTokenizerOptions) {
  // A model whose config and embeddings have 336 rows but whose tokenizer has 320 tokens.
  make("--vocab 336 --hidden 16 --layers 1 --heads 2 --dtype F32 --seed 4", "pad1");
  make("--vocab 336 --hidden 16 --layers 1 --heads 2 --dtype F32 --seed 5", "pad2");
  for (const char* m : {"pad1", "pad2"}) {
    fs::copy_file(p("base") / "tokenizer.json", p(m) / "tokenizer.json",
                  fs::copy_options::overwrite_existing);
  }
  const std::string models = fmt::format("models:\n  - model: {}\n  - model: {}\n",
                                         p("pad1").string(), p("pad2").string());
  auto r =
      merge(models + "merge_method: linear\nparameters: {weight: 1}\ndtype: float32\n", "pad-kept");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("pad-kept") / "config.json")["vocab_size"], 336);
  EXPECT_EQ(rows_of(*io::Model::open(p("pad-kept").string()), kEmbed).size(), 336u);
  // With a tokenizer option the output vocabulary is the tokenizer's (mergekit): 320 rows, or
  // the padding multiple asked for.
  r = merge(models +
                "merge_method: linear\nparameters: {weight: 1}\ndtype: float32\ntokenizer_source: "
                "union\n",
            "pad-union");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("pad-union") / "config.json")["vocab_size"], 320);
  auto out = io::Model::open(p("pad-union").string());
  const Rows o = rows_of(*out, kEmbed);
  const Rows a = rows_of(*io::Model::open(p("pad1").string()), kEmbed);
  const Rows b = rows_of(*io::Model::open(p("pad2").string()), kEmbed);
  ASSERT_EQ(o.size(), 320u);
  for (size_t k = 0; k < kH; ++k) EXPECT_NEAR(o[319][k], 0.5 * a[319][k] + 0.5 * b[319][k], 1e-6);
}

TEST_F(TokenizerMerge, StreamsInChunksWithTheSameBytesForAnyThreadCountAndMemoryBudget) {
  // bf16 models whose embeddings (384 x 128 padded rows) span several chunks at the smallest
  // memory budget: the aligned rows are gathered chunk by chunk, and the output must not depend
  // on how the work was cut.
  make("--vocab 320 --hidden 128 --layers 1 --heads 2 --dtype BF16 --seed 7", "big-base");
  make("--vocab 330 --hidden 128 --layers 1 --heads 2 --dtype BF16 --seed 8", "big-ft");
  const std::string yaml = fmt::format(
      "models:\n  - model: {}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
      "base_model: {}\nmerge_method: ties\ntokenizer:\n  source: union\n"
      "  pad_to_multiple_of: 64\n",
      p("big-ft").string(), p("big-base").string());
  auto r = merge(yaml, "stream-1", "merge -q", "-j 1 --max-memory 44M");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = merge(yaml, "stream-2", "merge -q", "-j 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json_of(p("stream-1") / "config.json")["vocab_size"], 384);
  EXPECT_TRUE(testing::read_bytes(p("stream-1") / "model.safetensors") ==
              testing::read_bytes(p("stream-2") / "model.safetensors"));
}

TEST_F(TokenizerMerge, ModelCardConfigShapesPlanAndMerge) {
  // Shapes copied from model cards: a slerp of layer slices with a union tokenizer; ties with the
  // ChatML tokens taken from the chat model and a chat template; dare_ties in the
  // `modules: {default: ...}` form; each plans and merges, and a row shows the alignment.
  struct Shape {
    std::string name, yaml;
  };
  const std::vector<Shape> shapes = {
      {"slerp-slices",
       "slices:\n  - sources:\n      - model: MODEL_BASE\n        layer_range: [0, 1]\n"
       "      - model: MODEL_CHAT\n        layer_range: [0, 1]\nmerge_method: slerp\n"
       "base_model: MODEL_BASE\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 1]\n"
       "    - value: 0.5\ndtype: float32\ntokenizer_source: union\n"},
      {"ties-chatml",
       "models:\n  - model: MODEL_BASE\n  - model: MODEL_CHAT\n    parameters:\n"
       "      density: 0.7\n      weight: 0.5\nmerge_method: ties\nbase_model: MODEL_BASE\n"
       "parameters:\n  normalize: true\ndtype: float32\nchat_template: chatml\ntokenizer:\n"
       "  source: union\n  tokens:\n    <|im_start|>:\n      source: MODEL_CHAT\n"
       "    <|im_end|>:\n      source: MODEL_CHAT\n"},
      {"dare-modules",
       "merge_method: dare_ties\nbase_model: MODEL_BASE\ndtype: float32\n"
       "tokenizer_source: base\nmodules:\n  default:\n    models:\n      - model: MODEL_CHAT\n"
       "        parameters: {weight: 0.5, density: 0.5}\n      - model: MODEL_BASE\n"},
  };
  auto chat = io::Model::open(p("chat").string());
  const Rows c = rows_of(*chat, kEmbed);
  for (const Shape& shape : shapes) {
    auto r = merge(shape.yaml, shape.name);
    ASSERT_EQ(r.exit_code, 0) << shape.name << "\n" << r.output;
    const Rows o = rows_of(*io::Model::open(p(shape.name).string()), kEmbed);
    if (shape.name == "dare-modules") {
      EXPECT_EQ(o.size(), 320u);
      continue;
    }
    // <|im_start|> and <|im_end|> are chat's alone: every aligned input holds chat's rows. ties
    // returns them; slerp interpolates whole tensors, so both rows come out as one multiple k of
    // chat's (k = (sin((1-t)θ) + sin(tθ)) / sin θ for the tensors' angle θ).
    ASSERT_EQ(o.size(), 322u) << shape.name;
    const double scale = shape.name == "slerp-slices" ? o[320][0] / c[320][0] : 1.0;
    EXPECT_GT(scale, 1.0 - 1e-9) << shape.name;
    for (size_t row : {320, 321}) {
      for (size_t k = 0; k < kH; ++k) {
        EXPECT_NEAR(o[row][k], scale * c[row][k], 1e-5 * std::max(1.0, std::fabs(o[row][k])))
            << shape.name << " row " << row;
      }
    }
  }
  const json tc = json_of(p("ties-chatml") / "tokenizer_config.json");
  EXPECT_NE(tc["chat_template"].get<std::string>().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(tc["added_tokens_decoder"]["320"]["content"], "<|im_start|>");
}

TEST_F(TokenizerMerge, GgufOutputCarriesTheMergedVocabulary) {
  auto r = merge(
      "models:\n  - model: MODEL_BASE\n  - model: MODEL_CHAT\n"
      "merge_method: linear\nparameters: {weight: 1}\ndtype: float32\ntokenizer_source: union\n",
      "merged.gguf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path file = p("merged.gguf");
  ASSERT_TRUE(fs::is_regular_file(file)) << r.output;
  auto gf = io::GgufFile::open(file);
  const io::GgufFile& g = *gf;
  const auto tokens = g.find_kv("tokenizer.ggml.tokens")->string_array().value();
  ASSERT_EQ(tokens.size(), 322u);
  EXPECT_EQ(tokens[320], "<|im_start|>");
  EXPECT_EQ(tokens[321], "<|im_end|>");
  const io::TensorInfo* emb = g.find("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->shape[0], 322u);
}

TEST_F(TokenizerMerge, BadInputsNameTheYamlPathBeforeReadingTensors) {
  struct Case {
    std::string yaml, message;
  };
  const std::string head =
      "models:\n  - model: MODEL_BASE\n  - model: MODEL_CHAT\nmerge_method: linear\nparameters: "
      "{weight: 1}\n";
  const std::vector<Case> cases = {
      {head + "tokenizer:\n  tokens:\n    \"<|im_start|>\":\n      source: MODEL_BASE\n",
       "tokenizer.tokens[\"<|im_start|>\"].source: model " + p("base").string() +
           " has no token '<|im_start|>'"},
      {head + "tokenizer:\n  tokens:\n    \"<|im_start|>\":\n      source: {kind: model_token, "
              "model: MODEL_BASE, token_id: 99999}\n",
       "token id 99999 is out of range"},
      {head + "tokenizer:\n  tokens:\n    \"<|im_start|>\":\n      source: {kind: model_token, "
              "model: MODEL_BASE, token_id: 3, token: \"a\"}\n",
       "only one of token_id or token"},
      {head + "tokenizer:\n  tokens:\n    \"<|im_start|>\":\n      source: {kind: model_token, "
              "model: MODEL_BASE, token: \"<nope>\"}\n",
       "has no token '<nope>'"},
      // Different hidden sizes already differ in the layers' tensors, which name the model.
      {"models:\n  - model: MODEL_BASE\n  - model: MODEL_WIDE\nmerge_method: linear\n"
       "parameters: {weight: 1}\ntokenizer_source: union\n",
       "models[1]: tensor 'model.layers.0.input_layernorm.weight' has shape [32]"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string out = fmt::format("bad{}", i++);
    auto r = merge(c.yaml, out);
    EXPECT_NE(r.exit_code, 0) << c.yaml;
    EXPECT_HAS(r.output, c.message);
    EXPECT_FALSE(fs::exists(p(out))) << c.yaml;
  }
}

}  // namespace
}  // namespace smelt
