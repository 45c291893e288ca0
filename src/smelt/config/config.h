// The mergekit merge configuration (`mergekit-yaml` schema, docs/config.md) parsed from YAML text
// into plain structs; every element remembers its YAML path so later stages can name it in errors.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/config/parameter.h"
#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"

namespace smelt::config {

// A model reference: the string `PATH[@REV][+LORA[@REV]]` or the mapping
// `{model: {path, revision} | "PATH[@REV]", lora: ..., override_architecture: "XForCausalLM"}`.
struct ModelReference {
  io::ModelRef ref;
  std::string override_architecture;  // empty = use the model's config.json
  std::string yaml_path;              // "models[1].model"

  // Canonical `PATH[@REV][+LORA[@REV]]` form.
  std::string str() const { return ref.str(); }
  bool has_lora() const { return !ref.lora_path.empty(); }
};

// One entry of `models:`: a whole model and its per-model parameters.
struct InputModel {
  ModelReference model;
  ParameterSettings parameters;
  std::string yaml_path;  // "models[1]"
};

// One source of an output slice: layers [layer_start, layer_end) of a model.
struct InputSlice {
  ModelReference model;
  int64_t layer_start = 0;
  int64_t layer_end = 0;  // exclusive; layer_start <= layer_end
  ParameterSettings parameters;
  std::string yaml_path;  // "slices[0].sources[1]"
};

// One entry of `slices:`: output layers assembled from its sources.
struct OutputSlice {
  std::vector<InputSlice> sources;
  std::optional<ModelReference> base_model;  // overrides the top-level base_model
  std::optional<double> residual_weight;     // parsed, unused (as in mergekit)
  ParameterSettings parameters;
  std::string yaml_path;  // "slices[0]"
};

// One entry of `modules:` (multi-module architectures): exactly one of models/slices is non-empty.
struct OutputModule {
  std::string name;
  std::vector<InputModel> models;
  std::vector<OutputSlice> slices;
  ParameterSettings parameters;
  std::string yaml_path;  // "modules.text_decoder"
};

// `tokenizer_source` or `tokenizer.source`: "union", "base" or a model's tokenizer.
struct TokenizerSource {
  enum class Kind { kUnion, kBase, kModel };
  Kind kind = Kind::kUnion;
  std::optional<ModelReference> model;  // set for kModel only
  std::string yaml_path;
};

// Where the embedding of one listed token comes from (`tokenizer.tokens.<tok>.source`).
struct TokenEmbeddingSource {
  // kDefault: no source given (null); kModel: that model's embedding of the same token;
  // kModelToken: {kind: model_token, model, token_id | token}; kZero: {kind: zero}.
  enum class Kind { kDefault, kModel, kModelToken, kZero };
  Kind kind = Kind::kDefault;
  std::optional<ModelReference> model;  // kModel, kModelToken
  std::optional<int64_t> token_id;      // kModelToken: exactly one of token_id / token is set
  std::optional<std::string> token;
  std::string yaml_path;
};

// One entry of `tokenizer.tokens`.
struct TokenEmbedding {
  std::string token;
  TokenEmbeddingSource source;
  bool force = false;
  std::string yaml_path;  // `tokenizer.tokens["<|im_start|>"]`
};

// The `tokenizer:` block.
struct TokenizerConfig {
  TokenizerSource source;              // default "union"
  std::vector<TokenEmbedding> tokens;  // in YAML order
  std::optional<int64_t> pad_to_multiple_of;
  std::string yaml_path = "tokenizer";
};

// One merge configuration (one YAML document).
struct MergeConfig {
  std::string filename;             // as given to the parser, for messages
  std::string yaml_text;            // the document's original text (for mergekit_config.yml)
  std::optional<std::string> name;  // `name:` of a multi-document recipe

  std::string merge_method;  // any string; checked against the method registry later
  // Exactly one of models / slices / modules is non-empty.
  std::vector<InputModel> models;
  std::vector<OutputSlice> slices;
  std::vector<OutputModule> modules;  // in YAML order

  std::optional<ModelReference> base_model;
  ParameterSettings parameters;
  // The parameters of the one module of `modules: {default: ...}` once the planner has lifted
  // its models/slices to the top level: between the slices' and the top-level parameters in
  // precedence (docs/config.md, "Parameter resolution").
  ParameterSettings module_parameters;
  std::optional<DType> dtype;
  std::optional<DType> out_dtype;
  std::optional<TokenizerSource> tokenizer_source;  // never set together with tokenizer
  std::optional<TokenizerConfig> tokenizer;
  std::optional<std::string> chat_template;
  // Unknown keys, ignored as mergekit ignores them: "<filename>: <yaml path>: unknown key
  // (ignored); did you mean '<key>'?", in YAML order. The CLI prints them before any work
  // (--strict makes them errors).
  std::vector<std::string> warnings;

  // Features a later stage may not support; each is a plain question about the config.
  bool uses_models() const { return !models.empty(); }
  bool uses_slices() const { return !slices.empty(); }
  bool uses_modules() const { return !modules.empty(); }
  // Some model reference anywhere (models, slices, base models, tokenizer sources) has `+LORA`.
  bool uses_lora() const;
  // Some model reference sets override_architecture.
  bool uses_override_architecture() const;
  // `tokenizer_source` or `tokenizer` is set.
  bool uses_tokenizer() const { return tokenizer_source.has_value() || tokenizer.has_value(); }
  bool uses_chat_template() const { return chat_template.has_value(); }

  // The models that contribute tensors, as mergekit's referenced_models(): base_model, then
  // models / slice sources / module contents in config order; duplicates (same str()) dropped.
  // Slice-level base models and tokenizer donors are not included.
  std::vector<const ModelReference*> referenced_models() const;
  // Visits every model reference in the config, including slice base models and tokenizer
  // sources (e.g. to rewrite multi-merge names into paths).
  void for_each_model_reference(const std::function<void(ModelReference&)>& visit);
  void for_each_model_reference(const std::function<void(const ModelReference&)>& visit) const;
};

// Parses every document of a (possibly multi-document, `---` separated) YAML text; empty
// documents are skipped. Unknown keys become MergeConfig::warnings. Throws smelt::Error
// "<filename>: <yaml path>: <problem>; <what to do>" (for a YAML syntax error
// "<filename>:<line>:<column>: ..."); with more than one document the filename part reads
// "<filename> (document N)".
std::vector<MergeConfig> parse_config_documents(std::string_view text, std::string_view filename);

// Parses a YAML text holding exactly one merge configuration. Throws smelt::Error as above, and
// for an empty text or a multi-document recipe.
MergeConfig parse_config(std::string_view text, std::string_view filename);

}  // namespace smelt::config
