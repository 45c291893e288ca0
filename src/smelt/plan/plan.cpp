// Builds the per-tensor merge plan from a mergekit config and the models' headers.
#include "smelt/plan/plan.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <set>

#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/plan/architecture.h"

namespace smelt::plan {
namespace {

using config::ParameterSettings;

std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string shape_str(const std::vector<uint64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

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

class Planner {
 public:
  Planner(const config::MergeConfig& cfg, const PlanOptions& opt) : cfg_(cfg), opt_(opt) {
    plan_.config = cfg;
  }

  Plan build() {
    find_method();
    reject_unsupported();
    if (cfg_.uses_models()) {
      plan_models();
    } else {
      plan_slices();
    }
    finish_jobs();
    return std::move(plan_);
  }

 private:
  [[noreturn]] void fail_at(const std::string& yaml_path, const std::string& message) {
    if (yaml_path.empty()) fail("{}: {}", cfg_.filename, message);
    fail("{}: {}: {}", cfg_.filename, yaml_path, message);
  }

  void find_method() {
    plan_.method = methods::find_method(cfg_.merge_method);
    if (plan_.method) return;
    const auto names = methods::method_names();
    const std::string guess = config::closest_match(cfg_.merge_method, names);
    fail_at("merge_method",
            fmt::format("unknown merge method '{}'; {}known methods: {}", cfg_.merge_method,
                        guess.empty() ? "" : fmt::format("did you mean {}? ", guess),
                        fmt::join(names, ", ")));
  }

  void reject_unsupported() {
    if (cfg_.uses_modules()) {
      fail_at("modules", "not yet supported by smelt; use models: or slices:");
    }
    cfg_.for_each_model_reference([&](const config::ModelReference& r) {
      if (r.has_lora()) {
        fail_at(r.yaml_path, fmt::format("LoRA references ('+{}') are not yet supported by smelt; "
                                         "merge the adapter into the model first",
                                         r.ref.lora_path));
      }
    });
    if (cfg_.tokenizer) {
      fail_at("tokenizer", "not yet supported by smelt (the donor model's tokenizer is copied "
                           "when this key is absent)");
    }
    if (cfg_.tokenizer_source &&
        cfg_.tokenizer_source->kind != config::TokenizerSource::Kind::kBase) {
      fail_at("tokenizer_source",
              fmt::format("'{}' is not yet supported by smelt; only 'base' is (or leave the key "
                          "out to copy the base model's tokenizer)",
                          cfg_.tokenizer_source->kind == config::TokenizerSource::Kind::kUnion
                              ? "union"
                              : cfg_.tokenizer_source->model->str()));
    }
    if (cfg_.chat_template) {
      const std::string& t = *cfg_.chat_template;
      if (t.size() < 20 || t.find('{') == std::string::npos) {
        fail_at("chat_template",
                fmt::format("'{}': named templates and 'auto' are not yet supported by smelt; "
                            "give the Jinja template text itself",
                            t));
      }
    }
  }

  size_t add_model(const config::ModelReference& r) {
    const std::string key = r.str();
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (plan_.models[i].ref == key) return i;
    }
    PlanModel m;
    m.ref = key;
    try {
      m.model = io::Model::open(io::resolve_model(r.ref));
    } catch (const Error& e) {
      fail_at(r.yaml_path, e.what());
    }
    if (!m.model->resolved().config_json.empty()) {
      m.config_text = read_text_file(m.model->resolved().config_json);
    }
    std::vector<std::string> names;
    for (const auto& t : m.model->tensors()) names.push_back(t.info->name);
    structures_.push_back(infer_layers(names));
    plan_.models.push_back(std::move(m));
    return plan_.models.size() - 1;
  }

  // Global and per-model parameter names the method knows.
  void check_parameter_names(const ParameterSettings& settings, const std::string& where,
                             bool per_model) {
    std::vector<std::string> known;
    std::set<std::string> global;
    for (const auto& p : plan_.method->model_params()) known.push_back(p.name);
    for (const auto& p : plan_.method->global_params()) known.push_back(p.name), global.insert(p.name);
    for (const auto& [name, value] : settings) {
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        const std::string guess = config::closest_match(name, known);
        warn(fmt::format("{}.{}: parameter '{}' is not used by {}{}", where, name, name,
                         plan_.method->name(),
                         guess.empty() ? "" : fmt::format(" (did you mean {}?)", guess)));
      } else if (per_model && global.count(name)) {
        warn(fmt::format("{}.{}: '{}' is a global parameter of {}; per-model values are ignored "
                         "(as in mergekit): set it under the top-level parameters",
                         where, name, name, plan_.method->name()));
      }
    }
  }

  void warn(std::string message) {
    if (std::find(plan_.warnings.begin(), plan_.warnings.end(), message) == plan_.warnings.end()) {
      plan_.warnings.push_back(std::move(message));
    }
  }

  int base_model_index() {
    if (!cfg_.base_model) return -1;
    return static_cast<int>(add_model(*cfg_.base_model));
  }

  void plan_models() {
    SliceView slice;
    slice.params = nullptr;
    for (const auto& m : cfg_.models) {
      SourceView s;
      s.model = add_model(m.model);
      s.params = &m.parameters;
      s.yaml_path = m.yaml_path;
      slice.sources.push_back(s);
      check_parameter_names(m.parameters, m.yaml_path + ".parameters", true);
    }
    check_parameter_names(cfg_.parameters, "parameters", false);
    plan_.base_model = base_model_index();
    attach_base(&slice, plan_.base_model, "base_model");
    plan_.donor = plan_.base_model >= 0 ? static_cast<size_t>(plan_.base_model) : slice.sources[0].model;

    // Every model must have the donor's layer stacks with the same number of layers.
    const LayerStructure& donor = structures_[plan_.donor];
    for (const SourceView& s : slice.sources) {
      if (structures_[s.model].layers_by_prefix != donor.layers_by_prefix) {
        fail_at(s.yaml_path,
                fmt::format("model {} has {} layers but {} has {}; all inputs to a merge must "
                            "contain the same number of layers (use slices: to pick ranges)",
                            plan_.models[s.model].ref, structures_[s.model].num_layers(),
                            plan_.models[plan_.donor].ref, donor.num_layers()));
      }
    }
    const SourceView* donor_source = nullptr;
    for (const SourceView& s : slice.sources) {
      if (s.model == plan_.donor && !donor_source) donor_source = &s;
    }
    for (const SourceView& s : slice.sources) check_same_tensors(s, *donor_source, nullptr);
    for (const auto& t : plan_.models[plan_.donor].model->tensors()) {
      const std::string& name = t.info->name;
      double tpos = 0;
      if (auto l = parse_layer_name(name)) {
        const int64_t n = donor.layers_by_prefix.at(l->prefix);
        tpos = n <= 1 ? 1.0 : static_cast<double>(l->index) / static_cast<double>(n - 1);
      }
      std::vector<std::string> input_names(slice.sources.size(), name);
      add_job(name, input_names, slice, tpos);
    }
  }

  // Fails when `source`'s model has a tensor the donor tensor list lacks (a missing tensor is
  // reported by add_job, naming the output tensor). With `layer_prefix`, only tensors of that
  // layer stack are compared.
  void check_same_tensors(const SourceView& source, const SourceView& donor,
                          const std::string* layer_prefix) {
    std::set<std::string_view> names;
    for (const auto& t : plan_.models[donor.model].model->tensors()) names.insert(t.info->name);
    for (const auto& t : plan_.models[source.model].model->tensors()) {
      if (layer_prefix) {
        auto l = parse_layer_name(t.info->name);
        if (!l || l->prefix != *layer_prefix) continue;
      }
      if (!names.count(t.info->name)) {
        fail_at(donor.yaml_path,
                fmt::format("tensor '{}' is missing from model {} but present in {} ({}); the "
                            "models do not share an architecture",
                            t.info->name, plan_.models[donor.model].ref,
                            plan_.models[source.model].ref, source.yaml_path));
      }
    }
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
                                     plan_.models[base_model].ref, slice->yaml_path));
    }
    SourceView s;
    s.model = static_cast<size_t>(base_model);
    s.yaml_path = yaml_path;
    slice->sources.push_back(s);
    slice->base = static_cast<int>(slice->sources.size() - 1);
  }

  void plan_slices() {
    check_parameter_names(cfg_.parameters, "parameters", false);
    const int global_base = base_model_index();
    std::vector<SliceView> slices;
    for (const auto& os : cfg_.slices) {
      SliceView v;
      v.params = &os.parameters;
      v.yaml_path = os.yaml_path;
      check_parameter_names(os.parameters, os.yaml_path + ".parameters", false);
      if (os.sources.empty()) fail_at(os.yaml_path + ".sources", "a slice needs at least one source");
      for (const auto& src : os.sources) {
        SourceView s;
        s.model = add_model(src.model);
        s.start = src.layer_start;
        s.end = src.layer_end;
        s.params = &src.parameters;
        s.yaml_path = src.yaml_path;
        check_parameter_names(src.parameters, src.yaml_path + ".parameters", true);
        const int64_t have = structures_[s.model].num_layers();
        if (s.end > have) {
          fail_at(src.yaml_path + ".layer_range",
                  fmt::format("[{}, {}) goes beyond model {}, which has {} layers", s.start, s.end,
                              plan_.models[s.model].ref, have));
        }
        if (!v.sources.empty() && s.end - s.start != v.sources[0].end - v.sources[0].start) {
          fail_at(src.yaml_path + ".layer_range",
                  fmt::format("spans {} layers but {} spans {}; all sources of a slice must "
                              "contain the same number of layers",
                              s.end - s.start, v.sources[0].yaml_path, v.sources[0].end - v.sources[0].start));
        }
        v.sources.push_back(s);
      }
      int base = global_base;
      std::string base_path = "base_model";
      if (os.base_model) base = static_cast<int>(add_model(*os.base_model)), base_path = os.yaml_path + ".base_model";
      attach_base(&v, base, base_path);
      slices.push_back(std::move(v));
    }
    plan_.base_model = global_base;
    plan_.donor = global_base >= 0 ? static_cast<size_t>(global_base) : slices[0].sources[0].model;

    // Pre-weights from the first slice, layers renumbered in order, post-weights from the last.
    const size_t first_model = slices.front().sources[0].model;
    const size_t last_model = slices.back().sources[0].model;
    auto loose = [&](size_t model, bool post) {
      std::vector<std::string> names;
      const std::string& main = structures_[model].main_prefix;
      for (const auto& t : plan_.models[model].model->tensors()) {
        auto l = parse_layer_name(t.info->name);
        if (l && l->prefix == main) continue;
        if (is_post_weight_name(t.info->name) == post) names.push_back(t.info->name);
      }
      return names;
    };
    for (const auto& name : loose(first_model, false)) {
      add_job(name, std::vector<std::string>(slices.front().sources.size(), name), slices.front(), 0);
    }
    int64_t out_layer = 0;
    for (const SliceView& s : slices) {
      const int64_t n = s.sources[0].end - s.sources[0].start;
      const size_t lead = s.sources[0].model;
      const std::string& prefix = structures_[lead].main_prefix;
      for (int64_t j = 0; j < n; ++j, ++out_layer) {
        const double tpos = n == 1 ? 1.0 : static_cast<double>(j) / static_cast<double>(n - 1);
        // The lead source's tensors of that layer define the layer's template.
        for (const auto& t : plan_.models[lead].model->tensors()) {
          auto l = parse_layer_name(t.info->name);
          if (!l || l->prefix != prefix || l->index != s.sources[0].start + j) continue;
          std::vector<std::string> input_names;
          for (const SourceView& src : s.sources) input_names.push_back(layer_tensor_name(*l, src.start + j));
          add_job(layer_tensor_name(*l, out_layer), input_names, s, tpos);
        }
      }
    }
    for (const auto& name : loose(last_model, true)) {
      add_job(name, std::vector<std::string>(slices.back().sources.size(), name), slices.back(), 0);
    }
    plan_.output_layers = out_layer;
    const PlanModel& donor = plan_.models[plan_.donor];
    plan_.layer_count_key = find_layer_count_key(donor.config_text, structures_[plan_.donor].num_layers());
    if (plan_.layer_count_key.empty() && !donor.config_text.empty()) {
      warn(fmt::format("could not find the layer count in {}'s config.json; the output config keeps "
                       "the donor's value",
                       donor.ref));
    }
  }

  void add_job(const std::string& out_name, const std::vector<std::string>& input_names,
               const SliceView& slice, double tpos) {
    TensorJob job;
    job.name = out_name;
    job.t = tpos;
    job.is_embedding = is_embedding_name(out_name);
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
                                         in.tensor, plan_.models[s.model].ref, out_name));
      }
      job.inputs.push_back(std::move(in));
    }
    // Shapes must agree (embedding rectification comes with architecture support).
    const io::TensorInfo& ref_info = *job.inputs[job.base >= 0 ? job.base : 0].source.info;
    job.shape = ref_info.shape;
    for (size_t i = 0; i < job.inputs.size(); ++i) {
      const io::TensorInfo& info = *job.inputs[i].source.info;
      if (info.shape != job.shape) {
        fail_at(slice.sources[i].yaml_path,
                fmt::format("tensor '{}' has shape {} in {} but {} in {}; shapes must match", info.name,
                            shape_str(info.shape), plan_.models[job.inputs[i].model].ref,
                            shape_str(job.shape),
                            plan_.models[job.inputs[job.base >= 0 ? job.base : 0].model].ref));
      }
    }
    bool all_float = true;
    for (const auto& in : job.inputs) all_float = all_float && dtype_is_convertible_float(in.source.info->dtype);
    if (!all_float) {
      job.copy = true;
      const JobInput keep = job.inputs[job.base >= 0 ? job.base : 0];
      job.dtype = keep.source.info->dtype;
      job.inputs = {keep};
      job.base = -1;
      plan_.jobs.push_back(std::move(job));
      return;
    }
    job.dtype = cfg_.out_dtype ? *cfg_.out_dtype
                : cfg_.dtype   ? *cfg_.dtype
                               : ref_info.dtype;
    if (!dtype_is_convertible_float(job.dtype)) {
      fail_at("out_dtype", fmt::format("cannot write tensor '{}' as {}", out_name, dtype_name(job.dtype)));
    }
    resolve_params(&job, slice);
    plan_.jobs.push_back(std::move(job));
  }

  void resolve_params(TensorJob* job, const SliceView& slice) {
    const methods::Method& m = *plan_.method;
    std::vector<const ParameterSettings*> global_levels = {slice.params, &cfg_.parameters};
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
      std::vector<const ParameterSettings*> levels = {s.params, slice.params, &cfg_.parameters};
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
                                     spec.name, plan_.models[s.model].ref, job->inputs[i].tensor,
                                     s.params ? "" : "; the base model is an input of " +
                                                         std::string(m.name()) +
                                                         " too, so give it a value (e.g. under the "
                                                         "top-level parameters)"));
        }
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
      const methods::TensorContext ctx = job.context(opt_.seed);
      try {
        plan_.method->validate(ctx);
      } catch (const Error& e) {
        fail("{}: {}", cfg_.filename, e.what());
      }
      for (std::string& w : plan_.method->warnings(ctx)) {
        if (++method_warnings <= kMaxMethodWarnings) warn(std::move(w));
      }
    }
    if (method_warnings > kMaxMethodWarnings) {
      warn(fmt::format("... and {} more warnings like these", method_warnings - kMaxMethodWarnings));
    }
    if (copies) {
      warn(fmt::format("{} non-float tensor(s) are copied unchanged from the base (or first) model",
                       copies));
    }
  }

  const config::MergeConfig& cfg_;
  const PlanOptions& opt_;
  Plan plan_;
  std::vector<LayerStructure> structures_;  // per plan model
};

}  // namespace

uint64_t TensorJob::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t TensorJob::output_bytes() const { return *dtype_bytes(dtype, numel()); }

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
    for (const auto& in : j.inputs) total += in.source.info->nbytes;
  }
  return total;
}

Plan build_plan(const config::MergeConfig& config, const PlanOptions& options) {
  return Planner(config, options).build();
}

}  // namespace smelt::plan
