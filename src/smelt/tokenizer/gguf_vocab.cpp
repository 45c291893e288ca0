// GGUF vocabularies as tokenizers (docs/tokenizer.md, "Tokenizers from GGUF files"): the keys are
// checked, user-defined tokens are split out of the text as llama.cpp splits them, and each piece
// of plain text goes to an engine of this module: a tokenizer.json document built in memory for
// "gpt2", a SentencePiece model built in memory for "llama".
#include "smelt/tokenizer/gguf_vocab.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "smelt/tokenizer/sentencepiece_model.h"
#include "smelt/tokenizer/tokenizer_json.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace {

// llama.cpp's token types (tokenizer.ggml.token_type), which are SentencePiece's piece types.
using TokenType = SentencePieceVocab::Type;
constexpr TokenType kNormal = SentencePieceVocab::kNormal;
constexpr TokenType kUnknown = SentencePieceVocab::kUnknown;
constexpr TokenType kControl = SentencePieceVocab::kControl;
constexpr TokenType kUserDefined = SentencePieceVocab::kUserDefined;
constexpr TokenType kByte = SentencePieceVocab::kByte;

// ---- pre-tokenizer regexes ----------------------------------------------------------------------

// The splitting regexes llama.cpp applies for each tokenizer.ggml.pre, one after the other, each
// splitting the pieces the previous one left (matches and the text between them both kept).
constexpr const char* kGpt2Regex =
    R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))re";
constexpr const char* kLlama3Regex =
    R"re((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr const char* kQwen2Regex =
    R"re((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

struct PreType {
  std::vector<const char*> names;
  std::vector<const char*> regexes;
  bool ignore_merges = false;
  bool add_bos = false;  // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
};

const std::vector<PreType>& pre_types() {
  static const std::vector<PreType> types = {
      {{"default"},
       {R"re([\p{P}\$\+<=>\^~\|]+)re", kGpt2Regex, R"re(\p{N}+)re", R"re([0-9][0-9][0-9])re"}},
      {{"gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
        "gigachat", "mellum", "trillion", "granite-docling", "exaone4", "a.x-4.0"},
       {kGpt2Regex}},
      {{"llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"},
       {kLlama3Regex},
       /*ignore_merges=*/true,
       /*add_bos=*/true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}},
      {{"qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2"}, {kQwen2Regex}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
       {R"re(\p{N})re", kGpt2Regex}},
      {{"falcon"}, {R"re([\p{P}\$\+<=>\^~\|`]+)re", kGpt2Regex, R"re([0-9][0-9][0-9])re"}},
  };
  return types;
}

const PreType* find_pre_type(const std::string& name) {
  for (const PreType& t : pre_types()) {
    if (std::find(t.names.begin(), t.names.end(), name) != t.names.end()) return &t;
  }
  return nullptr;
}

// ---- reading keys -------------------------------------------------------------------------------

struct KeyReader {
  const io::GgufFile& file;

  std::string where(std::string_view key) const {
    return fmt::format("{}: {}", file.path().string(), key);
  }
  const io::GgufValue* find(std::string_view key) const { return file.find_kv(key); }
  const io::GgufValue& required(std::string_view key) const {
    const io::GgufValue* v = find(key);
    if (!v) fail("{}: the key is missing; smelt needs it to tokenize text", where(key));
    return *v;
  }
  std::optional<std::string> string(std::string_view key) const {
    const io::GgufValue* v = find(key);
    if (!v) return std::nullopt;
    auto s = v->as_string();
    if (!s) fail("{}: expected a string, got {}", where(key), io::gguf_type_name(v->type()));
    return std::string(*s);
  }
  std::optional<bool> boolean(std::string_view key) const {
    const io::GgufValue* v = find(key);
    if (!v) return std::nullopt;
    auto b = v->as_bool();
    if (!b) fail("{}: expected a bool, got {}", where(key), io::gguf_type_name(v->type()));
    return b;
  }
  // A token id key: an unsigned or non-negative integer below `n`.
  std::optional<int32_t> token_id(std::string_view key, size_t n) const {
    const io::GgufValue* v = find(key);
    if (!v) return std::nullopt;
    auto id = v->as_uint();
    if (!id || v->is_array()) {
      fail("{}: expected a token id (an unsigned integer), got {}", where(key), v->to_string());
    }
    if (*id >= n) {
      fail("{}: token id {} is out of range (the vocabulary has {} tokens)", where(key), *id, n);
    }
    return static_cast<int32_t>(*id);
  }
  // An array key with exactly `n` elements (n = 0: any length).
  const io::GgufValue& array(std::string_view key, size_t n) const {
    const io::GgufValue& v = required(key);
    if (!v.is_array())
      fail("{}: expected an array, got {}", where(key), io::gguf_type_name(v.type()));
    if (n && v.size() != n) {
      fail("{}: has {} elements but tokenizer.ggml.tokens has {}", where(key), v.size(), n);
    }
    return v;
  }
};

// The vocabulary of the file: tokens, types, scores (empty for "gpt2"), each checked.
struct Vocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;
  std::unordered_map<std::string_view, int32_t> ids;  // views into `tokens`
};

Vocab read_vocab(const KeyReader& r, bool with_scores) {
  Vocab v;
  const io::GgufValue& tokens = r.required("tokenizer.ggml.tokens");
  auto strings = tokens.string_array();
  if (!strings) {
    fail("{}: expected an array of strings, got {}", r.where("tokenizer.ggml.tokens"),
         tokens.to_string());
  }
  const size_t n = strings->size();
  if (n == 0) fail("{}: the vocabulary is empty", r.where("tokenizer.ggml.tokens"));
  if (n > static_cast<size_t>(INT32_MAX)) {
    fail("{}: {} tokens do not fit 32-bit token ids", r.where("tokenizer.ggml.tokens"), n);
  }
  v.tokens.reserve(n);
  for (std::string_view s : *strings) v.tokens.emplace_back(s);
  v.ids.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // llama.cpp names an empty token "[EMPTY_<id>]" (it could never be produced from text).
    if (v.tokens[i].empty()) v.tokens[i] = fmt::format("[EMPTY_{}]", i);
    auto [it, inserted] = v.ids.emplace(v.tokens[i], static_cast<int32_t>(i));
    if (!inserted) {
      fail("{}: token '{}' has ids {} and {}; a token must appear once",
           r.where("tokenizer.ggml.tokens"), v.tokens[i], it->second, i);
    }
  }

  // token_type: llama.cpp reads it as i32; other integer arrays are accepted too.
  if (r.find("tokenizer.ggml.token_type")) {
    const io::GgufValue& types = r.array("tokenizer.ggml.token_type", n);
    v.types.resize(n);
    for (size_t i = 0; i < n; ++i) {
      std::optional<int64_t> t;
      if (types.elem_type() == io::GgufType::kI32) {
        int32_t x;
        std::memcpy(&x, types.payload().data() + 4 * i, 4);
        t = x;
      } else {
        t = types.at(i).as_int();
      }
      if (!t) {
        fail("{}: expected integers, got {}", r.where("tokenizer.ggml.token_type"),
             io::gguf_type_name(types.elem_type()));
      }
      if (*t < kNormal || *t > kByte) {
        fail("{}: token {} ('{}') has type {}; types are 1 (normal) to 6 (byte)",
             r.where("tokenizer.ggml.token_type"), i, v.tokens[i], *t);
      }
      v.types[i] = static_cast<int32_t>(*t);
    }
  } else {
    v.types.assign(n, kNormal);  // llama.cpp's default
  }

  if (with_scores) {
    if (r.find("tokenizer.ggml.scores")) {
      const io::GgufValue& scores = r.array("tokenizer.ggml.scores", n);
      // f32, or i32 as llama.cpp also accepts.
      v.scores.resize(n);
      if (scores.elem_type() == io::GgufType::kF32) {
        std::memcpy(v.scores.data(), scores.payload().data(), 4 * n);
      } else if (scores.elem_type() == io::GgufType::kI32) {
        for (size_t i = 0; i < n; ++i) {
          int32_t x;
          std::memcpy(&x, scores.payload().data() + 4 * i, 4);
          v.scores[i] = static_cast<float>(x);
        }
      } else {
        fail("{}: expected an array of f32 (or i32), got {}", r.where("tokenizer.ggml.scores"),
             io::gguf_type_name(scores.elem_type()));
      }
      for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(v.scores[i])) {
          fail("{}: token {} ('{}') has a score that is not finite",
               r.where("tokenizer.ggml.scores"), i, v.tokens[i]);
        }
      }
    } else {
      v.scores.assign(n, 0.0f);  // llama.cpp's default
    }
  }
  return v;
}

// The token types llama.cpp acts on. It recognizes end-of-generation and fill-in-the-middle
// tokens by their text and makes them control tokens whatever their type (so they are not split
// out of plain text), makes a few chat-format tokens user-defined, and undoes two of those for
// vocabularies that use them otherwise (docs/tokenizer.md, "Tokenizers from GGUF files").
void apply_llama_cpp_overrides(Vocab& v) {
  static const char* const kControlByText[] = {
      // end of turn / generation
      "<|eot_id|>",
      "<|im_end|>",
      "<|end|>",
      "<|return|>",
      "<|call|>",
      "<|flush|>",
      "<|calls|>",
      "<end_of_turn>",
      "<|endoftext|>",
      "</s>",
      "<|eom_id|>",
      "<EOT>",
      "_<EOT>",
      "[EOT]",
      "[EOS]",
      "<|end_of_text|>",
      "<end_of_utterance>",
      "<eos>",
      "<turn|>",
      "<|tool_response>",
      "<\xef\xbd\x9c"
      "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
      "[e~[",
      // fill in the middle
      "<|fim_prefix|>",
      "<fim-prefix>",
      "<fim_prefix>",
      "<\xef\xbd\x9c"
      "fim\xe2\x96\x81"
      "begin\xef\xbd\x9c>",
      "<PRE>",
      "\xe2\x96\x81<PRE>",
      "<|code_prefix|>",
      "<|prefix|>",
      "<|fim_suffix|>",
      "<fim-suffix>",
      "<fim_suffix>",
      "<\xef\xbd\x9c"
      "fim\xe2\x96\x81hole\xef\xbd\x9c>",
      "<SUF>",
      "\xe2\x96\x81<SUF>",
      "<|code_suffix|>",
      "<|suffix|>",
      "<|fim_middle|>",
      "<fim-middle>",
      "<fim_middle>",
      "<\xef\xbd\x9c"
      "fim\xe2\x96\x81"
      "end\xef\xbd\x9c>",
      "<MID>",
      "\xe2\x96\x81<MID>",
      "<|code_middle|>",
      "<|middle|>",
      "<|fim_pad|>",
      "<fim-pad>",
      "<fim_pad>",
      "<PAD>",
      "[PAD]",
      "<|fim_repo|>",
      "<|repo_name|>",
      "<fim-repo>",
      "<REPO>",
      "<reponame>",
      "<|file_sep|>",
  };
  auto id_of = [&](std::string_view t) -> int32_t {
    auto it = v.ids.find(t);
    return it == v.ids.end() ? -1 : it->second;
  };
  for (const char* t : kControlByText) {
    if (int32_t id = id_of(t); id >= 0) v.types[static_cast<size_t>(id)] = kControl;
  }
  for (const char* t : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    if (int32_t id = id_of(t); id >= 0) v.types[static_cast<size_t>(id)] = kUserDefined;
  }
  const bool has_end = id_of("<|end|>") >= 0,
             has_call = id_of("<|call|>") >= 0 || id_of("<|calls|>") >= 0;
  if (has_end && has_call && (id_of("<|return|>") >= 0 || id_of("<|flush|>") >= 0)) {
    v.types[static_cast<size_t>(id_of("<|end|>"))] = kUserDefined;
  }
  if (id_of("<|tool_response>") >= 0 && id_of("</s>") >= 0) {
    v.types[static_cast<size_t>(id_of("</s>"))] = kNormal;
  }
}

// "<0xNN>" with upper-case hex digits, as llama.cpp spells byte tokens; -1 for anything else.
int byte_of(const std::string& piece) {
  if (piece.size() != 6 || !piece.starts_with("<0x") || piece[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// ---- SentencePiece ModelProto bytes -------------------------------------------------------------

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_key(std::string& out, uint32_t field, uint32_t wire) {
  put_varint(out, field << 3 | wire);
}
void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_bool(std::string& out, uint32_t field, bool b) {
  put_key(out, field, 0);
  put_varint(out, b ? 1 : 0);
}

// The SentencePiece types the model gives libsentencepiece (ModelProto numbering).
enum SpType : int32_t { kSpNormal = 1, kSpUnknown = 2, kSpByte = 6 };

// ---- the tokenizer ------------------------------------------------------------------------------

class GgufTokenizer final : public Tokenizer {
 public:
  GgufTokenizer(const io::GgufFile& file, GgufTokenizerInfo info,
                const GgufTokenizerOptions& options)
      : info_(std::move(info)), path_(file.path().string()) {
    const KeyReader r{file};
    vocab_ = read_vocab(r, info_.model == "llama");
    apply_llama_cpp_overrides(vocab_);
    // Tokens split out of plain text: user-defined ones (and control / unknown ones with
    // parse_special), longest first as in llama.cpp (equal lengths by id).
    for (size_t i = 0; i < vocab_.tokens.size(); ++i) {
      const int32_t t = vocab_.types[i];
      if (t == kUserDefined || (options.parse_special && (t == kControl || t == kUnknown))) {
        split_out_.push_back(static_cast<int32_t>(i));
      }
    }
    std::stable_sort(split_out_.begin(), split_out_.end(), [&](int32_t a, int32_t b) {
      return vocab_.tokens[a].size() > vocab_.tokens[b].size();
    });
    if (info_.model == "gpt2") {
      build_bpe(r);
    } else {
      build_spm(r);
    }
  }

  Encoding encode(std::string_view text, const EncodeOptions& options) const override {
    Encoding out;
    if (options.add_special_tokens && info_.add_bos) out.ids.push_back(*info_.bos_id);
    for (const Fragment& f : partition(text)) {
      if (f.token >= 0) {
        out.ids.push_back(f.token);
        continue;
      }
      encode_text(text.substr(f.begin, f.end - f.begin), out.ids);
    }
    if (options.add_special_tokens && info_.add_eos) out.ids.push_back(*info_.eos_id);
    out.tokens.reserve(out.ids.size());
    for (int32_t id : out.ids) out.tokens.push_back(vocab_.tokens[static_cast<size_t>(id)]);
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids, const DecodeOptions& options) const override {
    std::vector<int32_t> kept;
    kept.reserve(ids.size());
    const size_t n = vocab_.tokens.size();
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= n) {
        fail("{}: token id {} is out of range (the vocabulary has {} tokens)", path_, id, n);
      }
      const int32_t type = vocab_.types[static_cast<size_t>(id)];
      if (options.skip_special_tokens && (type == kControl || type == kUnknown)) continue;
      // llama.cpp renders control tokens as nothing in SentencePiece vocabularies.
      if (sp_ && type == kControl) continue;
      kept.push_back(id);
    }
    if (bpe_) return bpe_->decode(kept);
    std::string text;
    const std::vector<int> sp_ids(kept.begin(), kept.end());
    const auto status = sp_->Decode(sp_ids, &text);
    if (!status.ok())
      fail("{}: SentencePiece could not decode the ids: {}", path_, status.message());
    return text;
  }

  size_t vocab_size() const override { return vocab_.tokens.size(); }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    auto it = vocab_.ids.find(token);
    if (it == vocab_.ids.end()) return std::nullopt;
    return it->second;
  }
  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || static_cast<size_t>(id) >= vocab_.tokens.size()) return std::nullopt;
    return vocab_.tokens[static_cast<size_t>(id)];
  }
  bool is_special(int32_t id) const override {
    if (id < 0 || static_cast<size_t>(id) >= vocab_.tokens.size()) return false;
    const int32_t t = vocab_.types[static_cast<size_t>(id)];
    return t == kControl || t == kUnknown;
  }
  std::string_view kind() const override { return "gguf"; }

 private:
  // A piece of the input: text [begin, end) or a token (token >= 0).
  struct Fragment {
    size_t begin = 0, end = 0;
    int32_t token = -1;
  };

  // llama.cpp's special-token partition: for each token to split out, longest first, every
  // occurrence in every piece of text left so far becomes a token; empty text pieces vanish.
  std::vector<Fragment> partition(std::string_view text) const {
    std::vector<Fragment> frags;
    if (text.empty()) return frags;
    frags.push_back({0, text.size(), -1});
    for (int32_t id : split_out_) {
      const std::string& tok = vocab_.tokens[static_cast<size_t>(id)];
      if (text.find(tok) == std::string_view::npos) continue;  // the common case
      std::vector<Fragment> next;
      next.reserve(frags.size());
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          next.push_back(f);
          continue;
        }
        size_t at = f.begin;
        while (at < f.end) {
          const size_t hit = text.substr(0, f.end).find(tok, at);
          if (hit == std::string_view::npos) break;
          if (hit > at) next.push_back({at, hit, -1});
          next.push_back({hit, hit + tok.size(), id});
          at = hit + tok.size();
        }
        if (at < f.end) next.push_back({at, f.end, -1});
      }
      frags = std::move(next);
    }
    return frags;
  }

  // One piece of plain text through the engine.
  void encode_text(std::string_view piece, std::vector<int32_t>& ids) const {
    if (bpe_) {
      const Encoding e = bpe_->encode(piece, {.add_special_tokens = false});
      ids.insert(ids.end(), e.ids.begin(), e.ids.end());
      return;
    }
    std::vector<int> sp_ids;
    const auto status = sp_->Encode(absl::string_view(piece.data(), piece.size()), &sp_ids);
    if (!status.ok())
      fail("{}: SentencePiece could not encode the text: {}", path_, status.message());
    for (int id : sp_ids) {
      if (id < 0 || static_cast<size_t>(id) >= vocab_.tokens.size()) {
        // Only the stand-in unknown piece lies past the vocabulary.
        fail(
            "{}: the text holds a character that the vocabulary cannot spell (no byte token for "
            "it and no unknown token, tokenizer.ggml.token_type 2)",
            path_);
      }
      ids.push_back(id);
    }
  }

  // "gpt2": the tokenizer.json document llama.cpp's BPE tokenizer amounts to, with every token
  // in the model vocabulary (so that control tokens stay in the text) and the splitting regexes
  // of tokenizer.ggml.pre.
  void build_bpe(const KeyReader& r) {
    const PreType* pre = find_pre_type(info_.pre);  // checked by read_gguf_tokenizer_info
    for (size_t i = 0; i < vocab_.tokens.size(); ++i) {
      if (!is_valid_utf8(vocab_.tokens[i])) {
        fail("{}: token {} is not valid UTF-8, which a byte-level BPE vocabulary never holds",
             r.where("tokenizer.ggml.tokens"), i);
      }
    }
    // Appended directly: the tokens are known to be distinct, and the ordered object's own
    // insertion looks for the key first, which is quadratic in the vocabulary size.
    Json vocab = Json::object();
    auto& entries = vocab.get_ref<Json::object_t&>();
    entries.reserve(vocab_.tokens.size());
    for (size_t i = 0; i < vocab_.tokens.size(); ++i) entries.emplace_back(vocab_.tokens[i], i);
    const io::GgufValue& merges_kv = r.array("tokenizer.ggml.merges", 0);
    auto merge_strings = merges_kv.string_array();
    if (!merge_strings) {
      fail("{}: expected an array of strings, got {}", r.where("tokenizer.ggml.merges"),
           merges_kv.to_string());
    }
    Json merges = Json::array();
    for (size_t i = 0; i < merge_strings->size(); ++i) {
      const std::string_view m = (*merge_strings)[i];
      // llama.cpp splits at the first space after the first byte.
      const size_t space = m.size() > 1 ? m.find(' ', 1) : std::string_view::npos;
      if (space == std::string_view::npos || space + 1 >= m.size()) {
        fail("{}: merge {} ('{}') is not 'left right'", r.where("tokenizer.ggml.merges"), i, m);
      }
      const std::string left(m.substr(0, space)), right(m.substr(space + 1));
      for (const std::string* part : {&left, &right}) {
        if (!vocab_.ids.count(*part)) {
          fail("{}: merge {} ('{}') names '{}', which is not a token",
               r.where("tokenizer.ggml.merges"), i, m, *part);
        }
      }
      if (!vocab_.ids.count(left + right)) {
        fail("{}: merge {} ('{}') produces '{}', which is not a token",
             r.where("tokenizer.ggml.merges"), i, m, left + right);
      }
      merges.push_back(Json::array({left, right}));
    }
    Json pretokenizers = Json::array();
    for (const char* regex : pre->regexes) {
      pretokenizers.push_back({{"type", "Split"},
                               {"pattern", {{"Regex", regex}}},
                               {"behavior", "Isolated"},
                               {"invert", false}});
    }
    const Json byte_level = {{"type", "ByteLevel"},
                             {"add_prefix_space", false},
                             {"trim_offsets", false},
                             {"use_regex", false}};
    pretokenizers.push_back(byte_level);
    Json doc = {{"version", "1.0"},
                {"truncation", nullptr},
                {"padding", nullptr},
                {"added_tokens", Json::array()},
                {"normalizer", nullptr},
                {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", pretokenizers}}},
                {"post_processor", nullptr},
                {"decoder", byte_level},
                {"model",
                 {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", pre->ignore_merges},
                  {"vocab", std::move(vocab)},
                  {"merges", std::move(merges)}}}};
    bpe_ = std::make_unique<JsonTokenizer>(
        std::move(doc), path_ + " (tokenizer.ggml.* as a tokenizer.json document)");
  }

  // "llama": a SentencePiece BPE model with the file's pieces and scores. Every token but byte
  // tokens and the unknown token is a normal piece, so that merges may form any token as in
  // llama.cpp; user-defined tokens never reach the engine (partition() splits them out).
  void build_spm(const KeyReader& r) {
    std::string model;
    bool has_bytes = false;
    int32_t unk = -1;
    auto put_piece = [&](std::string_view text, float score, int32_t type) {
      std::string p;
      put_bytes(p, 1, text);
      put_key(p, 2, 5);
      uint32_t bits;
      std::memcpy(&bits, &score, 4);
      for (int i = 0; i < 4; ++i) p += static_cast<char>((bits >> (8 * i)) & 0xFF);
      put_key(p, 3, 0);
      put_varint(p, static_cast<uint64_t>(type));
      put_bytes(model, 1, p);
    };
    for (size_t i = 0; i < vocab_.tokens.size(); ++i) {
      const std::string& t = vocab_.tokens[i];
      int32_t type = kSpNormal;
      if (vocab_.types[i] == kByte) {
        if (byte_of(t) < 0) {
          fail("{}: token {} ('{}') has type 6 (byte) but is not spelled <0xNN>",
               r.where("tokenizer.ggml.token_type"), i, t);
        }
        type = kSpByte;
        has_bytes = true;
      } else if (vocab_.types[i] == kUnknown && unk < 0) {
        type = kSpUnknown;
        unk = static_cast<int32_t>(i);
      }
      if (t[0] == '\0') {
        fail("{}: token {} starts with a NUL byte", r.where("tokenizer.ggml.tokens"), i);
      }
      put_piece(t, vocab_.scores[i], type);
    }
    if (unk < 0) {
      // libsentencepiece needs an unknown piece: a stand-in past the vocabulary, never a token.
      std::string stand_in = "<smelt:unk>";
      while (vocab_.ids.count(stand_in)) stand_in += "_";
      put_piece(stand_in, 0.0f, kSpUnknown);
    }
    std::string trainer;
    put_key(trainer, 3, 0);            // model_type
    put_varint(trainer, 2);            // BPE
    put_bool(trainer, 35, has_bytes);  // byte_fallback
    put_bytes(model, 2, trainer);
    std::string normalizer;
    put_bytes(normalizer, 1, "identity");
    put_bool(normalizer, 3, info_.add_space_prefix);  // add_dummy_prefix
    put_bool(normalizer, 4, false);                   // remove_extra_whitespaces
    put_bool(normalizer, 5, true);                    // escape_whitespaces
    put_bytes(model, 3, normalizer);

    sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    sentencepiece::util::Status status;
    try {
      status = sp_->LoadFromSerializedProto(model);
    } catch (const std::exception& e) {
      fail("{}: libsentencepiece refuses the vocabulary of tokenizer.ggml.tokens ({})", path_,
           e.what());
    }
    if (!status.ok()) {
      fail("{}: libsentencepiece refuses the vocabulary of tokenizer.ggml.tokens ({})", path_,
           status.message());
    }
  }

  GgufTokenizerInfo info_;
  std::string path_;
  Vocab vocab_;
  std::vector<int32_t> split_out_;
  std::unique_ptr<JsonTokenizer> bpe_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

std::vector<std::string> GgufTokenizerInfo::known_pre_types() {
  std::vector<std::string> out;
  for (const PreType& t : pre_types()) out.insert(out.end(), t.names.begin(), t.names.end());
  return out;
}

GgufTokenizerInfo read_gguf_tokenizer_info(const io::GgufFile& file) {
  const KeyReader r{file};
  GgufTokenizerInfo info;
  r.required("tokenizer.ggml.model");
  info.model = *r.string("tokenizer.ggml.model");
  const io::GgufValue& tokens = r.required("tokenizer.ggml.tokens");
  if (!tokens.is_array() || tokens.elem_type() != io::GgufType::kString) {
    fail("{}: expected an array of strings, got {}", r.where("tokenizer.ggml.tokens"),
         tokens.to_string());
  }
  info.vocab_size = tokens.size();
  const size_t n = info.vocab_size;
  // llama.cpp's defaults per model, then the keys.
  std::optional<int32_t> bos, eos, unk;
  if (info.model == "gpt2") {
    info.pre = r.string("tokenizer.ggml.pre").value_or("default");
    const PreType* pre = find_pre_type(info.pre);
    if (!pre) {
      std::string known;
      for (const std::string& k : GgufTokenizerInfo::known_pre_types()) {
        known += known.empty() ? k : ", " + k;
      }
      fail("{}: pre-tokenizer '{}' is not one smelt knows; known: {}",
           r.where("tokenizer.ggml.pre"), info.pre, known);
    }
    info.add_bos = pre->add_bos;
    bos = eos = 11;
  } else if (info.model == "llama") {
    info.pre = "default";
    info.add_bos = true;
    info.add_space_prefix = true;
    bos = 1;
    eos = 2;
    unk = 0;
  } else {
    fail("{}: tokenizer model '{}' is not supported (smelt tokenizes \"gpt2\" and \"llama\")",
         r.where("tokenizer.ggml.model"), info.model);
  }
  auto in_range = [&](std::optional<int32_t> id) -> std::optional<int32_t> {
    return id && static_cast<size_t>(*id) < n ? id : std::nullopt;
  };
  info.bos_id = r.find("tokenizer.ggml.bos_token_id") ? r.token_id("tokenizer.ggml.bos_token_id", n)
                                                      : in_range(bos);
  info.eos_id = r.find("tokenizer.ggml.eos_token_id") ? r.token_id("tokenizer.ggml.eos_token_id", n)
                                                      : in_range(eos);
  info.unk_id = r.find("tokenizer.ggml.unknown_token_id")
                    ? r.token_id("tokenizer.ggml.unknown_token_id", n)
                    : in_range(unk);
  info.pad_id = r.token_id("tokenizer.ggml.padding_token_id", n);
  if (auto b = r.boolean("tokenizer.ggml.add_bos_token")) info.add_bos = *b;
  if (auto b = r.boolean("tokenizer.ggml.add_eos_token")) info.add_eos = *b;
  if (auto b = r.boolean("tokenizer.ggml.add_space_prefix"); b && info.model == "llama") {
    info.add_space_prefix = *b;
  }
  if (info.add_bos && !info.bos_id) {
    fail("{}: BOS is added (tokenizer.ggml.add_bos_token) but there is no BOS token id",
         r.where("tokenizer.ggml.bos_token_id"));
  }
  if (info.add_eos && !info.eos_id) {
    fail("{}: EOS is added (tokenizer.ggml.add_eos_token) but there is no EOS token id",
         r.where("tokenizer.ggml.eos_token_id"));
  }
  return info;
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const io::GgufFile& file,
                                               const GgufTokenizerOptions& options) {
  return std::make_unique<GgufTokenizer>(file, read_gguf_tokenizer_info(file), options);
}

}  // namespace smelt::tok
