// JsonTokenizer: the tokenizer.json pipeline glued together, the BOS/EOS rule of
// tokenizer_config.json, and the vocabulary edits with save (docs/tokenizer.md).
#include "smelt/tokenizer/tokenizer_json.h"

#include <algorithm>
#include <map>
#include <set>

#include "smelt/error.h"
#include "smelt/io/safetensors.h"
#include "smelt/tokenizer/decoders.h"
#include "smelt/tokenizer/model.h"
#include "smelt/tokenizer/normalizers.h"
#include "smelt/tokenizer/post_processors.h"
#include "smelt/tokenizer/pre_tokenizers.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {
namespace fs = std::filesystem;

struct JsonTokenizer::Pipeline {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  std::unique_ptr<AddedVocabulary> added;
  size_t vocab_size = 0;
  // "truncation" (absent: max_length is nullopt) and "padding" of tokenizer.json.
  std::optional<size_t> max_length;
  size_t stride = 0;
  bool truncate_left = false;
  bool only_second = false;
  std::optional<size_t> pad_fixed;  // Fixed(n); nullopt with `pad` set: BatchLongest
  bool pad = false;
  size_t pad_multiple = 0;
  bool pad_left = false;
  int32_t pad_id = 0;
  std::string pad_token;
};

namespace {

// The longest padded length smelt accepts from a tokenizer.json (2^24 tokens).
constexpr int64_t kMaxPadding = int64_t{1} << 24;

// A special token named in tokenizer_config.json / special_tokens_map.json: a string or an
// {"content": ...} object; nullopt when absent or null.
std::optional<std::string> special_token_name(const Json& config, const std::string& key,
                                              const Where& w) {
  if (!config.is_object() || !config.contains(key) || config[key].is_null()) return std::nullopt;
  const Json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) return required_string(v, "content", w.at(key));
  w.at(key).fail("expected a string or an object with \"content\", got " + json_type_name(v));
}

}  // namespace

JsonTokenizer::JsonTokenizer(const fs::path& tokenizer_json, const fs::path& config_dir)
    : file_(tokenizer_json.string()) {
  doc_ = read_json_file(file_);
  if (!config_dir.empty()) {
    std::error_code ec;
    fs::path config = config_dir / "tokenizer_config.json";
    if (fs::is_regular_file(config, ec)) {
      config_file_ = config.string();
      config_ = read_json_file(config_file_);
      expect_object(config_, {config_file_, ""});
    }
    fs::path map = config_dir / "special_tokens_map.json";
    if (fs::is_regular_file(map, ec)) {
      special_map_ = read_json_file(map.string());
      expect_object(special_map_, {map.string(), ""});
    }
  }
  pipeline_ = build();
}

JsonTokenizer::JsonTokenizer(Json doc, std::string name) : file_(std::move(name)) {
  doc_ = std::move(doc);
  pipeline_ = build();
}

JsonTokenizer::~JsonTokenizer() = default;

std::unique_ptr<JsonTokenizer::Pipeline> JsonTokenizer::build() const {
  Where root{file_, ""};
  expect_object(doc_, root);
  auto p = std::make_unique<Pipeline>();
  auto part = [&](const char* key) -> const Json& {
    static const Json null_json;
    auto it = doc_.find(key);
    return it == doc_.end() ? null_json : *it;
  };
  p->normalizer = make_normalizer(part("normalizer"), root.at("normalizer"));
  p->pre_tokenizer = make_pre_tokenizer(part("pre_tokenizer"), root.at("pre_tokenizer"));
  p->model = make_model(required(doc_, "model", root), root.at("model"));
  p->post_processor = make_post_processor(part("post_processor"), root.at("post_processor"));
  p->decoder = make_decoder(part("decoder"), root.at("decoder"));

  // Added tokens, checked against the ids the reference library would give them.
  std::vector<AddedToken> added;
  std::map<std::string, int32_t> seen;
  int64_t next_id = static_cast<int64_t>(p->model->token_count());
  Where aw = root.at("added_tokens");
  const Json& list = part("added_tokens");
  if (!list.is_null()) expect_array(list, aw);
  size_t vocab_size = p->model->vocab_size();
  for (size_t i = 0; i < list.size(); ++i) {
    AddedToken t = read_added_token(list[i], aw.at(i));
    int64_t expected;
    if (auto it = seen.find(t.content); it != seen.end()) {
      expected = it->second;
    } else if (auto id = p->model->token_to_id(t.content)) {
      expected = *id;
    } else {
      expected = next_id++;
    }
    if (t.id != expected) {
      aw.at(i).at("id").fail(fmt::format(
          "added token \"{}\" has id {}, but the reference library gives it id {} (ids collide or "
          "leave holes)",
          t.content, t.id, expected));
    }
    if (seen.count(t.content)) continue;  // a repeated entry changes nothing
    seen.emplace(t.content, t.id);
    vocab_size = std::max(vocab_size, static_cast<size_t>(t.id) + 1);
    added.push_back(std::move(t));
  }
  p->added = std::make_unique<AddedVocabulary>(std::move(added), p->normalizer.get());
  p->vocab_size = vocab_size;
  for (size_t id = 0; id < vocab_size; ++id) {
    if (!p->model->id_to_token(static_cast<int32_t>(id)) &&
        !p->added->find_id(static_cast<int32_t>(id))) {
      root.fail(
          fmt::format("id {} is neither in the model vocab nor an added token (ids must run "
                      "from 0 to {} without holes)",
                      id, vocab_size - 1));
    }
  }

  // Truncation and padding, which the reference library applies on every encode.
  if (const Json& t = part("truncation"); !t.is_null()) {
    Where tw = root.at("truncation");
    expect_object(t, tw);
    p->max_length = static_cast<size_t>(
        expect_int(required(t, "max_length", tw), tw.at("max_length"), 0, INT32_MAX));
    p->stride = static_cast<size_t>(optional_int(t, "stride", tw, 0));
    std::string direction = optional_string(t, "direction", tw).value_or("Right");
    if (direction != "Right" && direction != "Left")
      tw.at("direction").fail("expected \"Right\" or \"Left\"");
    p->truncate_left = direction == "Left";
    std::string strategy = optional_string(t, "strategy", tw).value_or("LongestFirst");
    if (strategy != "LongestFirst" && strategy != "OnlyFirst" && strategy != "OnlySecond") {
      tw.at("strategy").fail("expected LongestFirst, OnlyFirst or OnlySecond");
    }
    p->only_second = strategy == "OnlySecond";
  }
  if (const Json& pad = part("padding"); !pad.is_null()) {
    Where pw = root.at("padding");
    expect_object(pad, pw);
    p->pad = true;
    const Json& strategy = pad.contains("strategy") ? pad["strategy"] : Json("BatchLongest");
    if (strategy.is_object() && strategy.contains("Fixed")) {
      // Bounded so that a crafted file cannot make every encoding a giant allocation.
      p->pad_fixed = static_cast<size_t>(
          expect_int(strategy["Fixed"], pw.at("strategy").at("Fixed"), 0, kMaxPadding));
    } else if (strategy != Json("BatchLongest")) {
      pw.at("strategy").fail("expected \"BatchLongest\" or {\"Fixed\": n}");
    }
    std::string direction = optional_string(pad, "direction", pw).value_or("Right");
    if (direction != "Right" && direction != "Left")
      pw.at("direction").fail("expected \"Right\" or \"Left\"");
    p->pad_left = direction == "Left";
    p->pad_multiple = static_cast<size_t>(optional_int(pad, "pad_to_multiple_of", pw, 0));
    if (p->pad_multiple > kMaxPadding) {
      pw.at("pad_to_multiple_of")
          .fail(fmt::format("{} is beyond smelt's limit of {}", p->pad_multiple, kMaxPadding));
    }
    p->pad_id = static_cast<int32_t>(optional_int(pad, "pad_id", pw, 0));
    p->pad_token = optional_string(pad, "pad_token", pw).value_or("[PAD]");
  }

  // tokenizer_config.json's add_bos_token / add_eos_token replace the post-processor.
  if (config_.is_object()) {
    Where cw{config_file_, ""};
    bool has_bos = config_.contains("add_bos_token") && !config_["add_bos_token"].is_null();
    bool has_eos = config_.contains("add_eos_token") && !config_["add_eos_token"].is_null();
    if (has_bos || has_eos) {
      bool add_bos = optional_bool(config_, "add_bos_token", cw, true);
      bool add_eos = optional_bool(config_, "add_eos_token", cw, false);
      auto piece = [&](bool wanted, const char* key, const char* flag) {
        SpecialPiece s;
        if (!wanted) return s;
        auto name = special_token_name(config_, key, cw);
        if (!name) name = special_token_name(special_map_, key, {"special_tokens_map.json", ""});
        if (!name) cw.at(flag).fail(fmt::format("is true but no {} is named", key));
        std::optional<int32_t> id;
        if (const AddedToken* t = p->added->find_content(*name)) id = t->id;
        if (!id) id = p->model->token_to_id(*name);
        if (!id) cw.at(key).fail("\"" + *name + "\" is not in the vocabulary");
        s.ids.push_back(*id);
        s.tokens.push_back(*name);
        return s;
      };
      p->post_processor = make_wrap_processor(piece(add_bos, "bos_token", "add_bos_token"),
                                              piece(add_eos, "eos_token", "add_eos_token"));
    }
  }
  return p;
}

Encoding JsonTokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  const Pipeline& p = *pipeline_;
  std::string repaired;
  if (!is_valid_utf8(text)) {
    repaired = utf8_lossy(text);
    text = repaired;
  }
  Encoding out;
  out.ids.reserve(text.size() / 3 + 4);
  out.tokens.reserve(text.size() / 3 + 4);
  // An added token is spelled with the text it matched (lstrip/rstrip spaces included), as the
  // reference library's encodings spell it.
  auto push_added = [&](const Segment& seg, std::string_view from) {
    out.ids.push_back(p.added->tokens()[seg.token].id);
    out.tokens.emplace_back(from.substr(seg.begin, seg.end - seg.begin));
  };
  std::vector<Segment> raw, inner;
  std::vector<PreToken> pieces;
  p.added->split(text, false, raw);
  for (const Segment& seg : raw) {
    if (seg.token >= 0) {
      push_added(seg, text);
      continue;
    }
    std::string normalized(text.substr(seg.begin, seg.end - seg.begin));
    if (p.normalizer) p.normalizer->normalize(normalized);
    inner.clear();
    p.added->split(normalized, true, inner);
    for (const Segment& part : inner) {
      if (part.token >= 0) {
        push_added(part, normalized);
        continue;
      }
      pieces.clear();
      pieces.push_back({normalized.substr(part.begin, part.end - part.begin),
                        seg.begin == 0 && part.begin == 0});
      if (p.pre_tokenizer) p.pre_tokenizer->pre_tokenize(pieces);
      for (const PreToken& piece : pieces) p.model->tokenize(piece.text, out);
    }
  }
  if (p.max_length) truncate(p, options.add_special_tokens, out);
  if (options.add_special_tokens && p.post_processor) p.post_processor->process(out);
  if (p.pad) {
    size_t target = p.pad_fixed.value_or(out.ids.size());
    if (p.pad_multiple > 0 && target % p.pad_multiple)
      target += p.pad_multiple - target % p.pad_multiple;
    if (out.ids.size() < target) {
      size_t n = target - out.ids.size();
      auto at_ids = p.pad_left ? out.ids.begin() : out.ids.end();
      out.ids.insert(at_ids, n, p.pad_id);
      auto at_tokens = p.pad_left ? out.tokens.begin() : out.tokens.end();
      out.tokens.insert(at_tokens, n, p.pad_token);
    }
  }
  return out;
}

void JsonTokenizer::truncate(const Pipeline& p, bool add_special_tokens, Encoding& out) const {
  size_t max_length = *p.max_length;
  size_t added = add_special_tokens && p.post_processor ? p.post_processor->added_tokens() : 0;
  if (added > max_length) {
    fail("{}: truncation.max_length {} leaves no room for the {} special tokens", file_, max_length,
         added);
  }
  max_length -= added;
  if (out.ids.size() <= max_length) return;
  if (p.only_second) fail("{}: truncation strategy OnlySecond needs a second sequence", file_);
  if (max_length > 0 && p.stride >= max_length) {
    fail("{}: truncation.stride {} must be less than max_length {} (less the special tokens)",
         file_, p.stride, max_length);
  }
  size_t drop = out.ids.size() - max_length;
  if (p.truncate_left) {
    out.ids.erase(out.ids.begin(), out.ids.begin() + static_cast<std::ptrdiff_t>(drop));
    out.tokens.erase(out.tokens.begin(), out.tokens.begin() + static_cast<std::ptrdiff_t>(drop));
  } else {
    out.ids.resize(max_length);
    out.tokens.resize(max_length);
  }
}

std::string JsonTokenizer::decode(const std::vector<int32_t>& ids,
                                  const DecodeOptions& options) const {
  const Pipeline& p = *pipeline_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* token = nullptr;
    if (const AddedToken* t = p.added->find_id(id)) {
      token = &t->content;
    } else {
      token = p.model->id_to_token(id);
    }
    if (!token) continue;  // ids outside the vocabulary are dropped, as the library does
    if (options.skip_special_tokens) {
      const AddedToken* t = p.added->find_content(*token);
      if (t && t->special) continue;
    }
    tokens.push_back(*token);
  }
  if (!p.decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
    return out;
  }
  p.decoder->decode_chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

size_t JsonTokenizer::vocab_size() const { return pipeline_->vocab_size; }

std::optional<int32_t> JsonTokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* t = pipeline_->added->find_content(token)) return t->id;
  return pipeline_->model->token_to_id(token);
}

std::optional<std::string> JsonTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* t = pipeline_->added->find_id(id)) return t->content;
  if (const std::string* s = pipeline_->model->id_to_token(id)) return *s;
  return std::nullopt;
}

const std::vector<AddedToken>& JsonTokenizer::added_tokens() const {
  return pipeline_->added->tokens();
}

bool JsonTokenizer::is_special(int32_t id) const {
  const AddedToken* t = pipeline_->added->find_id(id);
  return t && t->special;
}

template <typename Edit>
void JsonTokenizer::edit(Edit&& change) {
  Json doc = doc_, config = config_, special_map = special_map_;
  try {
    change();
    pipeline_ = build();
  } catch (...) {
    doc_ = std::move(doc);
    config_ = std::move(config);
    special_map_ = std::move(special_map);
    throw;
  }
}

std::vector<int32_t> JsonTokenizer::add_tokens(const std::vector<AddedToken>& tokens) {
  std::vector<int32_t> ids;
  edit([&] {
    if (!doc_.contains("added_tokens") || doc_["added_tokens"].is_null()) {
      doc_["added_tokens"] = Json::array();
    }
    Json& list = doc_["added_tokens"];
    int64_t next = static_cast<int64_t>(vocab_size());
    for (const AddedToken& wanted : tokens) {
      if (wanted.content.empty()) fail("{}: cannot add an empty token", file_);
      if (!is_valid_utf8(wanted.content)) fail("{}: token to add is not valid UTF-8", file_);
      AddedToken t = wanted;
      bool replaced = false;
      for (Json& entry : list) {
        if (entry.value("content", std::string()) == t.content) {
          t.id = entry["id"].get<int32_t>();
          entry = added_token_json(t);
          replaced = true;
          break;
        }
      }
      if (!replaced) {
        auto id = pipeline_->model->token_to_id(t.content);
        t.id = id ? *id : static_cast<int32_t>(next++);
        list.push_back(added_token_json(t));
      }
      ids.push_back(t.id);
    }
  });
  return ids;
}

void JsonTokenizer::truncate_vocab(size_t n) {
  edit([&] {
    Where root{file_, ""};
    Json& model = doc_["model"];
    const Pipeline& p = *pipeline_;
    auto removed = [&](const std::string& token) {
      auto id = p.model->token_to_id(token);
      return !id || static_cast<size_t>(*id) >= n;
    };
    if (model.contains("vocab") && model["vocab"].is_object()) {
      // The vocab's keys are distinct, so entries are appended without kept[key]'s linear search.
      Json kept = Json::object();
      auto& kept_entries = kept.get_ref<Json::object_t&>();
      for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
        if (it.value().get<int64_t>() < static_cast<int64_t>(n)) {
          kept_entries.emplace_back(it.key(), it.value());
        }
      }
      for (const char* key : {"unk_token"}) {
        if (model.contains(key) && model[key].is_string() &&
            p.model->token_to_id(model[key].get<std::string>()) &&
            removed(model[key].get<std::string>())) {
          root.at("model").at(key).fail(
              fmt::format("the unk token \"{}\" has an id >= {}; it cannot be removed",
                          model[key].get<std::string>(), n));
        }
      }
      if (model.contains("merges") && model["merges"].is_array()) {
        size_t prefix = model.value("continuing_subword_prefix", Json()).is_string()
                            ? model["continuing_subword_prefix"].get<std::string>().size()
                            : 0;
        Json merges = Json::array();
        for (const Json& m : model["merges"]) {
          std::string a, b;
          if (m.is_string()) {
            const std::string& s = m.get_ref<const std::string&>();
            a = s.substr(0, s.find(' '));
            b = s.substr(s.find(' ') + 1);
          } else {
            a = m[0].get<std::string>();
            b = m[1].get<std::string>();
          }
          if (removed(a) || removed(b) || removed(a + b.substr(prefix))) continue;
          merges.push_back(m);
        }
        model["merges"] = std::move(merges);
      }
      model["vocab"] = std::move(kept);
    } else if (model.contains("vocab") && model["vocab"].is_array()) {
      if (model.contains("unk_id") && model["unk_id"].is_number() &&
          model["unk_id"].get<int64_t>() >= static_cast<int64_t>(n)) {
        root.at("model").at("unk_id").fail(fmt::format("unk_id is >= {}; it cannot be removed", n));
      }
      Json& vocab = model["vocab"];
      if (vocab.size() > n)
        vocab.erase(vocab.begin() + static_cast<std::ptrdiff_t>(n), vocab.end());
    }
    std::set<std::string> gone;
    if (doc_.contains("added_tokens") && doc_["added_tokens"].is_array()) {
      Json kept = Json::array();
      for (const Json& t : doc_["added_tokens"]) {
        if (t["id"].get<int64_t>() < static_cast<int64_t>(n)) {
          kept.push_back(t);
        } else {
          gone.insert(t["content"].get<std::string>());
        }
      }
      doc_["added_tokens"] = std::move(kept);
    }
    // The post-processor must not need a removed id.
    std::function<void(const Json&, const Where&)> check = [&](const Json& pp, const Where& w) {
      if (!pp.is_object()) return;
      if (pp.contains("special_tokens") && pp["special_tokens"].is_object()) {
        for (auto it = pp["special_tokens"].begin(); it != pp["special_tokens"].end(); ++it) {
          for (const Json& id : it.value().value("ids", Json::array())) {
            if (id.is_number() && id.get<int64_t>() >= static_cast<int64_t>(n)) {
              w.fail(
                  fmt::format("the template's special token \"{}\" has id {} >= {}; edit the "
                              "post-processor first",
                              it.key(), id.get<int64_t>(), n));
            }
          }
        }
      }
      for (const char* key : {"cls", "sep"}) {
        if (pp.contains(key) && pp[key].is_array() && pp[key].size() == 2 &&
            pp[key][1].is_number() && pp[key][1].get<int64_t>() >= static_cast<int64_t>(n)) {
          w.at(key).fail(fmt::format("needs id {} >= {}", pp[key][1].get<int64_t>(), n));
        }
      }
      if (pp.contains("processors") && pp["processors"].is_array()) {
        for (size_t i = 0; i < pp["processors"].size(); ++i) {
          check(pp["processors"][i], w.at("processors").at(i));
        }
      }
    };
    if (doc_.contains("post_processor")) check(doc_["post_processor"], root.at("post_processor"));
    // Removed tokens are no longer named as special tokens.
    auto names = [&](const Json& v) -> std::optional<std::string> {
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string()) {
        return v["content"].get<std::string>();
      }
      return std::nullopt;
    };
    auto scrub = [&](Json& obj, bool erase) {
      if (!obj.is_object()) return;
      std::vector<std::string> drop;
      for (auto it = obj.begin(); it != obj.end(); ++it) {
        if (it.key() == "additional_special_tokens" && it.value().is_array()) {
          Json kept = Json::array();
          for (const Json& v : it.value()) {
            auto name = names(v);
            if (!name || !gone.count(*name)) kept.push_back(v);
          }
          it.value() = std::move(kept);
        } else if (it.key().size() > 6 && it.key().ends_with("_token")) {
          auto name = names(it.value());
          if (name && gone.count(*name)) drop.push_back(it.key());
        }
      }
      for (const auto& key : drop) {
        if (erase) {
          obj.erase(key);
        } else {
          obj[key] = nullptr;
        }
      }
    };
    scrub(config_, false);
    scrub(special_map_, true);
    if (config_.is_object() && config_.contains("add_bos_token") &&
        config_["add_bos_token"] == true && config_.contains("bos_token") &&
        config_["bos_token"].is_null()) {
      config_["add_bos_token"] = false;
    }
    if (config_.is_object() && config_.contains("add_eos_token") &&
        config_["add_eos_token"] == true && config_.contains("eos_token") &&
        config_["eos_token"].is_null()) {
      config_["add_eos_token"] = false;
    }
  });
}

void JsonTokenizer::save(const fs::path& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the folder: {}", dir.string(), ec.message());
  io::write_file_atomic(dir / "tokenizer.json", doc_.dump(2, ' ', false) + "\n");

  Json config = config_.is_object() ? config_ : Json::object();
  Json decoder = Json::object();
  std::vector<AddedToken> added = pipeline_->added->tokens();
  std::sort(added.begin(), added.end(),
            [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  for (const AddedToken& t : added) {
    Json j = Json::object();
    j["content"] = t.content;
    j["lstrip"] = t.lstrip;
    j["normalized"] = t.normalized;
    j["rstrip"] = t.rstrip;
    j["single_word"] = t.single_word;
    j["special"] = t.special;
    decoder[std::to_string(t.id)] = std::move(j);
  }
  config["added_tokens_decoder"] = std::move(decoder);
  if (!config.contains("tokenizer_class")) config["tokenizer_class"] = "PreTrainedTokenizerFast";
  io::write_file_atomic(dir / "tokenizer_config.json", config.dump(2, ' ', false) + "\n");

  Json map = special_map_.is_object() ? special_map_ : Json::object();
  if (!special_map_.is_object()) {
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                            "cls_token", "mask_token", "additional_special_tokens"}) {
      if (config.contains(key) && !config[key].is_null()) map[key] = config[key];
    }
  }
  io::write_file_atomic(dir / "special_tokens_map.json", map.dump(2, ' ', false) + "\n");
}

std::unique_ptr<Tokenizer> load_tokenizer_json(const fs::path& tokenizer_json,
                                               const fs::path& config_dir) {
  return std::make_unique<JsonTokenizer>(tokenizer_json, config_dir);
}

}  // namespace smelt::tok
