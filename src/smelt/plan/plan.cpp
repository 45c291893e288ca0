// Builds the per-tensor merge plan from a mergekit config and the models' headers.
#include "smelt/plan/plan.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/io/hub_client.h"
#include "smelt/io/row_gather.h"
#include "smelt/kernels/ggml_type.h"
#include "smelt/plan/chat_template.h"
#include "smelt/plan/gguf_output.h"
#include "smelt/plan/model_config.h"
#include "smelt/plan/output_vocab.h"

namespace smelt::plan {
namespace {

using config::ParameterSettings;

std::string shape_str(const std::vector<uint64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

// One source of a slice as the planner sees it (models: becomes a single slice).
struct SourceView {
  size_t model = 0;
  int64_t start = 0, end = 0;  // layer range; unused for models:
  const ParameterSettings* params = nullptr;
  std::string yaml_path;
};

struct SliceView {
  std::vector<SourceView> sources;
  int base = -1;  // index into sources
  const ParameterSettings* params = nullptr;
  std::string yaml_path;
};

// Every filter string written anywhere in a parameter setting (to tell whether a config
// addresses a tensor explicitly).
void collect_filters(const config::ParameterValue& v, std::vector<std::string>* out) {
  if (v.kind() != config::ParameterValue::Kind::kConditional) return;
  for (const auto& c : v.conditions()) {
    if (c.filter && !c.filter->empty() && *c.filter != "*") out->push_back(*c.filter);
    collect_filters(c.value, out);
  }
}

class Planner {
 public:
  // `module`: plan only that module's tensors of a `modules:` config (docs/config.md, "Modules").
  // `models`: models already opened by the plans of earlier modules (reused, so that every job
  // of the joined plan points into the same open files).
  Planner(const config::MergeConfig& cfg, const PlanOptions& opt,
          const config::OutputModule* module = nullptr, std::vector<PlanModel> models = {})
      : cfg_(cfg), opt_(opt), module_(module) {
    plan_.config = cfg;
    plan_.models = std::move(models);
    model_paths_.assign(plan_.models.size(), module ? module->yaml_path : "");
  }

  Plan build() {
    find_method();
    collect_config_filters();
    if (cfg_.uses_models()) {
      plan_models();
    } else {
      plan_slices();
    }
    align_embeddings();
    resolve_chat_template_setting();
    assign_gguf_output(plan_, opt_);
    dedupe();
    finish_jobs();
    return std::move(plan_);
  }

 private:
  [[noreturn]] void fail_at(const std::string& yaml_path, const std::string& message) {
    if (yaml_path.empty()) fail("{}: {}", cfg_.filename, message);
    fail("{}: {}: {}", cfg_.filename, yaml_path, message);
  }

  void warn(std::string message) {
    if (std::find(plan_.warnings.begin(), plan_.warnings.end(), message) == plan_.warnings.end()) {
      plan_.warnings.push_back(std::move(message));
    }
  }

  void find_method() {
    plan_.method = methods::find_method(cfg_.merge_method);
    passthrough_ = methods::find_method("passthrough");
    if (plan_.method) return;
    const auto names = methods::method_names();
    const std::string guess = config::closest_match(cfg_.merge_method, names);
    fail_at("merge_method",
            fmt::format("unknown merge method '{}'; {}known methods: {}", cfg_.merge_method,
                        guess.empty() ? "" : fmt::format("did you mean {}? ", guess),
                        fmt::join(names, ", ")));
  }

  // ---- tokenizer merge (docs/tokenizer-merge.md) ----

  // The vocabulary size a model's config.json gives (its architecture's key), or -1.
  int64_t config_vocab(size_t model) const {
    const std::string& text = plan_.models[model].config_text;
    if (text.empty()) return -1;
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    const std::string key =
        arch(model).vocab_size_key.empty() ? "vocab_size" : arch(model).vocab_size_key;
    const nlohmann::json* node = dotted(j, key);
    if (!node) return -1;
    return node->is_number_integer() && node->get<int64_t>() >= 0 ? node->get<int64_t>() : -1;
  }

  // The plan model a config reference names, or -1.
  int find_model(const config::ModelReference& r) const {
    const std::string key = r.str();
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (plan_.models[i].ref == key) return static_cast<int>(i);
    }
    return -1;
  }

  std::filesystem::path model_folder(size_t i) const {
    const PlanModel& m = plan_.models[i];
    if (m.stage || m.gguf) return {};
    return m.model->resolved().root;
  }

  // `tokenizer_source` / `tokenizer:`: builds the output vocabulary, then gives every embedding
  // job inputs permuted to it (io/row_gather.h), with mergekit's fallback rows.
  void align_embeddings() {
    if (!cfg_.uses_tokenizer()) return;
    const config::TokenizerSource& source =
        cfg_.tokenizer ? cfg_.tokenizer->source : *cfg_.tokenizer_source;
    const std::string key = cfg_.tokenizer ? "tokenizer" : "tokenizer_source";
    if (plan_.raw) {
      fail_at(key,
              "a tokenizer merge needs models with config.json (these inputs are bare "
              "tensor files)");
    }
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (plan_.models[i].gguf) {
        fail_at(key, fmt::format("model {} is a GGUF file; a tokenizer merge reads "
                                 "tokenizer.json files, and GGUF inputs are not supported yet "
                                 "(GGUF output is)",
                                 ref(i)));
      }
    }
    std::vector<VocabInput> inputs;
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      inputs.push_back({ref(i), model_folder(i), config_vocab(i)});
    }
    std::filesystem::path source_folder;
    if (source.kind == config::TokenizerSource::Kind::kModel) {
      const int m = find_model(*source.model);
      try {
        source_folder = m >= 0 ? model_folder(static_cast<size_t>(m))
                               : io::resolve_model(source.model->ref).root;
      } catch (const Error& e) {
        fail_at(source.yaml_path, e.what());
      }
      if (source_folder.empty()) {
        fail_at(source.yaml_path, fmt::format("model {} has no folder to read a tokenizer from",
                                              source.model->str()));
      }
    }
    std::vector<std::string> extra;
    if (cfg_.tokenizer) {
      for (const auto& t : cfg_.tokenizer->tokens) extra.push_back(t.token);
    }
    const OutputVocab vocab =
        build_output_vocab(inputs, plan_.donor, source, extra,
                           cfg_.tokenizer ? cfg_.tokenizer->pad_to_multiple_of : std::nullopt,
                           source_folder, [&](const std::string& w) { warn(w); });
    Plan::OutputTokenizer out;
    out.tokenizer_json = vocab.tokenizer_json;
    out.tokenizer_config_json = vocab.tokenizer_config_json;
    out.source_folder = vocab.source_folder;
    out.tokens = vocab.tokens.size();
    out.added = vocab.added;
    out.edited = vocab.edited;
    plan_.output_tokenizer = std::move(out);
    plan_.output_vocab = static_cast<int64_t>(vocab.padded_size);

    // Explicit token sources, checked against the vocabularies before any tensor is read.
    std::unordered_map<std::string, size_t> token_id;
    for (size_t i = 0; i < vocab.tokens.size(); ++i) token_id.emplace(vocab.tokens[i], i);
    struct Explicit {
      const config::TokenEmbedding* entry;
      int model = -1;    // source model (kModel, kModelToken)
      int64_t row = -1;  // its row (kModel: from the permutation; kModelToken: given)
    };
    std::map<size_t, Explicit> explicit_rows;
    if (cfg_.tokenizer) {
      for (const config::TokenEmbedding& t : cfg_.tokenizer->tokens) {
        Explicit e{&t};
        const size_t id = token_id.at(t.token);
        using K = config::TokenEmbeddingSource::Kind;
        if (t.source.kind == K::kModel || t.source.kind == K::kModelToken) {
          e.model = find_model(*t.source.model);
          if (e.model < 0) {
            fail_at(t.source.yaml_path,
                    fmt::format("model {} is not one of the merge's models; a token's embedding "
                                "can come only from a model that is merged",
                                t.source.model->str()));
          }
        }
        if (t.source.kind == K::kModel) {
          e.row = vocab.permutation[e.model][id];
          if (e.row < 0) {
            fail_at(t.source.yaml_path,
                    fmt::format("model {} has no token '{}'", ref(e.model), t.token));
          }
        } else if (t.source.kind == K::kModelToken) {
          if (t.source.token) {
            const auto& orig = vocab.original[e.model];
            const auto it = orig.find(*t.source.token);
            if (it == orig.end()) {
              fail_at(t.source.yaml_path + ".token",
                      fmt::format("model {} has no token '{}'", ref(e.model), *t.source.token));
            }
            e.row = it->second;
          } else {
            e.row = *t.source.token_id;
          }
        }
        explicit_rows[id] = e;
      }
    }

    size_t missing_everywhere = 0;
    for (TensorJob& job : plan_.jobs) {
      if (!job.is_embedding || job.inputs.empty()) continue;
      const uint64_t cols =
          job.inputs[0].source.info->shape.size() == 2 ? job.inputs[0].source.info->shape[1] : 0;
      for (const JobInput& in : job.inputs) {
        const auto& shape = in.source.info->shape;
        if (shape.size() != 2 || shape[1] != cols) {
          fail_at(key, fmt::format("'{}' has shape {} in {} but {} in {}; the inputs of a "
                                   "tokenizer merge must share their hidden size",
                                   job.name, shape_str(shape), ref(in.model),
                                   shape_str(job.inputs[0].source.info->shape),
                                   ref(job.inputs[0].model)));
        }
      }
      // The tensor of model m standing for this job's input (a model outside the job: by name).
      auto tensor_of = [&](int m) -> io::ModelTensor {
        for (const JobInput& in : job.inputs) {
          if (static_cast<int>(in.model) == m) return in.source;
        }
        const std::string name = input_name(static_cast<size_t>(m), job.name);
        io::ModelTensor t = plan_.models[m].model->find(name);
        if (!t.info) {
          fail_at(key, fmt::format("model {} has no tensor '{}' to take token embeddings from",
                                   ref(m), name));
        }
        return t;
      };
      std::vector<int> models;
      for (const JobInput& in : job.inputs) {
        if (std::find(models.begin(), models.end(), int(in.model)) == models.end())
          models.push_back(int(in.model));
      }
      const int base = job.base >= 0 ? int(job.inputs[job.base].model) : -1;
      auto defaults = std::make_shared<io::RowDefaults>();
      for (size_t r = 0; r < vocab.tokens.size(); ++r) {
        const auto ex = explicit_rows.find(r);
        const bool forced = ex != explicit_rows.end() && ex->second.entry->force;
        bool needed = forced;
        for (int m : models) needed = needed || vocab.permutation[m][r] < 0;
        if (!needed) continue;
        std::vector<io::RowTerm> terms;
        using K = config::TokenEmbeddingSource::Kind;
        if (ex != explicit_rows.end() && ex->second.entry->source.kind != K::kDefault) {
          if (ex->second.entry->source.kind != K::kZero) {
            const io::ModelTensor t = tensor_of(ex->second.model);
            if (static_cast<uint64_t>(ex->second.row) >= t.info->shape[0]) {
              fail_at(ex->second.entry->source.yaml_path,
                      fmt::format("token id {} is out of range for model {} ('{}' has {} rows)",
                                  ex->second.row, ref(ex->second.model), t.info->name,
                                  t.info->shape[0]));
            }
            terms.push_back({t, static_cast<uint64_t>(ex->second.row), 1.0});
          }
        } else {
          std::vector<int> have;
          for (int m : models) {
            if (vocab.permutation[m][r] >= 0) have.push_back(m);
          }
          if (have.size() == 1) {
            terms.push_back({tensor_of(have[0]), uint64_t(vocab.permutation[have[0]][r]), 1.0});
          } else if (have.empty()) {
            ++missing_everywhere;
          } else if (base >= 0 && vocab.permutation[base][r] >= 0) {
            terms.push_back({tensor_of(base), uint64_t(vocab.permutation[base][r]), 1.0});
          } else {
            for (int m : have) {
              terms.push_back({tensor_of(m), uint64_t(vocab.permutation[m][r]),
                               1.0 / static_cast<double>(have.size())});
            }
          }
        }
        (*defaults)[r] = std::move(terms);
      }
      for (JobInput& in : job.inputs) {
        io::RowGatherSpec spec;
        spec.name = in.source.info->name;
        spec.own = in.source;
        spec.real_rows = vocab.tokens.size();
        spec.total_rows = vocab.padded_size;
        spec.own_row.resize(spec.real_rows);
        for (size_t r = 0; r < spec.real_rows; ++r) {
          const auto ex = explicit_rows.find(r);
          const bool forced = ex != explicit_rows.end() && ex->second.entry->force;
          spec.own_row[r] = forced ? -1 : vocab.permutation[in.model][r];
        }
        spec.defaults = defaults;
        std::shared_ptr<io::RowGatherFile> file;
        try {
          file = std::make_shared<io::RowGatherFile>(std::move(spec));
        } catch (const Error& e) {
          fail_at(key, e.what());
        }
        in.source = io::ModelTensor{&file->info(), file.get()};
        plan_.computed_files.push_back(std::move(file));
      }
      job.shape = {vocab.padded_size, cols};
    }
    if (missing_everywhere > 0) {
      warn(
          fmt::format("{}: {} token(s) of the output vocabulary are in no model's embeddings; "
                      "their rows are zeros",
                      key, missing_everywhere));
    }
  }

  // chat_template: auto, a built-in name or a literal template (plan/chat_template.h).
  void resolve_chat_template_setting() {
    if (!cfg_.chat_template) return;
    std::vector<std::filesystem::path> folders;
    for (const auto& m : plan_.models) {
      if (!m.stage && !m.model->resolved().single_file) folders.push_back(m.model->resolved().root);
    }
    try {
      plan_.chat_template = resolve_chat_template(*cfg_.chat_template, folders);
    } catch (const Error& e) {
      fail_at("chat_template", e.what());
    }
    if (!plan_.chat_template) {
      warn(
          fmt::format("{}: chat_template: auto found no chat template in the input models; the "
                      "donor's tokenizer files are copied unchanged",
                      cfg_.filename));
    }
  }

  void collect_config_filters() {
    auto add = [&](const ParameterSettings& s) {
      for (const auto& [name, value] : s) collect_filters(value, &config_filters_);
    };
    add(cfg_.parameters);
    add(cfg_.module_parameters);
    for (const auto& m : cfg_.models) add(m.parameters);
    for (const auto& s : cfg_.slices) {
      add(s.parameters);
      for (const auto& src : s.sources) add(src.parameters);
    }
  }

  // ---- modules ----

  // The tensors of the planned module (module_), from the architecture of `model`.
  void resolve_scope(size_t model) {
    if (!module_ || !scope_.empty()) return;
    scope_ = arch(model).module_tensors(module_->name);
    for (const auto& n : tensor_names(model)) {
      if (in_scope(n)) return;
    }
    std::vector<std::string> known;
    for (const auto& [name, unused] : arch(model).modules) known.push_back(name);
    fail_at(module_->yaml_path,
            fmt::format("module '{}' matches no tensor of model {} ({}); {}", module_->name,
                        ref(model), fmt::join(scope_, ", "),
                        known.empty() ? "a module's tensors are those under '<module>.'"
                                      : fmt::format("its modules are {}", fmt::join(known, ", "))));
  }

  bool in_scope(const std::string& tensor) const {
    if (!module_) return true;
    for (const auto& p : scope_) {
      if (glob_match(p, tensor)) return true;
    }
    return false;
  }

  // The layer stack slices address: the architecture's, or the module's largest stack.
  std::string stack(size_t model) const {
    if (!module_) return arch(model).layer_prefix;
    std::string best;
    int64_t most = 0;
    for (const auto& [prefix, n] : arch(model).layers.layers_by_prefix) {
      if (n > most && in_scope(prefix + ".0.")) best = prefix, most = n;
    }
    return best;
  }

  int64_t stack_layers(size_t model) const {
    const auto& m = arch(model).layers.layers_by_prefix;
    const auto it = m.find(stack(model));
    return it == m.end() ? 0 : it->second;
  }

  std::string stack_count_key(size_t model) const {
    if (!module_) return arch(model).layer_count_key;
    const auto it = arch(model).modules.find(module_->name);
    return it == arch(model).modules.end() ? "" : it->second.layer_count_key;
  }

  // True when a parameter filter of the config names (a substring of) `tensor`.
  bool addressed_by_config(const std::string& tensor) const {
    if (module_) return true;  // a module of a `modules:` config addresses all its tensors
    for (const auto& f : config_filters_) {
      if (tensor.find(f) != std::string::npos) return true;
    }
    return false;
  }

  size_t add_model(const config::ModelReference& r) {
    const std::string key = r.str();
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (plan_.models[i].ref == key) return i;
    }
    PlanModel m;
    m.ref = key;
    if (auto named = opt_.named_models.find(key); named != opt_.named_models.end()) {
      m.model = named->second.model;
      m.config_text = named->second.config_text;
      m.stage = true;
    } else {
      try {
        // `smelt plan` reads only the headers of Hub models missing from the cache (docs/hub.md).
        m.model = io::hub_open_headers_only(r.ref);
        if (!m.model) m.model = io::Model::open(io::resolve_model(r.ref));
      } catch (const Error& e) {
        if (!opt_.named_models.empty()) {
          std::vector<std::string> names;
          for (const auto& [n, unused] : opt_.named_models) names.push_back(n);
          fail_at(r.yaml_path, fmt::format("{}\n'{}' is not the name of an earlier stage either "
                                           "(known: {})",
                                           e.what(), key, fmt::join(names, ", ")));
        }
        fail_at(r.yaml_path, e.what());
      }
      m.gguf = m.model->resolved().gguf;
      m.config_text = model_config_text(*m.model);
    }
    std::vector<std::string> names;
    for (const auto& t : m.model->tensors()) names.push_back(t.info->name);
    m.arch = infer_architecture(names, m.config_text);
    if (!r.override_architecture.empty()) m.arch.architecture = r.override_architecture;
    plan_.models.push_back(std::move(m));
    model_paths_.push_back(r.yaml_path);
    return plan_.models.size() - 1;
  }

  const ArchitectureInfo& arch(size_t model) const { return plan_.models[model].arch; }
  const std::string& ref(size_t model) const { return plan_.models[model].ref; }

  bool has_tensor(size_t model, const std::string& name) const {
    return plan_.models[model].model->has(name);
  }

  std::vector<std::string> tensor_names(size_t model) const {
    std::vector<std::string> names;
    for (const auto& t : plan_.models[model].model->tensors()) names.push_back(t.info->name);
    return names;
  }

  // Raw mode: every input is a bare tensor file (no config.json), so tensors are merged by name
  // with no architecture knowledge (mergekit-pytorch).
  void decide_raw() {
    bool all_bare = true;
    for (const auto& m : plan_.models) all_bare = all_bare && m.config_text.empty();
    plan_.raw = all_bare;
  }

  void check_architectures() {
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (plan_.models[i].gguf != plan_.models[plan_.donor].gguf) {
        fail_at(
            model_paths_[i],
            fmt::format("model {} is {} but {} is {}; smelt cannot map tensor names between "
                        "GGUF (blk.N.*) and safetensors (model.layers.N.*) models: merge models "
                        "of one format",
                        ref(i), plan_.models[i].gguf ? "a GGUF file" : "a safetensors model",
                        ref(plan_.donor),
                        plan_.models[plan_.donor].gguf ? "a GGUF file" : "a safetensors model"));
      }
    }
    if (plan_.raw || opt_.allow_crimes) return;
    const ArchitectureInfo& d = arch(plan_.donor);
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      const ArchitectureInfo& a = arch(i);
      if (a.architecture != d.architecture || a.model_type != d.model_type) {
        fail_at(model_paths_[i],
                fmt::format("model {} is {} ({}) but {} is {} ({}); merging different "
                            "architectures is refused unless you pass --allow-crimes",
                            ref(i), a.architecture.empty() ? "unknown" : a.architecture,
                            a.model_type, ref(plan_.donor),
                            d.architecture.empty() ? "unknown" : d.architecture, d.model_type));
      }
    }
  }

  void check_parameter_names(const ParameterSettings& settings, const std::string& where,
                             bool per_model) {
    std::vector<std::string> known;
    std::set<std::string> global;
    for (const auto& p : plan_.method->model_params()) known.push_back(p.name);
    for (const auto& p : plan_.method->global_params())
      known.push_back(p.name), global.insert(p.name);
    for (const auto& [name, value] : settings) {
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        const std::string guess = config::closest_match(name, known);
        warn(fmt::format("{}.{}: parameter '{}' is not used by {}{}", where, name, name,
                         plan_.method->name(),
                         guess.empty() ? "" : fmt::format(" (did you mean {}?)", guess)));
      } else if (per_model && global.count(name)) {
        warn(
            fmt::format("{}.{}: '{}' is a global parameter of {}; per-model values are ignored "
                        "(as in mergekit): set it under the top-level parameters",
                        where, name, name, plan_.method->name()));
      }
    }
  }

  int base_model_index() {
    if (!cfg_.base_model) return -1;
    return static_cast<int>(add_model(*cfg_.base_model));
  }

  // Puts the base model among the slice's sources (appending it, as mergekit does for models:).
  void attach_base(SliceView* slice, int base_model, const std::string& yaml_path) {
    if (base_model < 0) return;
    for (size_t i = 0; i < slice->sources.size(); ++i) {
      if (slice->sources[i].model == static_cast<size_t>(base_model)) {
        slice->base = static_cast<int>(i);
        return;
      }
    }
    if (!cfg_.uses_models()) {
      fail_at(yaml_path, fmt::format("base model {} is not one of the sources of {}; add it as a "
                                     "source with the same layer_range",
                                     ref(base_model), slice->yaml_path));
    }
    SourceView s;
    s.model = static_cast<size_t>(base_model);
    s.yaml_path = yaml_path;
    slice->sources.push_back(s);
    slice->base = static_cast<int>(slice->sources.size() - 1);
  }

  // ---- output heads tied to the embeddings (docs/architectures.md) ----

  bool is_head(const ArchitectureInfo& a, const std::string& name) const {
    for (const auto& [head, emb] : a.tied) {
      if (glob_match(head, name)) return true;
    }
    return false;
  }

  // Decides, for output post-weights taken from `sources`, which tied heads are written. Returns
  // the head names to add to (or keep in) the output and fills `drop` with head names to leave out.
  std::vector<std::string> plan_heads(const std::vector<SourceView>& sources,
                                      std::set<std::string>* drop) {
    const ArchitectureInfo& d = arch(plan_.donor);
    std::vector<std::string> heads;
    for (const SourceView& s : sources) {
      for (const auto& n : tensor_names(s.model)) {
        if (is_head(d, n) && std::find(heads.begin(), heads.end(), n) == heads.end())
          heads.push_back(n);
      }
    }
    if (d.tied_in_config) {
      for (const auto& h : heads) {
        drop->insert(h);
        warn(
            fmt::format("'{}' of the inputs is not written: the output config ({} of {}) ties the "
                        "output head to the embeddings",
                        h, d.tie_config_key, ref(plan_.donor)));
      }
      return {};
    }
    return heads;
  }

  // The name to read output tensor `name` from in `model`: itself, or for a tied head the
  // model's embedding matrix.
  std::string input_name(size_t model, const std::string& name) {
    if (has_tensor(model, name)) return name;
    const std::string emb = arch(model).tied_embedding(name, tensor_names(model));
    return emb.empty() ? name : emb;
  }

  // ---- models: ----

  void plan_models() {
    SliceView slice;
    for (const auto& m : cfg_.models) {
      SourceView s;
      s.model = add_model(m.model);
      s.params = &m.parameters;
      s.yaml_path = m.yaml_path;
      slice.sources.push_back(s);
      check_parameter_names(m.parameters, m.yaml_path + ".parameters", true);
    }
    if (!slice.sources.empty()) resolve_scope(slice.sources[0].model);
    check_parameter_names(cfg_.parameters, "parameters", false);
    check_parameter_names(cfg_.module_parameters, "modules.default.parameters", false);
    plan_.base_model = base_model_index();
    attach_base(&slice, plan_.base_model, "base_model");
    plan_.donor =
        plan_.base_model >= 0 ? static_cast<size_t>(plan_.base_model) : slice.sources[0].model;
    decide_raw();
    check_architectures();
    if (plan_.raw) {
      plan_raw(slice);
      return;
    }
    const ArchitectureInfo& donor = arch(plan_.donor);
    const SourceView* donor_source = nullptr;
    for (const SourceView& s : slice.sources) {
      if (s.model == plan_.donor && !donor_source) donor_source = &s;
    }
    for (const SourceView& s : slice.sources) {
      if (arch(s.model).layers.layers_by_prefix != donor.layers.layers_by_prefix) {
        fail_at(s.yaml_path,
                fmt::format("model {} has {} layers but {} has {}; all inputs to a merge must "
                            "contain the same number of layers (use slices: to pick ranges)",
                            ref(s.model), arch(s.model).num_layers(), ref(plan_.donor),
                            donor.num_layers()));
      }
      check_same_tensors(s, *donor_source);
    }
    std::set<std::string> drop;
    std::vector<std::string> heads = plan_heads(slice.sources, &drop);
    std::vector<std::string> names;
    for (const auto& n : tensor_names(plan_.donor)) {
      if (!drop.count(n)) names.push_back(n);
    }
    for (const auto& h : heads) {
      if (std::find(names.begin(), names.end(), h) == names.end()) names.push_back(h);
    }
    for (const std::string& name : names) {
      if (!in_scope(name)) continue;
      double tpos = 0;
      if (auto l = parse_layer_name(name)) {
        const int64_t n = donor.layers.layers_by_prefix.at(l->prefix);
        tpos = n <= 1 ? 1.0 : static_cast<double>(l->index) / static_cast<double>(n - 1);
      }
      std::vector<std::string> inputs;
      for (const SourceView& s : slice.sources) inputs.push_back(input_name(s.model, name));
      add_job(name, inputs, slice, tpos);
    }
  }

  // Fails when a tensor is in one input but not in the donor (a tensor the donor has but an input
  // lacks is reported by add_job, naming the output tensor). Tied heads are exempt.
  void check_same_tensors(const SourceView& source, const SourceView& donor) {
    std::set<std::string> names;
    for (const auto& n : tensor_names(donor.model)) names.insert(n);
    for (const auto& n : tensor_names(source.model)) {
      if (!names.count(n) && !is_head(arch(donor.model), n)) {
        fail_at(donor.yaml_path,
                fmt::format("tensor '{}' is missing from model {} but present in {} ({}); the "
                            "models do not share an architecture",
                            n, ref(donor.model), ref(source.model), source.yaml_path));
      }
    }
  }

  // ---- raw tensor files (mergekit-pytorch) ----

  void plan_raw(const SliceView& slice) {
    // Names in order of first appearance: donor first, then the others.
    std::vector<std::string> order;
    std::set<std::string> seen;
    std::vector<size_t> models = {plan_.donor};
    for (const SourceView& s : slice.sources) models.push_back(s.model);
    for (size_t m : models) {
      for (const auto& n : tensor_names(m)) {
        if (seen.insert(n).second) order.push_back(n);
      }
    }
    std::vector<std::string> partial;
    size_t skipped = 0, base_missing = 0;
    for (const std::string& name : order) {
      SliceView sub;
      sub.params = slice.params;
      sub.yaml_path = slice.yaml_path;
      for (size_t i = 0; i < slice.sources.size(); ++i) {
        if (!has_tensor(slice.sources[i].model, name)) continue;
        if (static_cast<int>(i) == slice.base) sub.base = static_cast<int>(sub.sources.size());
        sub.sources.push_back(slice.sources[i]);
      }
      if (sub.sources.size() != slice.sources.size()) {
        if (opt_.tensor_set == TensorSetMode::kError) {
          partial.push_back(name);
          continue;
        }
        if (opt_.tensor_set == TensorSetMode::kIntersection) {
          ++skipped;
          continue;
        }
        if (slice.base >= 0 && sub.base < 0 &&
            plan_.method->base_use() == methods::BaseUse::kRequired) {
          // --tensor-union and the base lacks it: keep the first model's tensor unchanged.
          ++base_missing;
          add_copy_job(name, sub.sources[0].model, name, false);
          continue;
        }
      }
      std::vector<std::string> inputs(sub.sources.size(), name);
      add_job(name, inputs, sub, 0.0);
    }
    if (!partial.empty()) {
      std::vector<std::string> shown(partial.begin(),
                                     partial.begin() + std::min<size_t>(5, partial.size()));
      fail_at("models",
              fmt::format("{} tensor(s) are missing from some input files (e.g. {}); pass "
                          "--tensor-intersection to skip them or --tensor-union to merge "
                          "each over the files that have it",
                          partial.size(), fmt::join(shown, ", ")));
    }
    if (skipped)
      warn(fmt::format("--tensor-intersection: skipped {} tensor(s) missing from some files",
                       skipped));
    if (base_missing) {
      warn(fmt::format(
          "--tensor-union: {} tensor(s) absent from the base were copied from the first "
          "file that has them",
          base_missing));
    }
  }

  // ---- slices: ----

  void plan_slices() {
    check_parameter_names(cfg_.parameters, "parameters", false);
    check_parameter_names(cfg_.module_parameters, "modules.default.parameters", false);
    const int global_base = base_model_index();
    std::vector<SliceView> slices;
    for (const auto& os : cfg_.slices) {
      SliceView v;
      v.params = &os.parameters;
      v.yaml_path = os.yaml_path;
      check_parameter_names(os.parameters, os.yaml_path + ".parameters", false);
      if (os.sources.empty())
        fail_at(os.yaml_path + ".sources", "a slice needs at least one source");
      for (const auto& src : os.sources) {
        SourceView s;
        s.model = add_model(src.model);
        s.start = src.layer_start;
        s.end = src.layer_end;
        s.params = &src.parameters;
        s.yaml_path = src.yaml_path;
        check_parameter_names(src.parameters, src.yaml_path + ".parameters", true);
        resolve_scope(s.model);
        const int64_t have = stack_layers(s.model);
        if (s.end > have) {
          fail_at(src.yaml_path + ".layer_range",
                  fmt::format("[{}, {}) goes beyond model {}, which has {} layers", s.start, s.end,
                              ref(s.model), have));
        }
        if (!v.sources.empty() && s.end - s.start != v.sources[0].end - v.sources[0].start) {
          fail_at(src.yaml_path + ".layer_range",
                  fmt::format("spans {} layers but {} spans {}; all sources of a slice must "
                              "contain the same number of layers",
                              s.end - s.start, v.sources[0].yaml_path,
                              v.sources[0].end - v.sources[0].start));
        }
        v.sources.push_back(s);
      }
      int base = global_base;
      std::string base_path = "base_model";
      if (os.base_model) {
        base = static_cast<int>(add_model(*os.base_model));
        base_path = os.yaml_path + ".base_model";
      }
      attach_base(&v, base, base_path);
      slices.push_back(std::move(v));
    }
    plan_.base_model = global_base;
    plan_.donor = global_base >= 0 ? static_cast<size_t>(global_base) : slices[0].sources[0].model;
    decide_raw();
    if (plan_.raw) fail_at("slices", "slices need models with a config.json (layer structure)");
    check_architectures();
    const std::string slices_key = module_ ? module_->yaml_path + ".slices" : "slices";
    if (stack_layers(plan_.donor) == 0) {
      fail_at(slices_key,
              fmt::format("model {} has no numbered layers to slice{}", ref(plan_.donor),
                          module_ ? " in this module (use models: instead)" : ""));
    }

    // Pre-weights from the first slice, layers renumbered in order, post-weights from the last.
    const SliceView& first = slices.front();
    const SliceView& last = slices.back();
    auto loose = [&](size_t model, bool post) {
      std::vector<std::string> names;
      for (const auto& n : tensor_names(model)) {
        if (!in_scope(n)) continue;
        auto l = parse_layer_name(n);
        if (l && l->prefix == stack(model)) continue;
        if (arch(model).is_post_weight(n) == post) names.push_back(n);
      }
      return names;
    };
    for (const auto& name : loose(first.sources[0].model, false)) {
      std::vector<std::string> inputs;
      for (const SourceView& s : first.sources) inputs.push_back(input_name(s.model, name));
      add_job(name, inputs, first, 0);
    }
    int64_t out_layer = 0;
    const std::string out_prefix = stack(plan_.donor);
    for (const SliceView& s : slices) {
      const int64_t n = s.sources[0].end - s.sources[0].start;
      const size_t lead = s.sources[0].model;
      const std::string prefix = stack(lead);
      for (int64_t j = 0; j < n; ++j, ++out_layer) {
        const double tpos = n == 1 ? 1.0 : static_cast<double>(j) / static_cast<double>(n - 1);
        std::set<std::string> lead_suffixes;
        // The lead source's tensors of that layer define the layer's template.
        for (const auto& name : tensor_names(lead)) {
          auto l = parse_layer_name(name);
          if (!l || l->prefix != prefix || l->index != s.sources[0].start + j) continue;
          lead_suffixes.insert(l->suffix);
          std::vector<std::string> inputs;
          for (const SourceView& src : s.sources)
            inputs.push_back(layer_tensor_name(*l, src.start + j));
          LayerName out = *l;
          out.prefix = out_prefix;
          add_job(layer_tensor_name(out, out_layer), inputs, s, tpos);
        }
        // Sources must not have tensors in that layer that the lead lacks.
        for (size_t k = 1; k < s.sources.size(); ++k) {
          const SourceView& src = s.sources[k];
          for (const auto& name : tensor_names(src.model)) {
            auto l = parse_layer_name(name);
            if (!l || l->prefix != stack(src.model) || l->index != src.start + j) continue;
            if (!lead_suffixes.count(l->suffix)) {
              fail_at(src.yaml_path,
                      fmt::format("tensor '{}' of {} has no counterpart in layer {} of "
                                  "{}; the models do not share an architecture",
                                  name, ref(src.model), s.sources[0].start + j, ref(lead)));
            }
          }
        }
      }
    }
    std::set<std::string> drop;
    std::vector<std::string> heads = plan_heads(last.sources, &drop);
    std::vector<std::string> post;
    for (const auto& name : loose(last.sources[0].model, true)) {
      if (!drop.count(name)) post.push_back(name);
    }
    for (const auto& h : heads) {
      if (in_scope(h) && std::find(post.begin(), post.end(), h) == post.end()) post.push_back(h);
    }
    for (const auto& name : post) {
      std::vector<std::string> inputs;
      for (const SourceView& s : last.sources) inputs.push_back(input_name(s.model, name));
      add_job(name, inputs, last, 0);
    }
    plan_.output_layers = out_layer;
    plan_.layer_count_key = stack_count_key(plan_.donor);
    if (plan_.layer_count_key.empty() && out_layer != stack_layers(plan_.donor)) {
      fail_at(slices_key,
              fmt::format("the output has {} layers but {}'s config.json has no layer-count key "
                          "holding its {} layers (looked for num_hidden_layers, n_layer, "
                          "num_layers, n_layers, text_config.num_hidden_layers); the output "
                          "config.json would be wrong",
                          out_layer, ref(plan_.donor), stack_layers(plan_.donor)));
    }
  }

  // ---- jobs ----

  // A job writing `tensor` of `model` unchanged (bytes for non-float tensors; through passthrough
  // for float ones, so out_dtype applies).
  void add_copy_job(const std::string& out_name, size_t model, const std::string& tensor,
                    bool is_embedding) {
    TensorJob job;
    job.name = out_name;
    job.is_embedding = is_embedding;
    JobInput in;
    in.model = model;
    in.tensor = tensor;
    in.source = plan_.models[model].model->find(tensor);
    if (!in.source.info) fail("model {} has no tensor '{}'", ref(model), tensor);
    job.shape = in.source.info->shape;
    job.inputs.push_back(in);
    if (!in.source.info->quantized() && !dtype_is_convertible_float(in.source.info->dtype)) {
      job.copy = true;
      job.dtype = in.source.info->dtype;
    } else {
      job.method = passthrough_;
      job.dtype = output_dtype(in.source.info->quantized() ? DType::kF16 : in.source.info->dtype);
      job.params.per_model.resize(1);
      job.params.per_model[0]["scale"] = 1.0;
      job.model_origin.resize(1);
      job.model_origin[0]["scale"] = "copied from the base model";
    }
    plan_.jobs.push_back(std::move(job));
  }

  DType output_dtype(DType stored) const {
    return cfg_.out_dtype ? *cfg_.out_dtype : cfg_.dtype ? *cfg_.dtype : stored;
  }

  void add_job(const std::string& out_name, const std::vector<std::string>& input_names,
               const SliceView& slice, double tpos) {
    const ArchitectureInfo& donor = arch(plan_.donor);
    const bool is_embedding = !plan_.raw && donor.is_embedding(out_name);
    // Vision towers and projectors are copied from the base unless the config addresses them.
    if (!plan_.raw && donor.copy_from_base(out_name) && !addressed_by_config(out_name)) {
      const size_t from = slice.base >= 0 ? slice.sources[slice.base].model : plan_.donor;
      add_copy_job(out_name, from, input_name(from, out_name), is_embedding);
      return;
    }
    TensorJob job;
    job.name = out_name;
    job.t = tpos;
    job.method = plan_.method;
    job.is_embedding = is_embedding;
    const methods::BaseUse base_use = plan_.method->base_use();
    if (base_use == methods::BaseUse::kRequired && slice.base < 0) {
      fail_at(slice.yaml_path.empty() ? "base_model" : slice.yaml_path + ".base_model",
              fmt::format("{} needs a base_model", plan_.method->name()));
    }
    job.base = base_use == methods::BaseUse::kNone ? -1 : slice.base;
    for (size_t i = 0; i < slice.sources.size(); ++i) {
      const SourceView& s = slice.sources[i];
      JobInput in;
      in.model = s.model;
      in.tensor = input_names[i];
      in.source = plan_.models[s.model].model->find(in.tensor);
      if (!in.source.info) {
        fail_at(s.yaml_path, fmt::format("tensor '{}' is missing from model {} (needed for output "
                                         "tensor '{}')",
                                         in.tensor, ref(s.model), out_name));
      }
      job.inputs.push_back(std::move(in));
    }
    SliceView kept = slice;
    if (opt_.allow_shape_mismatch && job.base >= 0 && !job.is_embedding) {
      // --allow-shape-mismatch: task-vector methods skip a model whose tensor differs in shape
      // from the base's (mergekit's silent behaviour, here with a warning).
      const std::vector<uint64_t>& base_shape = job.inputs[job.base].source.info->shape;
      for (size_t i = job.inputs.size(); i-- > 0;) {
        if (static_cast<int>(i) == job.base || job.inputs[i].source.info->shape == base_shape)
          continue;
        warn(fmt::format(
            "--allow-shape-mismatch: '{}' of {} has shape {} but the base's is {}; that "
            "model is left out of this tensor",
            job.inputs[i].tensor, ref(job.inputs[i].model),
            shape_str(job.inputs[i].source.info->shape), shape_str(base_shape)));
        job.inputs.erase(job.inputs.begin() + static_cast<std::ptrdiff_t>(i));
        kept.sources.erase(kept.sources.begin() + static_cast<std::ptrdiff_t>(i));
        if (static_cast<int>(i) < job.base) --job.base;
      }
      kept.base = job.base;
    }
    const size_t ref_input = job.base >= 0 ? static_cast<size_t>(job.base) : 0;
    const io::TensorInfo& ref_info = *job.inputs[ref_input].source.info;
    job.shape = ref_info.shape;
    reconcile_shapes(&job, kept);
    bool all_float = true;
    for (const auto& in : job.inputs) {
      all_float = all_float && (in.source.info->quantized() ||
                                dtype_is_convertible_float(in.source.info->dtype));
    }
    if (!all_float) {
      const JobInput keep = job.inputs[ref_input];
      job = TensorJob();
      add_copy_job(out_name, keep.model, keep.tensor, is_embedding);
      return;
    }
    // Dequantized GGUF blocks default to F16 in a safetensors output.
    job.dtype = output_dtype(ref_info.quantized() ? DType::kF16 : ref_info.dtype);
    if (!dtype_is_convertible_float(job.dtype)) {
      fail_at("out_dtype",
              fmt::format("cannot write tensor '{}' as {}", out_name, dtype_name(job.dtype)));
    }
    resolve_params(&job, kept);
    plan_.jobs.push_back(std::move(job));
  }

  // Inputs must share a shape, except embeddings, which are cropped to their common top-left block
  // (mergekit's rectification, docs/config.md).
  void reconcile_shapes(TensorJob* job, const SliceView& slice) {
    bool same = true;
    for (const auto& in : job->inputs) same = same && in.source.info->shape == job->shape;
    if (same) return;
    bool all_2d = true;
    for (const auto& in : job->inputs) all_2d = all_2d && in.source.info->shape.size() == 2;
    // A tokenizer merge replaces the embeddings' inputs with rows permuted to the output
    // vocabulary (align_embeddings), so their shapes then agree.
    if (job->is_embedding && all_2d && cfg_.uses_tokenizer()) return;
    if (job->is_embedding && all_2d) {
      std::vector<uint64_t> common = job->shape;
      std::vector<std::string> shapes;
      for (const auto& in : job->inputs) {
        common[0] = std::min(common[0], in.source.info->shape[0]);
        common[1] = std::min(common[1], in.source.info->shape[1]);
        shapes.push_back(fmt::format("{} {}", ref(in.model), shape_str(in.source.info->shape)));
      }
      job->shape = common;
      warn(fmt::format("'{}': inputs differ in shape ({}); cropped to the common block {}",
                       job->name, fmt::join(shapes, ", "), shape_str(common)));
      const ArchitectureInfo& d = arch(plan_.donor);
      if (!d.vocab_size_key.empty()) {
        plan_.output_vocab = plan_.output_vocab < 0
                                 ? static_cast<int64_t>(common[0])
                                 : std::min<int64_t>(plan_.output_vocab, common[0]);
      }
      return;
    }
    for (size_t i = 0; i < job->inputs.size(); ++i) {
      const io::TensorInfo& info = *job->inputs[i].source.info;
      if (info.shape != job->shape) {
        const size_t r = job->base >= 0 ? static_cast<size_t>(job->base) : 0;
        fail_at(slice.sources[i].yaml_path,
                fmt::format("tensor '{}' has shape {} in {} but {} in {}; shapes must match{}",
                            info.name, shape_str(info.shape), ref(job->inputs[i].model),
                            shape_str(job->shape), ref(job->inputs[r].model),
                            job->base >= 0 ? " (--allow-shape-mismatch leaves such models out of "
                                             "the tensor, as mergekit does silently)"
                                           : ""));
      }
    }
  }

  void resolve_params(TensorJob* job, const SliceView& slice) {
    const methods::Method& m = *plan_.method;
    std::vector<const ParameterSettings*> global_levels = {slice.params, &cfg_.module_parameters,
                                                           &cfg_.parameters};
    for (const auto& spec : m.global_params()) {
      auto r = config::resolve_parameter(global_levels, spec.name, job->name, job->t);
      if (r) {
        job->params.global[spec.name] = r->value;
        job->global_origin[spec.name] = r->setting->yaml_path();
      } else if (spec.default_value) {
        job->params.global[spec.name] = *spec.default_value;
        job->global_origin[spec.name] = "default";
      } else {
        fail_at("parameters." + spec.name,
                fmt::format("missing required parameter '{}' of {} for tensor '{}'", spec.name,
                            m.name(), job->name));
      }
    }
    job->params.per_model.resize(job->inputs.size());
    job->model_origin.resize(job->inputs.size());
    for (size_t i = 0; i < job->inputs.size(); ++i) {
      const SourceView& s = slice.sources[i];
      std::vector<const ParameterSettings*> levels = {s.params, slice.params,
                                                      &cfg_.module_parameters, &cfg_.parameters};
      for (const auto& spec : m.model_params()) {
        auto r = config::resolve_parameter(levels, spec.name, job->inputs[i].tensor, job->t);
        if (r) {
          job->params.per_model[i][spec.name] = r->value;
          job->model_origin[i][spec.name] = r->setting->yaml_path();
        } else if (spec.default_value) {
          job->params.per_model[i][spec.name] = *spec.default_value;
          job->model_origin[i][spec.name] = "default";
        } else if (static_cast<int>(i) == job->base) {
          // mergekit waives required per-model parameters for the base model.
        } else {
          const std::string where = s.params ? s.yaml_path + ".parameters." + spec.name
                                             : std::string("parameters.") + spec.name;
          fail_at(where, fmt::format("missing required parameter '{}' for model {} (tensor '{}'){}",
                                     spec.name, ref(s.model), job->inputs[i].tensor,
                                     s.params ? ""
                                              : "; the base model is an input of " +
                                                    std::string(m.name()) +
                                                    " too, so give it a value (e.g. under the "
                                                    "top-level parameters)"));
        }
      }
    }
  }

  // Jobs that would compute the same bytes (a layer used twice by a passthrough frankenmerge) are
  // computed once and written under every name.
  void dedupe() {
    std::map<std::string, size_t> first;
    for (size_t i = 0; i < plan_.jobs.size(); ++i) {
      TensorJob& job = plan_.jobs[i];
      if (job.inputs.size() != 1) continue;
      const bool copy_like = job.copy || job.method == passthrough_;
      if (!copy_like) continue;
      std::string key =
          fmt::format("{}|{}|{}|{}|{}|{}", job.inputs[0].model, job.inputs[0].tensor,
                      static_cast<int>(job.dtype), job.copy,
                      job.copy ? 0.0 : job.params.per_model[0].at("scale"), job.value_offset);
      auto [it, inserted] = first.emplace(key, i);
      if (!inserted) {
        job.duplicate_of = static_cast<int>(it->second);
        plan_.jobs[it->second].duplicates.push_back(i);
      }
    }
  }

  void finish_jobs() {
    if (plan_.jobs.empty()) fail("{}: the merge produces no tensors", cfg_.filename);
    std::set<std::string> seen;
    size_t copies = 0;
    constexpr size_t kMaxMethodWarnings = 5;
    size_t method_warnings = 0;
    for (const TensorJob& job : plan_.jobs) {
      if (!seen.insert(job.name).second) {
        fail("{}: output tensor '{}' would be written twice", cfg_.filename, job.name);
      }
      if (job.copy) {
        ++copies;
        continue;
      }
      if (job.constant) continue;
      const methods::TensorContext ctx = job.context(opt_.seed);
      try {
        job.method->validate(ctx);
      } catch (const Error& e) {
        fail("{}: {}", cfg_.filename, e.what());
      }
      for (std::string& w : job.method->warnings(ctx)) {
        if (++method_warnings <= kMaxMethodWarnings) warn(std::move(w));
      }
    }
    if (method_warnings > kMaxMethodWarnings) {
      warn(
          fmt::format("... and {} more warnings like these", method_warnings - kMaxMethodWarnings));
    }
    if (copies) {
      warn(fmt::format("{} non-float tensor(s) are copied unchanged from the base (or first) model",
                       copies));
    }
  }

  const config::MergeConfig& cfg_;
  const PlanOptions& opt_;
  Plan plan_;
  const methods::Method* passthrough_ = nullptr;
  const config::OutputModule* module_ = nullptr;  // the module planned (modules: configs)
  std::vector<std::string> scope_;                // its tensor globs
  std::vector<std::string> model_paths_;          // YAML path of each model's first reference
  std::vector<std::string> config_filters_;
};

}  // namespace

uint64_t TensorJob::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t TensorJob::output_bytes() const {
  if (ggml_type >= 0) {
    if (auto b = kernels::ggml_type_bytes(static_cast<kernels::GgmlType>(ggml_type), numel()))
      return *b;
  }
  return *dtype_bytes(dtype, numel());
}

methods::TensorContext TensorJob::context(uint64_t seed) const {
  methods::TensorContext c;
  c.name = name;
  c.shape = shape;
  c.numel = numel();
  c.num_inputs = inputs.size();
  c.base = base;
  c.is_embedding = is_embedding;
  c.seed = seed;
  c.params = &params;
  return c;
}

uint64_t Plan::output_bytes() const {
  uint64_t total = 0;
  for (const auto& j : jobs) total += j.output_bytes();
  return total;
}

uint64_t Plan::input_bytes() const {
  uint64_t total = 0;
  for (const auto& j : jobs) {
    if (j.duplicate_of >= 0) continue;
    for (const auto& in : j.inputs) total += in.source.info->nbytes;
  }
  return total;
}

namespace {

// A `modules:` config of a multi-module model (docs/config.md, "Modules"): each module is planned
// as its own merge of that module's tensors, and the plans are joined into one.
Plan build_module_plan(const config::MergeConfig& config, const PlanOptions& options) {
  Plan out;
  bool first = true;
  std::map<std::string, std::string> owner;  // output tensor -> module
  for (const config::OutputModule& m : config.modules) {
    config::MergeConfig lifted = config;
    lifted.models = m.models;
    lifted.slices = m.slices;
    lifted.module_parameters = m.parameters;
    lifted.modules.clear();
    Plan p = Planner(lifted, options, &m, out.models).build();
    if (p.gguf_output) {
      fail("{}: modules: GGUF output of a multi-module model is not supported; write safetensors",
           config.filename);
    }
    for (const auto& job : p.jobs) {
      if (auto [it, fresh] = owner.emplace(job.name, m.name); !fresh) {
        fail("{}: {}: tensor '{}' belongs to modules '{}' and '{}'", config.filename, m.yaml_path,
             job.name, it->second, m.name);
      }
    }
    if (p.output_layers >= 0 && !p.layer_count_key.empty()) {
      out.module_layer_counts.emplace_back(p.layer_count_key, p.output_layers);
    }
    if (first) {
      const auto counts = std::move(out.module_layer_counts);
      out = std::move(p);
      out.module_layer_counts = counts;
      out.output_layers = -1;
      out.layer_count_key.clear();
      out.config = config;
      first = false;
      continue;
    }
    // Join: p's models extend out's (the planner started from them), jobs follow with their
    // duplicate indices moved.
    out.models = std::move(p.models);
    const size_t offset = out.jobs.size();
    for (TensorJob& job : p.jobs) {
      for (size_t& d : job.duplicates) d += offset;
      if (job.duplicate_of >= 0) job.duplicate_of += static_cast<int>(offset);
      out.jobs.push_back(std::move(job));
    }
    for (auto& w : p.warnings) out.warnings.push_back(std::move(w));
    for (auto& f : p.computed_files) out.computed_files.push_back(std::move(f));
    if (!out.output_tokenizer && p.output_tokenizer) out.output_tokenizer = p.output_tokenizer;
    if (out.output_vocab < 0) out.output_vocab = p.output_vocab;
    if (!out.chat_template) out.chat_template = p.chat_template;
  }
  // Every tensor of the donor must belong to a module: a model missing its vision tower is not
  // a model (mergekit writes it anyway).
  const PlanModel& donor = out.models[out.donor];
  std::vector<std::string> all, left;
  for (const auto& t : donor.model->tensors()) all.push_back(t.info->name);
  for (const auto& name : all) {
    // A tied head a module leaves out (the output stays tied) is not missing.
    if (!owner.count(name) && donor.arch.tied_embedding(name, all).empty()) left.push_back(name);
  }
  if (!left.empty()) {
    std::vector<std::string> names;
    for (const auto& m : config.modules) names.push_back(m.name);
    fail(
        "{}: modules: {} tensor(s) of {} belong to none of the modules ({}), e.g. '{}'; add the "
        "module they belong to (to keep it unchanged: `<module>: {{models: [{{model: BASE}}]}}`)",
        config.filename, left.size(), donor.ref, fmt::join(names, ", "), left.front());
  }
  return out;
}

}  // namespace

Plan build_plan(const config::MergeConfig& config, const PlanOptions& options) {
  // `modules: {default: {models | slices, parameters}}` (mergekit's own model cards write single-
  // module configs this way) is the same merge as its models/slices at the top level, with the
  // module's parameters one level above the top-level ones.
  if (config.modules.size() == 1 && config.modules[0].name == "default") {
    config::MergeConfig lifted = config;
    const config::OutputModule& m = config.modules[0];
    lifted.models = m.models;
    lifted.slices = m.slices;
    lifted.module_parameters = m.parameters;
    lifted.modules.clear();
    return Planner(lifted, options).build();
  }
  if (!config.modules.empty()) return build_module_plan(config, options);
  return Planner(config, options).build();
}

}  // namespace smelt::plan
