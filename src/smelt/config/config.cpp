// Parsing and validation of mergekit merge configurations (docs/config.md).
#include "smelt/config/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

#include "smelt/config/suggest.h"
#include "smelt/error.h"

namespace smelt::config {
namespace {

const std::vector<std::string> kTopLevelKeys = {
    "merge_method", "models",    "slices",           "modules",   "base_model",    "parameters",
    "dtype",        "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name"};
const std::vector<std::string> kInputModelKeys = {"model", "parameters"};
const std::vector<std::string> kInputSliceKeys = {"model", "layer_range", "parameters"};
const std::vector<std::string> kOutputSliceKeys = {"sources", "base_model", "residual_weight",
                                                   "parameters"};
const std::vector<std::string> kModuleKeys = {"models", "slices", "parameters"};
const std::vector<std::string> kModelRefKeys = {"model", "lora", "override_architecture"};
const std::vector<std::string> kModelPathKeys = {"path", "revision"};
const std::vector<std::string> kTokenizerKeys = {"source", "tokens", "pad_to_multiple_of"};
const std::vector<std::string> kTokenKeys = {"source", "force"};
const std::vector<std::string> kModelTokenKeys = {"kind", "model", "token_id", "token"};
const std::vector<std::string> kZeroKeys = {"kind"};
const std::vector<std::string> kDTypeNames = {"bfloat16", "float16", "float32", "int64"};
// Keys of mergekit-moe configs: a helpful hint when someone feeds one to the merge parser.
const std::vector<std::string> kMoeKeys = {"experts", "gate_mode", "experts_per_token",
                                           "shared_experts"};

std::string child(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

std::string item(const std::string& path, size_t i) { return fmt::format("{}[{}]", path, i); }

// A mapping key in a path: plain when it reads well, quoted otherwise (tokens like "<|eot|>").
std::string key_path(const std::string& path, const std::string& key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
  return plain ? child(path, key) : fmt::format("{}[{:?}]", path, key);
}

std::string shown(const std::string& path) { return path.empty() ? "(top level)" : path; }

// Where check_mapping reports unknown keys while read_config runs (set by UnknownKeySink). The
// parse is one call deep on one thread; a thread-local spares passing the list through every
// reader.
thread_local std::vector<std::string>* t_unknown_keys = nullptr;

// Collects the unknown-key warnings of the document being read into *out for its lifetime.
class UnknownKeySink {
 public:
  explicit UnknownKeySink(std::vector<std::string>* out) : saved_(t_unknown_keys) {
    t_unknown_keys = out;
  }
  ~UnknownKeySink() { t_unknown_keys = saved_; }
  UnknownKeySink(const UnknownKeySink&) = delete;
  UnknownKeySink& operator=(const UnknownKeySink&) = delete;

 private:
  std::vector<std::string>* saved_;
};

// Checks that `node` is a mapping whose keys are unique and plain. A key not among `allowed` is
// ignored, as mergekit ignores it (docs/compat.md), with a warning naming its path and the closest
// valid key; outside a parse with a sink it is an error.
void check_mapping(const YAML::Node& node, const std::string& path,
                   const std::vector<std::string>& allowed, std::string_view expected) {
  if (!node.IsMap()) {
    fail("{}: expected {}; got {}", shown(path), expected, describe_yaml(node));
  }
  std::set<std::string> seen;
  for (const auto& entry : node) {
    if (!entry.first.IsScalar()) {
      fail("{}: keys must be plain strings; got {} as a key", shown(path),
           describe_yaml(entry.first));
    }
    const std::string& key = entry.first.Scalar();
    if (!seen.insert(key).second) {
      fail("{}: duplicate key; keep only one", child(path, key));
    }
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string what_to_do;
    if (std::string s = closest_match(key, allowed); !s.empty()) {
      what_to_do = fmt::format("did you mean '{}'?", s);
    } else {
      what_to_do = fmt::format("valid keys here are {}", fmt::join(allowed, ", "));
    }
    if (path.empty() && std::find(kMoeKeys.begin(), kMoeKeys.end(), key) != kMoeKeys.end()) {
      what_to_do += " ('" + key +
                    "' belongs to mergekit-moe configs: build those with smelt moe, "
                    "docs/moe.md)";
    }
    if (!t_unknown_keys) fail("{}: unknown key; {}", child(path, key), what_to_do);
    t_unknown_keys->push_back(
        fmt::format("{}: unknown key (ignored); {}", child(path, key), what_to_do));
  }
}

// The value of `key` in mapping `node`, or an undefined/null node when absent.
YAML::Node get(const YAML::Node& node, const char* key) {
  for (const auto& entry : node) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return entry.second;
  }
  return YAML::Node(YAML::NodeType::Null);
}

bool present(const YAML::Node& node) { return node && !node.IsNull(); }

bool has_key(const YAML::Node& node, const char* key) {
  for (const auto& entry : node) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return true;
  }
  return false;
}

std::string read_string(const YAML::Node& node, const std::string& path, std::string_view what) {
  const YamlValue v = read_yaml(node);
  if (v.type != YamlType::kString) {
    std::string hint;
    if (v.type == YamlType::kInt || v.type == YamlType::kFloat || v.type == YamlType::kBool) {
      hint = fmt::format("; quote it if it is meant as text: \"{}\"", v.text);
    }
    fail("{}: expected {}; got {}{}", path, what, describe_yaml(node), hint);
  }
  if (v.text.empty()) fail("{}: expected {}; got an empty string", path, what);
  return v.text;
}

std::optional<std::string> read_optional_string(const YAML::Node& node, const std::string& path,
                                                std::string_view what) {
  if (!present(node)) return std::nullopt;
  return read_string(node, path, what);
}

int64_t read_integer(const YAML::Node& node, const std::string& path, std::string_view what) {
  const YamlValue v = read_yaml(node);
  if (v.type == YamlType::kInt) return v.integer;
  if (v.type == YamlType::kFloat && std::isfinite(v.number) && v.number == std::floor(v.number) &&
      std::abs(v.number) < 9.0e15) {
    return static_cast<int64_t>(v.number);
  }
  fail("{}: expected {}; got {}", path, what, describe_yaml(node));
}

// `PATH[@REV]` or {path, revision}: fills *path_out / *revision_out.
void read_model_path(const YAML::Node& node, const std::string& path, std::string* path_out,
                     std::string* revision_out) {
  if (node.IsMap()) {
    check_mapping(node, path, kModelPathKeys, "a mapping {path, revision}");
    if (!present(get(node, "path"))) {
      fail("{}: missing 'path'; add path: <hub repo id or local folder>", path);
    }
    *path_out = read_string(get(node, "path"), child(path, "path"), "a model path");
    *revision_out =
        read_optional_string(get(node, "revision"), child(path, "revision"), "a revision string")
            .value_or("");
    return;
  }
  const std::string text = read_string(node, path, "a model path (PATH or PATH@REVISION)");
  const size_t at = text.find('@');
  if (at != std::string::npos && text.find('@', at + 1) != std::string::npos) {
    fail("{}: invalid model path '{}' - multiple @; write PATH@REVISION", path, text);
  }
  *path_out = text.substr(0, at);
  *revision_out = at == std::string::npos ? "" : text.substr(at + 1);
  if (path_out->empty()) fail("{}: model path '{}' is empty before '@'", path, text);
}

ModelReference read_model_ref(const YAML::Node& node, const std::string& path) {
  ModelReference m;
  m.yaml_path = path;
  if (node.IsMap()) {
    check_mapping(node, path, kModelRefKeys, "a mapping {model, lora, override_architecture}");
    if (!present(get(node, "model"))) {
      fail("{}: missing 'model'; add model: <hub repo id or local folder>", path);
    }
    read_model_path(get(node, "model"), child(path, "model"), &m.ref.path, &m.ref.revision);
    if (present(get(node, "lora"))) {
      read_model_path(get(node, "lora"), child(path, "lora"), &m.ref.lora_path,
                      &m.ref.lora_revision);
    }
    m.override_architecture = read_optional_string(get(node, "override_architecture"),
                                                   child(path, "override_architecture"),
                                                   "an architecture name such as "
                                                   "\"LlamaForCausalLM\"")
                                  .value_or("");
    return m;
  }
  const std::string text = read_string(
      node, path, "a model reference (\"org/model\", \"path@revision\" or \"model+lora\")");
  try {
    m.ref = io::ModelRef::parse(text);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  return m;
}

std::optional<ModelReference> read_optional_model_ref(const YAML::Node& node,
                                                      const std::string& path) {
  if (!present(node)) return std::nullopt;
  return read_model_ref(node, path);
}

InputModel read_input_model(const YAML::Node& node, const std::string& path) {
  check_mapping(node, path, kInputModelKeys, "a mapping {model, parameters}");
  InputModel m;
  m.yaml_path = path;
  if (!present(get(node, "model"))) {
    fail("{}: missing 'model'; add model: <hub repo id or local folder>", path);
  }
  m.model = read_model_ref(get(node, "model"), child(path, "model"));
  m.parameters = parse_parameter_settings(get(node, "parameters"), child(path, "parameters"));
  return m;
}

std::vector<InputModel> read_models(const YAML::Node& node, const std::string& path) {
  std::vector<InputModel> models;
  if (!present(node)) return models;
  if (!node.IsSequence()) {
    fail(
        "{}: expected a list of {{model, parameters}}; got {}; write each model as "
        "`- model: org/name`",
        path, describe_yaml(node));
  }
  for (size_t i = 0; i < node.size(); ++i)
    models.push_back(read_input_model(node[i], item(path, i)));
  return models;
}

InputSlice read_input_slice(const YAML::Node& node, const std::string& path) {
  check_mapping(node, path, kInputSliceKeys, "a mapping {model, layer_range, parameters}");
  InputSlice s;
  s.yaml_path = path;
  if (!present(get(node, "model"))) {
    fail("{}: missing 'model'; add model: <hub repo id or local folder>", path);
  }
  s.model = read_model_ref(get(node, "model"), child(path, "model"));

  const std::string range_path = child(path, "layer_range");
  const YAML::Node range = get(node, "layer_range");
  if (!present(range)) {
    fail("{}: missing; add layer_range: [start, end] (end exclusive)", range_path);
  }
  if (!range.IsSequence() || range.size() != 2) {
    fail("{}: expected two integers [start, end] (end exclusive); got {}", range_path,
         range.IsSequence() ? fmt::format("a list of {}", range.size()) : describe_yaml(range));
  }
  s.layer_start = read_integer(range[0], item(range_path, 0), "an integer layer index");
  s.layer_end = read_integer(range[1], item(range_path, 1), "an integer layer index");
  if (s.layer_start < 0 || s.layer_end < 0) {
    fail("{}: [{}, {}] has a negative layer index; layers count from 0", range_path, s.layer_start,
         s.layer_end);
  }
  if (s.layer_end < s.layer_start) {
    fail(
        "{}: [{}, {}] ends before it starts; write [start, end] with start <= end (end "
        "exclusive)",
        range_path, s.layer_start, s.layer_end);
  }
  s.parameters = parse_parameter_settings(get(node, "parameters"), child(path, "parameters"));
  return s;
}

OutputSlice read_output_slice(const YAML::Node& node, const std::string& path) {
  check_mapping(node, path, kOutputSliceKeys,
                "a mapping {sources, base_model, parameters, residual_weight}");
  OutputSlice s;
  s.yaml_path = path;
  const std::string sources_path = child(path, "sources");
  const YAML::Node sources = get(node, "sources");
  if (!present(sources)) {
    fail("{}: missing; add sources: [{{model: ..., layer_range: [start, end]}}]", sources_path);
  }
  if (!sources.IsSequence()) {
    fail("{}: expected a list of {{model, layer_range}}; got {}", sources_path,
         describe_yaml(sources));
  }
  if (sources.size() == 0) {
    fail("{}: empty; a slice needs at least one {{model, layer_range}} source", sources_path);
  }
  for (size_t i = 0; i < sources.size(); ++i) {
    s.sources.push_back(read_input_slice(sources[i], item(sources_path, i)));
  }
  s.base_model = read_optional_model_ref(get(node, "base_model"), child(path, "base_model"));
  const YAML::Node residual = get(node, "residual_weight");
  if (present(residual)) {
    const YamlValue v = read_yaml(residual);
    if (v.type != YamlType::kInt && v.type != YamlType::kFloat) {
      fail("{}: expected a number; got {}", child(path, "residual_weight"),
           describe_yaml(residual));
    }
    s.residual_weight = v.number;
  }
  s.parameters = parse_parameter_settings(get(node, "parameters"), child(path, "parameters"));
  return s;
}

std::vector<OutputSlice> read_slices(const YAML::Node& node, const std::string& path) {
  std::vector<OutputSlice> slices;
  if (!present(node)) return slices;
  if (!node.IsSequence()) {
    fail("{}: expected a list of {{sources: [...]}}; got {}", path, describe_yaml(node));
  }
  for (size_t i = 0; i < node.size(); ++i) {
    slices.push_back(read_output_slice(node[i], item(path, i)));
  }
  return slices;
}

OutputModule read_module(const std::string& name, const YAML::Node& node, const std::string& path) {
  check_mapping(node, path, kModuleKeys, "a mapping {models | slices, parameters}");
  OutputModule m;
  m.name = name;
  m.yaml_path = path;
  m.models = read_models(get(node, "models"), child(path, "models"));
  m.slices = read_slices(get(node, "slices"), child(path, "slices"));
  if (m.models.empty() == m.slices.empty()) {
    fail(
        "{}: Must specify either output slices or models to merge; give this module exactly "
        "one non-empty 'models' or 'slices' list",
        path);
  }
  m.parameters = parse_parameter_settings(get(node, "parameters"), child(path, "parameters"));
  return m;
}

DType read_dtype(const YAML::Node& node, const std::string& path) {
  const std::string name = read_string(node, path, "a dtype name such as bfloat16");
  if (std::optional<DType> t = parse_torch_dtype(name)) return *t;
  std::string suggestion = closest_match(name, kDTypeNames);
  fail("{}: unknown dtype \"{}\"; {}use one of {} (a \"torch.\" prefix is allowed)", path, name,
       suggestion.empty() ? "" : fmt::format("did you mean '{}'? ", suggestion),
       fmt::join(kDTypeNames, ", "));
}

// "union" | "base" | model reference.
TokenizerSource read_tokenizer_source(const YAML::Node& node, const std::string& path) {
  TokenizerSource s;
  s.yaml_path = path;
  const YamlValue v = read_yaml(node);
  if (v.type == YamlType::kString && v.text == "union") {
    s.kind = TokenizerSource::Kind::kUnion;
  } else if (v.type == YamlType::kString && v.text == "base") {
    s.kind = TokenizerSource::Kind::kBase;
  } else {
    s.kind = TokenizerSource::Kind::kModel;
    s.model = read_model_ref(node, path);
  }
  return s;
}

TokenEmbeddingSource read_token_source(const YAML::Node& node, const std::string& path) {
  TokenEmbeddingSource s;
  s.yaml_path = path;
  if (!present(node)) return s;
  if (node.IsMap() && present(get(node, "kind"))) {
    const std::string kind_path = child(path, "kind");
    const std::string kind = read_string(get(node, "kind"), kind_path, "model_token or zero");
    if (kind == "zero") {
      check_mapping(node, path, kZeroKeys, "{kind: zero}");
      s.kind = TokenEmbeddingSource::Kind::kZero;
      return s;
    }
    if (kind != "model_token") {
      std::string suggestion = closest_match(kind, {"model_token", "zero"});
      fail("{}: unknown kind \"{}\"; {}use model_token or zero", kind_path, kind,
           suggestion.empty() ? "" : fmt::format("did you mean '{}'? ", suggestion));
    }
    check_mapping(node, path, kModelTokenKeys, "{kind: model_token, model, token_id | token}");
    s.kind = TokenEmbeddingSource::Kind::kModelToken;
    if (!present(get(node, "model"))) {
      fail("{}: missing 'model'; add model: <model whose embedding to copy>", path);
    }
    s.model = read_model_ref(get(node, "model"), child(path, "model"));
    if (present(get(node, "token_id"))) {
      s.token_id = read_integer(get(node, "token_id"), child(path, "token_id"), "a token id");
      if (*s.token_id < 0)
        fail("{}: token id {} is negative", child(path, "token_id"), *s.token_id);
    }
    if (present(get(node, "token"))) {
      const YamlValue t = read_yaml(get(node, "token"));
      if (t.type == YamlType::kSequence || t.type == YamlType::kMapping) {
        fail("{}: expected a token string; got {}", child(path, "token"),
             describe_yaml(get(node, "token")));
      }
      s.token = t.text;
    }
    if (!s.token_id && !s.token) {
      fail("{}: token_id or token must be specified; add token_id: <id> or token: \"<text>\"",
           path);
    }
    if (s.token_id && s.token) {
      fail("{}: only one of token_id or token may be specified; remove one", path);
    }
    return s;
  }
  s.kind = TokenEmbeddingSource::Kind::kModel;
  s.model = read_model_ref(node, path);
  return s;
}

TokenizerConfig read_tokenizer(const YAML::Node& node, const std::string& path) {
  check_mapping(node, path, kTokenizerKeys, "a mapping {source, tokens, pad_to_multiple_of}");
  TokenizerConfig t;
  t.yaml_path = path;
  t.source.yaml_path = child(path, "source");
  if (present(get(node, "source"))) {
    t.source = read_tokenizer_source(get(node, "source"), child(path, "source"));
  }
  const std::string tokens_path = child(path, "tokens");
  const YAML::Node tokens = get(node, "tokens");
  if (present(tokens)) {
    if (!tokens.IsMap()) {
      fail("{}: expected a mapping token -> {{source, force}}; got {}", tokens_path,
           describe_yaml(tokens));
    }
    std::set<std::string> seen;
    for (const auto& entry : tokens) {
      if (!entry.first.IsScalar()) {
        fail("{}: token keys must be strings; got {}", tokens_path, describe_yaml(entry.first));
      }
      TokenEmbedding e;
      e.token = entry.first.Scalar();
      e.yaml_path = key_path(tokens_path, e.token);
      if (!seen.insert(e.token).second) fail("{}: duplicate token; keep only one", e.yaml_path);
      e.source.yaml_path = child(e.yaml_path, "source");
      if (present(entry.second)) {
        check_mapping(entry.second, e.yaml_path, kTokenKeys, "a mapping {source, force}");
        e.source = read_token_source(get(entry.second, "source"), child(e.yaml_path, "source"));
        const YAML::Node force = get(entry.second, "force");
        if (present(force)) {
          const YamlValue f = read_yaml(force);
          if (f.type != YamlType::kBool &&
              !(f.type == YamlType::kInt && (f.integer == 0 || f.integer == 1))) {
            fail("{}: expected true or false; got {}", child(e.yaml_path, "force"),
                 describe_yaml(force));
          }
          e.force = f.number != 0.0;
        }
      }
      t.tokens.push_back(std::move(e));
    }
  }
  const YAML::Node pad = get(node, "pad_to_multiple_of");
  if (present(pad)) {
    const std::string pad_path = child(path, "pad_to_multiple_of");
    t.pad_to_multiple_of = read_integer(pad, pad_path, "a positive integer");
    if (*t.pad_to_multiple_of <= 0) {
      fail("{}: expected a positive integer; got {}", pad_path, *t.pad_to_multiple_of);
    }
  }
  return t;
}

MergeConfig read_config(const YAML::Node& root) {
  check_mapping(root, "", kTopLevelKeys,
                "a mapping of config keys (merge_method, models or slices, ...)");
  MergeConfig c;
  c.name = read_optional_string(get(root, "name"), "name", "a merge name");

  if (!present(get(root, "merge_method"))) {
    fail("merge_method: missing required key; add e.g. merge_method: linear");
  }
  c.merge_method = read_string(get(root, "merge_method"), "merge_method",
                               "a merge method name such as linear, slerp or ties");

  c.models = read_models(get(root, "models"), "models");
  c.slices = read_slices(get(root, "slices"), "slices");
  const YAML::Node modules = get(root, "modules");
  if (present(modules)) {
    if (!modules.IsMap()) {
      fail("modules: expected a mapping module name -> {{models | slices, parameters}}; got {}",
           describe_yaml(modules));
    }
    std::set<std::string> seen;
    for (const auto& entry : modules) {
      if (!entry.first.IsScalar() || entry.first.Scalar().empty()) {
        fail("modules: module names must be non-empty strings; got {}", describe_yaml(entry.first));
      }
      const std::string name = entry.first.Scalar();
      const std::string path = key_path("modules", name);
      if (!seen.insert(name).second) fail("{}: duplicate module; keep only one", path);
      c.modules.push_back(read_module(name, entry.second, path));
    }
  }

  // mergekit counts a list as present only when it is non-empty.
  std::vector<std::string> given;
  if (!c.models.empty()) given.push_back("models");
  if (!c.slices.empty()) given.push_back("slices");
  if (!c.modules.empty()) given.push_back("modules");
  if (given.size() > 1) {
    fail(
        "{}: Exactly one of 'models', 'slices', or 'modules' must be present; this config has "
        "'{}' and '{}', keep only one",
        given[1], given[0], given[1]);
  }
  if (given.empty()) {
    std::vector<std::string> empty;
    for (const char* key : {"models", "slices", "modules"}) {
      if (has_key(root, key)) empty.push_back(key);
    }
    fail(
        "{}: Exactly one of 'models', 'slices', or 'modules' must be present; {}add 'models:' "
        "(whole-model merge) or 'slices:' (layer ranges)",
        empty.empty() ? "(top level)" : empty[0],
        empty.empty() ? "" : fmt::format("'{}' is empty; ", empty[0]));
  }

  c.base_model = read_optional_model_ref(get(root, "base_model"), "base_model");
  c.parameters = parse_parameter_settings(get(root, "parameters"), "parameters");
  if (present(get(root, "dtype"))) c.dtype = read_dtype(get(root, "dtype"), "dtype");
  if (present(get(root, "out_dtype"))) {
    c.out_dtype = read_dtype(get(root, "out_dtype"), "out_dtype");
  }
  if (present(get(root, "tokenizer_source"))) {
    c.tokenizer_source = read_tokenizer_source(get(root, "tokenizer_source"), "tokenizer_source");
  }
  if (present(get(root, "tokenizer"))) {
    if (c.tokenizer_source) {
      fail(
          "tokenizer: Cannot specify both tokenizer_source and tokenizer; keep one (tokenizer: "
          "{{source: ...}} replaces tokenizer_source)");
    }
    c.tokenizer = read_tokenizer(get(root, "tokenizer"), "tokenizer");
  }
  c.chat_template = read_optional_string(get(root, "chat_template"), "chat_template",
                                         "\"auto\", a built-in template name or a Jinja template");
  return c;
}

// One YAML document's text and the 0-based line in the file where it starts.
struct Chunk {
  std::string text;
  int first_line = 0;
};

bool is_marker(std::string_view line, std::string_view marker) {
  if (!line.starts_with(marker)) return false;
  if (line.size() == 3) return true;
  return line[3] == ' ' || line[3] == '\t' || line[3] == '\r' || line[3] == '\n';
}

// Splits a multi-document YAML text at `---` / `...` lines (a document marker at column 0 always
// ends the previous document, even inside block scalars).
std::vector<Chunk> split_documents(std::string_view text) {
  std::vector<Chunk> chunks(1);
  int line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string_view::npos ? text.size() : end + 1;
    const std::string_view line = text.substr(pos, end - pos);
    if (is_marker(line, "---")) {
      chunks.push_back(Chunk{std::string(line), line_no});
    } else if (is_marker(line, "...")) {
      chunks.back().text += line;
      chunks.push_back(Chunk{"", line_no + 1});
    } else {
      chunks.back().text += line;
    }
    pos = end;
    ++line_no;
  }
  return chunks;
}

// True when a chunk holds only blank lines, comments and directives (no document).
bool is_blank(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    const size_t first = line.find_first_not_of(" \t\r");
    if (first != std::string_view::npos && line[first] != '#' && line[first] != '%') return false;
    pos = end + 1;
  }
  return true;
}

}  // namespace

bool MergeConfig::uses_lora() const {
  bool any = false;
  for_each_model_reference([&](const ModelReference& m) { any = any || m.has_lora(); });
  return any;
}

bool MergeConfig::uses_override_architecture() const {
  bool any = false;
  for_each_model_reference(
      [&](const ModelReference& m) { any = any || !m.override_architecture.empty(); });
  return any;
}

std::vector<const ModelReference*> MergeConfig::referenced_models() const {
  std::vector<const ModelReference*> out;
  std::set<std::string> seen;
  auto add = [&](const ModelReference& m) {
    if (seen.insert(m.str()).second) out.push_back(&m);
  };
  auto add_models = [&](const std::vector<InputModel>& models) {
    for (const InputModel& m : models) add(m.model);
  };
  auto add_slices = [&](const std::vector<OutputSlice>& slices) {
    for (const OutputSlice& s : slices) {
      for (const InputSlice& src : s.sources) add(src.model);
    }
  };
  if (base_model) add(*base_model);
  add_models(models);
  add_slices(slices);
  for (const OutputModule& m : modules) {
    add_models(m.models);
    add_slices(m.slices);
  }
  return out;
}

void MergeConfig::for_each_model_reference(const std::function<void(ModelReference&)>& visit) {
  auto visit_models = [&](std::vector<InputModel>& list) {
    for (InputModel& m : list) visit(m.model);
  };
  auto visit_slices = [&](std::vector<OutputSlice>& list) {
    for (OutputSlice& s : list) {
      for (InputSlice& src : s.sources) visit(src.model);
      if (s.base_model) visit(*s.base_model);
    }
  };
  if (base_model) visit(*base_model);
  visit_models(models);
  visit_slices(slices);
  for (OutputModule& m : modules) {
    visit_models(m.models);
    visit_slices(m.slices);
  }
  if (tokenizer_source && tokenizer_source->model) visit(*tokenizer_source->model);
  if (tokenizer) {
    if (tokenizer->source.model) visit(*tokenizer->source.model);
    for (TokenEmbedding& t : tokenizer->tokens) {
      if (t.source.model) visit(*t.source.model);
    }
  }
}

void MergeConfig::for_each_model_reference(
    const std::function<void(const ModelReference&)>& visit) const {
  const_cast<MergeConfig*>(this)->for_each_model_reference([&](ModelReference& m) { visit(m); });
}

std::vector<MergeConfig> parse_config_documents(std::string_view text, std::string_view filename) {
  struct Loaded {
    YAML::Node root;
    std::string text;
  };
  std::vector<Loaded> docs;
  for (Chunk& chunk : split_documents(text)) {
    if (is_blank(chunk.text)) continue;
    YAML::Node root;
    try {
      root = YAML::Load(chunk.text);
    } catch (const YAML::Exception& e) {
      fail("{}:{}:{}: YAML syntax error: {}; fix the YAML at that position", filename,
           chunk.first_line + e.mark.line + 1, e.mark.column + 1, e.msg);
    }
    if (!present(root)) continue;
    docs.push_back(Loaded{root, std::move(chunk.text)});
  }

  std::vector<MergeConfig> configs;
  for (size_t i = 0; i < docs.size(); ++i) {
    const std::string label =
        docs.size() == 1 ? std::string(filename) : fmt::format("{} (document {})", filename, i + 1);
    std::vector<std::string> unknown_keys;
    try {
      MergeConfig c;
      {
        UnknownKeySink sink(&unknown_keys);
        c = read_config(docs[i].root);
      }
      for (const std::string& w : unknown_keys) c.warnings.push_back(label + ": " + w);
      c.filename = std::string(filename);
      c.yaml_text = std::move(docs[i].text);
      configs.push_back(std::move(c));
    } catch (const Error& e) {
      // A typo'd required key reads as "missing": name the unknown keys too (with their "did you
      // mean"), since the warnings are never printed when the parse fails.
      fail("{}: {}{}", label, e.what(),
           unknown_keys.empty() ? std::string()
                                : fmt::format(" (note: {})", fmt::join(unknown_keys, "; ")));
    } catch (const YAML::Exception& e) {
      // yaml-cpp conversion errors should not happen (every node is type-checked first); if one
      // does, it still names the file.
      fail("{}: {}", label, e.what());
    }
  }
  return configs;
}

MergeConfig parse_config(std::string_view text, std::string_view filename) {
  std::vector<MergeConfig> configs = parse_config_documents(text, filename);
  if (configs.empty()) {
    fail(
        "{}: (top level): the file holds no configuration; it needs at least merge_method and "
        "models or slices",
        filename);
  }
  if (configs.size() > 1) {
    fail(
        "{}: (top level): the file holds {} YAML documents (a multi-merge recipe); run it with "
        "the multi-merge command, or keep one document",
        filename, configs.size());
  }
  return std::move(configs[0]);
}

}  // namespace smelt::config
