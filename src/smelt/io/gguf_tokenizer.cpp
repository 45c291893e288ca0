// Tokenizer files -> tokenizer.ggml.* KVs: the vocabulary as the tokenizer module reads it
// (libsentencepiece, the tokenizer.json engine), GGUF's token types, special tokens and chat
// templates.
#include "smelt/io/gguf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "smelt/error.h"
#include "smelt/io/gguf_json.h"
#include "smelt/tokenizer/sentencepiece_model.h"
#include "smelt/tokenizer/tokenizer_json.h"

namespace smelt::io {
namespace fs = std::filesystem;
using gguf_json::find;
using gguf_json::read_file;
using gguf_json::read_json;
using nlohmann::json;

namespace {

bool ends_with(std::string_view s, std::string_view suffix) { return s.ends_with(suffix); }
bool starts_with(std::string_view s, std::string_view prefix) { return s.starts_with(prefix); }

// ---- tokenizer.json -----------------------------------------------------------------------------

// The converter's does_token_look_special: added tokens that are control tokens in practice.
bool looks_special(std::string_view t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (starts_with(t, "<|") && ends_with(t, "|>")) return true;
  if (starts_with(t, "<\xef\xbd\x9c") && ends_with(t, "\xef\xbd\x9c>")) return true;  // <｜ ｜>
  return starts_with(t, "<unused") && ends_with(t, ">");
}

// Replaces SentencePiece's "▁" by a space (the converter pre-normalizes user-defined tokens so).
std::string sp_spaces(std::string s) {
  static constexpr std::string_view kMeta = "\xe2\x96\x81";
  size_t at = 0;
  while ((at = s.find(kMeta, at)) != std::string::npos) {
    s.replace(at, kMeta.size(), " ");
    at += 1;
  }
  return s;
}

// A JSON value of the validated document, or nullptr when absent or null.
const tok::Json* find_in(const tok::Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

// model.merges as llama.cpp stores them: "left right", in rank order. The engine has checked each
// entry (a "left right" string or a pair of strings whose tokens are in the vocabulary).
std::vector<std::string> bpe_merges(const tok::Json& model) {
  std::vector<std::string> out;
  const tok::Json* merges = find_in(model, "merges");
  if (!merges) return out;
  out.reserve(merges->size());
  for (const tok::Json& m : *merges) {
    if (m.is_string()) {
      out.push_back(m.get<std::string>());
      continue;
    }
    // transformers >= 4.45 pairs; spaces inside a part are stored as U+0120 ('Ġ') as the
    // converter does, so the "left right" string stays unambiguous.
    std::string s;
    for (int part = 0; part < 2; ++part) {
      if (part == 1) s += ' ';
      for (char c : m[part].get_ref<const std::string&>()) {
        if (c == ' ') {
          s += "\xc4\xa0";
        } else {
          s += c;
        }
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

void check_unique(const std::vector<std::string>& tokens, const fs::path& file) {
  std::unordered_map<std::string_view, size_t> seen;
  seen.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto [it, inserted] = seen.emplace(tokens[i], i);
    if (!inserted) {
      fail("{}: token '{}' has ids {} and {}; llama.cpp refuses duplicate tokens", file.string(),
           tokens[i], it->second, i);
    }
  }
}

// The GGUF vocabulary of a tokenizer.json that the module's engine has loaded and validated
// (ids without holes, added tokens at the ids the reference library gives them, merges of
// vocabulary tokens); the token type rules are the converter's (docs/gguf.md, "Tokenizer").
GgufVocab vocab_from_tokenizer_json(const tok::JsonTokenizer& tokenizer, const fs::path& file,
                                    int64_t vocab_size) {
  const tok::Json& tj = tokenizer.json();
  const tok::Json& model = tj["model"];
  const tok::Json* type = find_in(model, "type");
  const std::string model_type = type && type->is_string() ? type->get<std::string>() : "";
  if (model_type != "BPE") {
    fail(
        "{}: tokenizer model type '{}' is not supported for GGUF export (only BPE; a "
        "SentencePiece model needs its tokenizer.model)",
        file.string(), model_type.empty() ? std::string("(none)") : model_type);
  }
  const tok::Json* bf = find_in(model, "byte_fallback");
  const bool byte_fallback = bf && bf->is_boolean() && bf->get<bool>();

  const int64_t count = static_cast<int64_t>(tokenizer.vocab_size());
  if (count == 0) fail("{}: the vocabulary is empty", file.string());
  const int64_t n = vocab_size >= 0 ? vocab_size : count;
  if (n > static_cast<int64_t>(kGgufMaxArrayElements)) {
    fail("{}: vocabulary size {} exceeds the {} tokens a GGUF array can hold", file.string(), n,
         kGgufMaxArrayElements);
  }
  if (count > n) {
    fail("{}: token id {} is not below the model's vocab_size {} (config.json)", file.string(),
         count - 1, n);
  }

  GgufVocab v;
  v.tokens.reserve(static_cast<size_t>(n));
  v.token_types.assign(static_cast<size_t>(n), kGgufTokenNormal);
  for (int64_t i = 0; i < count; ++i)
    v.tokens.push_back(*tokenizer.id_to_token(static_cast<int32_t>(i)));
  for (int64_t i = count; i < n; ++i) {
    v.tokens.push_back(fmt::format("[PAD{}]", i));
    v.token_types[static_cast<size_t>(i)] = kGgufTokenUnused;
  }
  for (const tok::AddedToken& a : tokenizer.added_tokens()) {
    const size_t i = static_cast<size_t>(a.id);
    if (a.special || looks_special(a.content)) {
      v.token_types[i] = kGgufTokenControl;
    } else {
      if (!byte_fallback) v.tokens[i] = sp_spaces(a.content);
      v.token_types[i] = kGgufTokenUserDefined;
    }
  }
  if (byte_fallback) {
    // A SentencePiece model in tokenizers' BPE form (the converter's LlamaHfVocab): "llama" with
    // every score -1000 and "<0xXX>" pieces as byte tokens.
    v.model = "llama";
    v.pre = "default";
    v.scores.assign(static_cast<size_t>(n), -1000.0f);
    for (size_t i = 0; i < v.tokens.size(); ++i) {
      const std::string& s = v.tokens[i];
      if (v.token_types[i] == kGgufTokenNormal && s.size() == 6 && starts_with(s, "<0x") &&
          s[5] == '>' && std::isxdigit(static_cast<unsigned char>(s[3])) &&
          std::isxdigit(static_cast<unsigned char>(s[4]))) {
        v.token_types[i] = kGgufTokenByte;
      }
    }
  } else {
    v.model = "gpt2";
    v.pre = gguf_bpe_pre_type(tj);
    // An empty merges list is valid: every token is then a byte or an added token
    // (docs/gguf.md, "Tokenizer").
    v.merges = bpe_merges(model);
  }
  check_unique(v.tokens, file);
  return v;
}

// Overlays the added tokens the converter takes for SentencePiece models: added_tokens.json and
// tokenizer_config.json's added_tokens_decoder (score -1000; control or user-defined).
void overlay_sp_added_tokens(GgufVocab& v, const fs::path& dir, const json* tokenizer_config) {
  const size_t n = v.tokens.size();
  const fs::path added_file = dir / "added_tokens.json";
  if (fs::is_regular_file(added_file)) {
    const json added = read_json(added_file);
    if (!added.is_object()) fail("{}: must be an object of token -> id", added_file.string());
    for (auto it = added.begin(); it != added.end(); ++it) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0) {
        fail("{}: id of '{}' must be a non-negative integer", added_file.string(), it.key());
      }
      const auto id = static_cast<uint64_t>(it->get<int64_t>());
      if (id >= n) continue;  // the converter ignores ids past the vocabulary
      v.tokens[id] = it.key();
      v.scores[id] = -1000.0f;
      v.token_types[id] = kGgufTokenUserDefined;
    }
  }
  const json* decoder =
      tokenizer_config ? find(*tokenizer_config, "added_tokens_decoder") : nullptr;
  if (!decoder) return;
  const std::string tc = (dir / "tokenizer_config.json").string();
  if (!decoder->is_object()) fail("{}: 'added_tokens_decoder' must be an object", tc);
  for (auto it = decoder->begin(); it != decoder->end(); ++it) {
    uint64_t id = 0;
    const std::string& key = it.key();
    if (key.empty() || key.size() > 10 ||
        !std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail("{}: added_tokens_decoder key '{}' is not a token id", tc, key);
    }
    id = std::stoull(key);
    const json* content = find(*it, "content");
    if (!content || !content->is_string()) {
      fail("{}: added_tokens_decoder['{}'] needs a string 'content'", tc, key);
    }
    if (id >= n) continue;
    std::string token = content->get<std::string>();
    const json* special = find(*it, "special");
    if ((special && special->is_boolean() && special->get<bool>()) || looks_special(token)) {
      v.token_types[id] = kGgufTokenControl;
    } else {
      token = sp_spaces(std::move(token));
      v.token_types[id] = kGgufTokenUserDefined;
    }
    v.scores[id] = -1000.0f;
    v.tokens[id] = std::move(token);
  }
}

// The content of a special-token entry of tokenizer_config.json ("<s>" or {"content": "<s>"}).
std::optional<std::string> token_content(const json* entry) {
  if (!entry) return std::nullopt;
  if (entry->is_string()) return entry->get<std::string>();
  if (const json* c = find(*entry, "content"); c && c->is_string()) return c->get<std::string>();
  return std::nullopt;
}

struct Specials {
  std::vector<std::pair<std::string, uint32_t>> ids;  // GGUF key -> id, in insertion order
  std::optional<bool> add_bos, add_eos;
  bool has(const std::string& key) const {
    return std::any_of(ids.begin(), ids.end(), [&](const auto& p) { return p.first == key; });
  }
};

// Special token ids and add_bos/add_eos as the converter's SpecialVocab finds them:
// tokenizer.json's TemplateProcessing, then tokenizer_config.json names (and add_*_token
// booleans), then special_tokens_map.json names, then config.json *_token_id; the first source
// that gives a type wins and ids outside the vocabulary are skipped.
Specials find_specials(const fs::path& dir, const json& config, const tok::Json* tokenizer_json,
                       const json* tokenizer_config, const std::vector<std::string>& tokens) {
  static const std::pair<const char*, const char*> kTypes[] = {
      {"bos", "tokenizer.ggml.bos_token_id"},     {"eos", "tokenizer.ggml.eos_token_id"},
      {"unk", "tokenizer.ggml.unknown_token_id"}, {"sep", "tokenizer.ggml.seperator_token_id"},
      {"pad", "tokenizer.ggml.padding_token_id"}, {"mask", "tokenizer.ggml.mask_token_id"},
  };
  Specials s;
  std::unordered_map<std::string_view, uint32_t> id_of;
  for (size_t i = tokens.size(); i-- > 0;)
    id_of[tokens[i]] = static_cast<uint32_t>(i);  // first id wins
  auto set = [&](const char* key, int64_t id) {
    if (id < 0 || static_cast<uint64_t>(id) >= tokens.size() || s.has(key)) return;
    s.ids.emplace_back(key, static_cast<uint32_t>(id));
  };
  auto set_by_name = [&](const char* key, const std::optional<std::string>& content) {
    if (!content) return;
    if (auto it = id_of.find(*content); it != id_of.end()) set(key, it->second);
  };

  std::optional<std::string> bos_name =
      tokenizer_config ? token_content(find(*tokenizer_config, "bos_token")) : std::nullopt;
  std::optional<std::string> eos_name =
      tokenizer_config ? token_content(find(*tokenizer_config, "eos_token")) : std::nullopt;
  // A TemplateProcessing post-processor that wraps single sequences in BOS ... EOS means the
  // tokenizer adds them (Llama 3 has no add_bos_token but such a template).
  if (const tok::Json* pp = tokenizer_json ? find_in(*tokenizer_json, "post_processor") : nullptr) {
    std::vector<const tok::Json*> procs;
    if (const tok::Json* list = find_in(*pp, "processors"); list && list->is_array()) {
      for (const tok::Json& p : *list) procs.push_back(&p);
    } else {
      procs.push_back(pp);
    }
    for (const tok::Json* p : procs) {
      const tok::Json* type = find_in(*p, "type");
      if (!type || *type != "TemplateProcessing") continue;
      const tok::Json* single = find_in(*p, "single");
      if (!single || !single->is_array() || single->size() < 2) continue;
      auto special_id = [](const tok::Json& item) -> std::optional<std::string> {
        const tok::Json* st = find_in(item, "SpecialToken");
        const tok::Json* id = st ? find_in(*st, "id") : nullptr;
        if (id && id->is_string()) return id->get<std::string>();
        return std::nullopt;
      };
      if (auto first = special_id(single->front())) {
        if (!bos_name) bos_name = first;
        s.add_bos = *first == *bos_name;
      }
      if (auto last = special_id(single->back())) {
        if (!eos_name) eos_name = last;
        s.add_eos = *last == *eos_name;
      }
    }
  }
  if (tokenizer_config) {
    for (const auto& [typ, key] : kTypes) {
      const std::string name = std::string(typ) + "_token";
      std::optional<std::string> content = token_content(find(*tokenizer_config, name.c_str()));
      if (std::string_view(typ) == "bos" && !content) content = bos_name;
      if (std::string_view(typ) == "eos" && !content) content = eos_name;
      set_by_name(key, content);
    }
    for (const char* typ : {"bos", "eos"}) {
      const std::string name = fmt::format("add_{}_token", typ);
      if (const json* v = find(*tokenizer_config, name.c_str()); v && v->is_boolean()) {
        (std::string_view(typ) == "bos" ? s.add_bos : s.add_eos) = v->get<bool>();
      }
    }
  } else {
    set_by_name("tokenizer.ggml.bos_token_id", bos_name);
    set_by_name("tokenizer.ggml.eos_token_id", eos_name);
  }
  const fs::path map_file = dir / "special_tokens_map.json";
  if (fs::is_regular_file(map_file)) {
    const json map = read_json(map_file);
    for (const auto& [typ, key] : kTypes) {
      set_by_name(key, token_content(find(map, (std::string(typ) + "_token").c_str())));
    }
  }
  for (const auto& [typ, key] : kTypes) {
    const json* v = find(config, (std::string(typ) + "_token_id").c_str());
    if (v && v->is_number_integer()) set(key, v->get<int64_t>());  // lists (several EOS) skipped
  }
  return s;
}

void add_chat_template(std::vector<GgufKv>& kvs, const fs::path& dir,
                       const json* tokenizer_config) {
  json tmpl;
  if (tokenizer_config) {
    if (const json* t = find(*tokenizer_config, "chat_template")) tmpl = *t;
  }
  if (tmpl.is_null()) {
    if (fs::is_regular_file(dir / "chat_template.jinja")) {
      tmpl = read_file(dir / "chat_template.jinja");
    } else if (fs::is_regular_file(dir / "chat_template.json")) {
      const json j = read_json(dir / "chat_template.json");
      if (const json* t = find(j, "chat_template")) tmpl = *t;
    }
  }
  if (tmpl.is_null()) return;
  if (tmpl.is_string()) {
    gguf_set_kv(kvs, "tokenizer.chat_template", GgufValue::of(tmpl.get<std::string>()));
    return;
  }
  const std::string where = (dir / "tokenizer_config.json").string();
  if (!tmpl.is_array()) fail("{}: 'chat_template' must be a string or a list", where);
  // A list of {"name", "template"}: "default" is the chat template, the others named ones.
  std::vector<std::string> names;
  for (const json& choice : tmpl) {
    const json* name = find(choice, "name");
    const json* text = find(choice, "template");
    if (!name || !name->is_string() || !text || !text->is_string()) {
      fail("{}: each chat_template entry needs string 'name' and 'template'", where);
    }
    std::string n = name->get<std::string>();
    for (char& c : n) {
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    if (n.empty()) continue;
    if (n == "default") {
      gguf_set_kv(kvs, "tokenizer.chat_template", GgufValue::of(text->get<std::string>()));
    } else {
      gguf_set_kv(kvs, "tokenizer.chat_template." + n, GgufValue::of(text->get<std::string>()));
      names.push_back(n);
    }
  }
  if (!names.empty()) gguf_set_kv(kvs, "tokenizer.chat_templates", GgufValue::array(names));
}

}  // namespace

GgufVocab gguf_sentencepiece_vocab(const fs::path& tokenizer_model, int64_t vocab_size) {
  tok::SentencePieceVocab pieces = tok::read_sentencepiece_vocab(tokenizer_model);
  if (pieces.pieces.empty())
    fail("{}: the SentencePiece model has no pieces", tokenizer_model.string());
  if (vocab_size > static_cast<int64_t>(kGgufMaxArrayElements)) {
    fail("{}: vocabulary size {} exceeds the {} tokens a GGUF array can hold",
         tokenizer_model.string(), vocab_size, kGgufMaxArrayElements);
  }
  const size_t n = vocab_size >= 0 ? static_cast<size_t>(vocab_size) : pieces.pieces.size();
  GgufVocab v;
  v.model = "llama";
  v.pre = "default";
  v.tokens.reserve(n);
  v.scores.reserve(n);
  v.token_types.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (i < pieces.pieces.size()) {
      if (!std::isfinite(pieces.scores[i])) {
        fail("{}: piece {} ('{}') has a score that is not finite", tokenizer_model.string(), i,
             pieces.pieces[i]);
      }
      v.tokens.push_back(std::move(pieces.pieces[i]));
      v.scores.push_back(pieces.scores[i]);
      // SentencePiece's piece types are llama.cpp's token types, number for number.
      v.token_types.push_back(static_cast<int32_t>(pieces.types[i]));
    } else {
      v.tokens.push_back(fmt::format("[PAD{}]", i));
      v.scores.push_back(-10000.0f);
      v.token_types.push_back(kGgufTokenUnused);
    }
  }
  return v;
}

std::string gguf_bpe_pre_type(const tok::Json& tokenizer_json) {
  // The split regexes of the Llama 3 and Qwen2 tokenizer.json files, as llama.cpp quotes them.
  static constexpr std::string_view kLlama3 =
      R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
  static constexpr std::string_view kQwen2 =
      R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
  const tok::Json* pre = find_in(tokenizer_json, "pre_tokenizer");
  if (!pre) return "default";
  auto type_of = [](const tok::Json& j) -> std::string {
    const tok::Json* t = find_in(j, "type");
    return t && t->is_string() ? t->get<std::string>() : "";
  };
  auto use_regex = [](const tok::Json& j) {
    const tok::Json* u = find_in(j, "use_regex");
    return !u || !u->is_boolean() || u->get<bool>();  // tokenizers' default is true
  };
  if (type_of(*pre) == "ByteLevel") return use_regex(*pre) ? "gpt-2" : "default";
  if (type_of(*pre) != "Sequence") return "default";
  const tok::Json* list = find_in(*pre, "pretokenizers");
  if (!list || !list->is_array() || list->size() != 2) return "default";
  const tok::Json& split = (*list)[0];
  const tok::Json& byte_level = (*list)[1];
  if (type_of(split) != "Split" || type_of(byte_level) != "ByteLevel" || use_regex(byte_level)) {
    return "default";
  }
  const tok::Json* pattern = find_in(split, "pattern");
  const tok::Json* regex = pattern ? find_in(*pattern, "Regex") : nullptr;
  if (!regex || !regex->is_string()) return "default";
  const std::string& r = regex->get_ref<const std::string&>();
  if (r == kLlama3) return "llama-bpe";
  if (r == kQwen2) return "qwen2";
  return "default";
}

void gguf_add_tokenizer_kvs(std::vector<GgufKv>& kvs, const fs::path& model_dir, const json& config,
                            uint32_t vocab_size) {
  auto set = [&](const std::string& key, GgufValue v) { gguf_set_kv(kvs, key, std::move(v)); };
  // tokenizer.model first (as the converter), else tokenizer.json.
  const fs::path tokenizer_json_file = model_dir / "tokenizer.json";
  const fs::path tokenizer_model_file = model_dir / "tokenizer.model";
  const fs::path tokenizer_config_file = model_dir / "tokenizer_config.json";
  std::optional<json> tokenizer_config;
  if (fs::is_regular_file(tokenizer_config_file)) {
    tokenizer_config = read_json(tokenizer_config_file);
    if (!tokenizer_config->is_object()) {
      fail("{}: must be a JSON object", tokenizer_config_file.string());
    }
  }
  GgufVocab vocab;
  // tokenizer.json as the tokenizer module reads it: the whole engine (which validates every
  // id, merge and added token) when it gives the vocabulary, else only its JSON for the specials.
  std::unique_ptr<tok::JsonTokenizer> json_tokenizer;
  tok::Json tokenizer_json;
  const bool has_tokenizer_json = fs::is_regular_file(tokenizer_json_file);
  if (fs::is_regular_file(tokenizer_model_file)) {
    if (has_tokenizer_json) tokenizer_json = tok::read_json_file(tokenizer_json_file.string());
    vocab = gguf_sentencepiece_vocab(tokenizer_model_file, vocab_size);
    overlay_sp_added_tokens(vocab, model_dir, tokenizer_config ? &*tokenizer_config : nullptr);
    check_unique(vocab.tokens, tokenizer_model_file);
  } else if (has_tokenizer_json) {
    // No config folder: the specials below are read from tokenizer_config.json by GGUF's rules.
    json_tokenizer = std::make_unique<tok::JsonTokenizer>(tokenizer_json_file, fs::path());
    vocab = vocab_from_tokenizer_json(*json_tokenizer, tokenizer_json_file, vocab_size);
  } else {
    fail("{}: no tokenizer.model or tokenizer.json; GGUF export needs the tokenizer",
         model_dir.string());
  }
  const tok::Json* tokenizer_json_doc =
      json_tokenizer ? &json_tokenizer->json() : (has_tokenizer_json ? &tokenizer_json : nullptr);
  set("tokenizer.ggml.model", GgufValue::of(vocab.model));
  set("tokenizer.ggml.pre", GgufValue::of(vocab.pre));
  set("tokenizer.ggml.tokens", GgufValue::array(vocab.tokens));
  if (!vocab.scores.empty()) set("tokenizer.ggml.scores", GgufValue::array(vocab.scores));
  set("tokenizer.ggml.token_type", GgufValue::array(vocab.token_types));
  // llama.cpp refuses a "gpt2" vocabulary without the merges key, even an empty one.
  if (vocab.model == "gpt2") set("tokenizer.ggml.merges", GgufValue::array(vocab.merges));

  const Specials specials =
      find_specials(model_dir, config, tokenizer_json_doc,
                    tokenizer_config ? &*tokenizer_config : nullptr, vocab.tokens);
  for (const auto& [key, id] : specials.ids) set(key, GgufValue::of(id));
  if (specials.add_bos) {
    if (*specials.add_bos && !specials.has("tokenizer.ggml.bos_token_id")) {
      fail(
          "{}: the tokenizer adds a BOS token but no BOS token id was found (bos_token in "
          "tokenizer_config.json or bos_token_id in config.json)",
          model_dir.string());
    }
    set("tokenizer.ggml.add_bos_token", GgufValue::of(*specials.add_bos));
  }
  if (specials.add_eos) {
    if (*specials.add_eos && !specials.has("tokenizer.ggml.eos_token_id")) {
      fail("{}: the tokenizer adds an EOS token but no EOS token id was found", model_dir.string());
    }
    set("tokenizer.ggml.add_eos_token", GgufValue::of(*specials.add_eos));
  }
  if (tokenizer_config) {
    if (const json* v = find(*tokenizer_config, "add_prefix_space"); v && v->is_boolean()) {
      set("tokenizer.ggml.add_space_prefix", GgufValue::of(v->get<bool>()));
    }
  }
  add_chat_template(kvs, model_dir, tokenizer_config ? &*tokenizer_config : nullptr);
}

}  // namespace smelt::io
