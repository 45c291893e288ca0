// The output vocabulary of a tokenizer merge (output_vocab.h, docs/tokenizer-merge.md).
#include "smelt/plan/output_vocab.h"

#include <algorithm>
#include <set>
#include <unordered_set>

#include "smelt/error.h"
#include "smelt/io/file_util.h"
#include "smelt/tokenizer/json_where.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::plan {
namespace fs = std::filesystem;
using tok::Json;

namespace {

// A tokenizer.json as the builder edits it.
struct TokFile {
  fs::path path;
  Json json;
  std::unordered_map<std::string, int64_t> vocab;  // model vocabulary and added tokens
  std::unordered_set<std::string> added;           // contents of added_tokens
  int64_t model_vocab = 0;                         // entries of model.vocab
  std::string type;                                // model.type
};

// Reads the vocabulary of a parsed tokenizer.json (already validated by the tokenizer module).
void index_vocab(TokFile& t, const std::string& yaml_key) {
  t.vocab.clear();
  t.added.clear();
  const Json& model = t.json.at("model");
  t.type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>()
                                                               : "BPE";
  const Json& v = model.at("vocab");
  if (v.is_object()) {
    for (const auto& [token, id] : v.items()) t.vocab[token] = id.get<int64_t>();
  } else if (v.is_array()) {  // Unigram: [[piece, score], ...], ids are positions
    for (size_t i = 0; i < v.size(); ++i) t.vocab[v[i].at(0).get<std::string>()] = int64_t(i);
  } else {
    fail("{}: {}: model.vocab is neither an object nor a list", yaml_key, t.path.string());
  }
  t.model_vocab = static_cast<int64_t>(t.vocab.size());
  if (t.json.contains("added_tokens") && t.json["added_tokens"].is_array()) {
    for (const Json& a : t.json["added_tokens"]) {
      const std::string content = a.at("content").get<std::string>();
      t.vocab[content] = a.at("id").get<int64_t>();
      t.added.insert(content);
    }
  }
}

TokFile load_tokenizer(const fs::path& folder, const std::string& ref, const std::string& key) {
  TokFile t;
  t.path = folder / "tokenizer.json";
  if (!fs::is_regular_file(t.path)) {
    fail(
        "{}: model {} has no tokenizer.json in {}; a merged tokenizer is built from "
        "tokenizer.json files (a folder with only tokenizer.model or a GGUF file is not "
        "supported yet)",
        key, ref, folder.string());
  }
  try {
    tok::Tokenizer::load(t.path);  // every component checked, as `smelt tokenize` would
  } catch (const Error& e) {
    fail("{}: {}", key, e.what());
  }
  t.json = tok::read_json_file(t.path.string());
  index_vocab(t, key);
  return t;
}

// Removes tokens whose id is >= `size` (mergekit's stripped base tokenizer: BPE only).
// Returns whether any token was removed.
bool strip(TokFile& t, int64_t size, const std::string& ref, const std::string& key) {
  bool any = false;
  for (const auto& [token, id] : t.vocab) any = any || id >= size;
  if (!any) return false;
  if (t.type != "BPE") {
    fail(
        "{}: the tokenizer of {} ({}) has ids at or above its config's vocabulary size {}; "
        "removing them is supported for BPE tokenizers only, not {}",
        key, ref, t.path.string(), size, t.type);
  }
  std::unordered_set<std::string> removed;
  Json& vocab = t.json["model"]["vocab"];
  Json kept = Json::object();
  for (auto& [token, id] : vocab.items()) {
    if (id.get<int64_t>() >= size) {
      removed.insert(token);
    } else {
      kept[token] = id;
    }
  }
  vocab = std::move(kept);
  if (t.json.contains("added_tokens") && t.json["added_tokens"].is_array()) {
    Json kept_added = Json::array();
    for (const Json& a : t.json["added_tokens"]) {
      if (a.at("id").get<int64_t>() < size) {
        kept_added.push_back(a);
      } else {
        removed.insert(a.at("content").get<std::string>());
      }
    }
    t.json["added_tokens"] = std::move(kept_added);
  }
  Json& merges = t.json["model"]["merges"];
  if (merges.is_array()) {
    Json kept_merges = Json::array();
    for (const Json& m : merges) {
      std::vector<std::string> parts;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        parts = {s.substr(0, sp), sp == std::string::npos ? "" : s.substr(sp + 1)};
      } else if (m.is_array()) {
        for (const Json& p : m) parts.push_back(p.get<std::string>());
      }
      bool keep = true;
      for (const auto& p : parts) keep = keep && !removed.count(p);
      if (keep) kept_merges.push_back(m);
    }
    merges = std::move(kept_merges);
  }
  index_vocab(t, key);
  return true;
}

// An added token's settings without its id (how first-definition-wins compares two of them).
Json settings(const Json& entry) {
  Json s = entry;
  s.erase("id");
  return s;
}

Json new_added_token(int64_t id, const std::string& content) {
  // As the reference library's add_tokens makes a plain string: normalized, not special.
  Json a = Json::object();
  a["id"] = id;
  a["content"] = content;
  a["single_word"] = false;
  a["lstrip"] = false;
  a["rstrip"] = false;
  a["normalized"] = true;
  a["special"] = false;
  return a;
}

std::vector<std::pair<int64_t, std::string>> by_id(const TokFile& t) {
  std::vector<std::pair<int64_t, std::string>> v;
  v.reserve(t.vocab.size());
  for (const auto& [token, id] : t.vocab) v.emplace_back(id, token);
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

OutputVocab build_output_vocab(const std::vector<VocabInput>& inputs, size_t reference,
                               const config::TokenizerSource& source,
                               const std::vector<std::string>& extra_tokens,
                               std::optional<int64_t> pad_to_multiple_of,
                               const fs::path& source_folder,
                               const std::function<void(const std::string&)>& warn) {
  const std::string key = source.yaml_path.empty() ? "tokenizer_source" : source.yaml_path;
  if (inputs.empty() || reference >= inputs.size()) fail("internal: no reference model");
  if (pad_to_multiple_of && *pad_to_multiple_of <= 0) {
    fail("tokenizer.pad_to_multiple_of: must be a positive integer, not {}", *pad_to_multiple_of);
  }
  const VocabInput& ref_in = inputs[reference];
  if (ref_in.folder.empty()) {
    fail(
        "{}: model {} is not a model folder; a merged tokenizer needs each model's "
        "tokenizer.json",
        key, ref_in.ref);
  }
  // Every input's tokenizer: the reference's stripped of ids past its config's vocabulary size.
  std::vector<std::optional<TokFile>> toks(inputs.size());
  toks[reference] = load_tokenizer(ref_in.folder, ref_in.ref, key);
  bool stripped = false;
  if (ref_in.config_vocab >= 0) {
    stripped = strip(*toks[reference], ref_in.config_vocab, ref_in.ref, key);
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i == reference) continue;
    if (inputs[i].folder.empty() || !fs::is_regular_file(inputs[i].folder / "tokenizer.json")) {
      warn(
          fmt::format("{}: model {} has no tokenizer.json; its vocabulary is taken to be the "
                      "base model's ({})",
                      key, inputs[i].ref, ref_in.ref));
      continue;
    }
    toks[i] = load_tokenizer(inputs[i].folder, inputs[i].ref, key);
  }

  OutputVocab out;
  TokFile result;
  out.source_folder = ref_in.folder;
  using Kind = config::TokenizerSource::Kind;
  if (source.kind == Kind::kModel) {
    result = load_tokenizer(source_folder, source.model ? source.model->str() : "?", key);
    out.source_folder = source_folder;
  } else {
    result = *toks[reference];
  }
  const int64_t reference_size = static_cast<int64_t>(result.vocab.size());
  int64_t next_id = 0;
  for (const auto& [token, id] : result.vocab) next_id = std::max(next_id, id + 1);
  std::vector<Json> appended;
  auto append = [&](Json entry) {
    const std::string content = entry.at("content").get<std::string>();
    entry["id"] = next_id;
    result.vocab[content] = next_id++;
    result.added.insert(content);
    appended.push_back(entry);
  };

  if (source.kind == Kind::kUnion) {
    // Every input's plain tokens (reference first, each in id order), then every added token,
    // the first definition winning (docs/tokenizer-merge.md, "union").
    std::vector<std::string> plain;
    std::unordered_set<std::string> plain_seen;
    std::vector<Json> added_first;
    std::unordered_map<std::string, size_t> added_at;
    std::set<std::string> warned;
    std::vector<size_t> order = {reference};
    for (size_t i = 0; i < inputs.size(); ++i)
      if (i != reference) order.push_back(i);
    for (size_t i : order) {
      if (!toks[i]) continue;
      const TokFile& t = *toks[i];
      const int64_t size = inputs[i].config_vocab >= 0 ? inputs[i].config_vocab : t.model_vocab;
      for (const auto& [id, token] : by_id(t)) {
        if (id >= size || t.added.count(token)) continue;
        if (plain_seen.insert(token).second) plain.push_back(token);
      }
      std::vector<const Json*> added;
      if (t.json.contains("added_tokens")) {
        for (const Json& a : t.json["added_tokens"]) added.push_back(&a);
      }
      std::stable_sort(added.begin(), added.end(), [](const Json* a, const Json* b) {
        return a->at("id").get<int64_t>() < b->at("id").get<int64_t>();
      });
      for (const Json* a : added) {
        if (a->at("id").get<int64_t>() >= size) continue;
        const std::string content = a->at("content").get<std::string>();
        if (auto it = added_at.find(content); it != added_at.end()) {
          if (settings(added_first[it->second]) != settings(*a) && warned.insert(content).second) {
            warn(
                fmt::format("{}: token '{}' is added with different settings by {} than by an "
                            "earlier model; the first definition is kept",
                            key, content, inputs[i].ref));
          }
          continue;
        }
        added_at[content] = added_first.size();
        added_first.push_back(*a);
      }
    }
    const std::unordered_map<std::string, int64_t> base_vocab = result.vocab;
    for (const std::string& token : plain) {
      if (added_at.count(token) || base_vocab.count(token)) continue;
      append(new_added_token(0, token));
    }
    for (const Json& a : added_first) {
      if (!result.vocab.count(a.at("content").get<std::string>())) append(a);
    }
  }
  for (const std::string& token : extra_tokens) {
    if (!result.vocab.count(token)) append(new_added_token(0, token));
  }
  if (!appended.empty()) {
    if (!result.json.contains("added_tokens") || !result.json["added_tokens"].is_array())
      result.json["added_tokens"] = Json::array();
    for (const Json& a : appended) result.json["added_tokens"].push_back(a);
  }

  // The output's id -> token table: ids must run 0..n-1 (an embedding row per id).
  const auto ordered = by_id(result);
  for (size_t i = 0; i < ordered.size(); ++i) {
    if (ordered[i].first != static_cast<int64_t>(i)) {
      fail(
          "{}: the output tokenizer ({}) has no token with id {} (ids must run from 0 without "
          "gaps, one embedding row each)",
          key, result.path.string(), i);
    }
    out.tokens.push_back(ordered[i].second);
  }
  out.added =
      static_cast<size_t>(std::max<int64_t>(0, int64_t(out.tokens.size()) - reference_size));
  out.padded_size = out.tokens.size();
  if (pad_to_multiple_of) {
    const uint64_t m = static_cast<uint64_t>(*pad_to_multiple_of);
    out.padded_size = (out.padded_size + m - 1) / m * m;
  }
  out.tokenizer_json = result.json.dump(2, ' ', false) + "\n";
  out.edited = !appended.empty() || (source.kind != Kind::kModel && stripped);

  // tokenizer_config.json: the reference's, its added_tokens_decoder extended.
  const fs::path tc = out.source_folder / "tokenizer_config.json";
  if (fs::is_regular_file(tc)) {
    Json cfg = tok::read_json_file(tc.string());
    if (cfg.is_object() && cfg.contains("added_tokens_decoder") &&
        cfg["added_tokens_decoder"].is_object()) {
      for (const Json& a : appended) {
        Json d = settings(a);
        cfg["added_tokens_decoder"][std::to_string(a.at("id").get<int64_t>())] = d;
      }
    }
    out.tokenizer_config_json = cfg.dump(2, ' ', false) + "\n";
  }

  // Per input: output id -> its id (mergekit's permutations).
  out.permutation.resize(inputs.size());
  out.original.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TokFile& t = toks[i] ? *toks[i] : *toks[reference];
    const int64_t size =
        inputs[i].config_vocab >= 0 ? inputs[i].config_vocab : int64_t(t.vocab.size());
    out.original[i] = t.vocab;
    std::vector<int64_t>& p = out.permutation[i];
    p.assign(out.tokens.size(), -1);
    for (size_t id = 0; id < out.tokens.size(); ++id) {
      const auto it = t.vocab.find(out.tokens[id]);
      if (it != t.vocab.end() && it->second < size) p[id] = it->second;
    }
  }
  return out;
}

}  // namespace smelt::plan
