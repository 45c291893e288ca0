// Genome files of mergekit-evolve and the merge configs of genotypes (docs/evolve.md).
#include "smelt/search/genome.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"

namespace smelt::search {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTopKeys = {"genome",
                                           "tasks",
                                           "limit",
                                           "num_fewshot",
                                           "shuffle",
                                           "random_init",
                                           "apply_chat_template",
                                           "fewshot_as_multiturn"};
const std::vector<std::string> kGenomeKeys = {"models",
                                              "merge_method",
                                              "base_model",
                                              "tokenizer_source",
                                              "layer_granularity",
                                              "normalize",
                                              "allow_negative_weights",
                                              "filters",
                                              "smooth"};
const std::vector<std::string> kTaskKeys = {"name", "weight", "metric", "test"};

// Fails on a key of `node` not in `allowed`, naming `where` and the nearest allowed key.
void check_keys(const YAML::Node& node, const std::string& where,
                const std::vector<std::string>& allowed) {
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    const std::string guess = config::closest_match(key, allowed);
    fail("{}{}: unknown key; {}", where, key,
         guess.empty() ? fmt::format("valid keys here are {}", fmt::join(allowed, ", "))
                       : fmt::format("did you mean '{}'?", guess));
  }
}

bool is_null(const YAML::Node& n) { return !n || n.IsNull(); }

template <typename T>
T scalar(const YAML::Node& n, const std::string& where, const char* what) {
  if (!n.IsScalar()) fail("{}: expected {}", where, what);
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    fail("{}: expected {}; got \"{}\"", where, what, n.Scalar());
  }
}

std::string model_string(const YAML::Node& n, const std::string& where) {
  if (!n.IsScalar() || n.Scalar().empty())
    fail("{}: expected a model (a folder path); got {}", where,
         n.IsMap() ? "a mapping" : (n.IsSequence() ? "a list" : "nothing"));
  return n.Scalar();
}

std::string format_double(double v) { return fmt::format("{}", v); }

YAML::Node number(double v) { return YAML::Node(format_double(v)); }

GenomeDefinition parse_genome(const YAML::Node& g, const std::string& file) {
  const std::string where = fmt::format("{}: genome.", file);
  if (!g.IsMap()) fail("{}: genome: expected a mapping with models, merge_method, ...", file);
  check_keys(g, where, kGenomeKeys);
  GenomeDefinition d;
  const YAML::Node models = g["models"];
  if (is_null(models) || !models.IsSequence() || models.size() == 0)
    fail("{}models: give a list of the models to merge", where);
  for (size_t i = 0; i < models.size(); ++i)
    d.models.push_back(model_string(models[i], fmt::format("{}models[{}]", where, i)));
  if (is_null(g["merge_method"])) {
    fail("{}merge_method: missing; evolve can vary {}", where,
         fmt::join(evolvable_methods(), ", "));
  }
  d.merge_method = scalar<std::string>(g["merge_method"], where + "merge_method", "a method name");
  const auto& methods = evolvable_methods();
  if (std::find(methods.begin(), methods.end(), d.merge_method) == methods.end()) {
    fail("{}merge_method: evolve cannot vary \"{}\"; it varies {} (as mergekit-evolve)", where,
         d.merge_method, fmt::join(methods, ", "));
  }
  if (!is_null(g["base_model"])) d.base_model = model_string(g["base_model"], where + "base_model");
  if (!is_null(g["tokenizer_source"])) {
    d.tokenizer_source =
        scalar<std::string>(g["tokenizer_source"], where + "tokenizer_source", "a string");
    if (*d.tokenizer_source != "base") {
      fail(
          "{}tokenizer_source: \"{}\" is not supported by smelt evolve yet; leave it unset "
          "or use \"base\" (the base model's tokenizer)",
          where, *d.tokenizer_source);
    }
  }
  if (!is_null(g["layer_granularity"])) {
    d.layer_granularity =
        scalar<int>(g["layer_granularity"], where + "layer_granularity", "a whole number");
    if (d.layer_granularity < 0)
      fail("{}layer_granularity: {} is negative; give 0 (one set for all layers) or more", where,
           d.layer_granularity);
  }
  if (!is_null(g["normalize"]))
    d.normalize = scalar<bool>(g["normalize"], where + "normalize", "true or false");
  if (!is_null(g["allow_negative_weights"])) {
    d.allow_negative_weights = scalar<bool>(g["allow_negative_weights"],
                                            where + "allow_negative_weights", "true or false");
  }
  if (!is_null(g["filters"])) {
    const YAML::Node f = g["filters"];
    if (!f.IsSequence()) fail("{}filters: expected a list of tensor name filters", where);
    for (size_t i = 0; i < f.size(); ++i) {
      d.filters.push_back(
          scalar<std::string>(f[i], fmt::format("{}filters[{}]", where, i), "a string"));
    }
  }
  if (!is_null(g["smooth"]))
    d.smooth = scalar<bool>(g["smooth"], where + "smooth", "true or false");

  const bool needs_base = d.merge_method == "ties" || d.merge_method == "dare_ties" ||
                          d.merge_method == "task_arithmetic";
  if (needs_base && !d.base_model)
    fail("{}base_model: missing; {} needs a base model", where, d.merge_method);
  // mergekit-evolve adds a base model that is not among the models as one more source with no
  // parameters: slerp then has three models and linear a model without a weight, which neither
  // method accepts.
  const bool base_apart =
      d.base_model && std::find(d.models.begin(), d.models.end(), *d.base_model) == d.models.end();
  if (base_apart && (d.merge_method == "slerp" || d.merge_method == "linear")) {
    fail(
        "{}base_model: {} takes no separate base model; leave base_model out or list it among "
        "the models",
        where, d.merge_method);
  }
  if (d.merge_method == "slerp") {
    if (d.smooth) fail("{}smooth: slerp genomes cannot be smooth (as in mergekit-evolve)", where);
    if (!d.filters.empty())
      fail("{}filters: slerp genomes cannot have filters (as in mergekit-evolve)", where);
    if (d.models.size() < 2) fail("{}models: slerp needs at least two models", where);
  }
  return d;
}

TaskSpec parse_task(const YAML::Node& t, const std::string& where) {
  TaskSpec s;
  if (t.IsScalar()) {
    s.name = t.Scalar();
  } else if (t.IsMap()) {
    check_keys(t, where + ".", kTaskKeys);
    if (is_null(t["name"])) fail("{}.name: missing; give the task (a JSONL task file)", where);
    s.name = scalar<std::string>(t["name"], where + ".name", "a task name or file");
    if (!is_null(t["weight"]))
      s.weight = scalar<double>(t["weight"], where + ".weight", "a number");
    if (!std::isfinite(s.weight)) fail("{}.weight: give a finite number", where);
    if (!is_null(t["metric"]))
      s.metric = scalar<std::string>(t["metric"], where + ".metric", "a string");
    if (!is_null(t["test"]))
      s.test = scalar<std::string>(t["test"], where + ".test", "a task file");
  } else {
    fail("{}: expected a task name or a mapping {{name, weight, metric, test}}", where);
  }
  if (s.name.empty()) fail("{}.name: empty", where);
  // The metric maps onto what smelt scores: a task file's score counts exact matches of its
  // generation lines and acc hits of its multiple-choice lines (docs/eval.md).
  const size_t comma = s.metric.find(',');
  const std::string metric = s.metric.substr(0, comma);
  const std::string filter = comma == std::string::npos ? "" : s.metric.substr(comma + 1);
  const bool known =
      metric == "acc" || metric == "exact_match" || metric == "score" || metric == "acc_norm";
  if (!known || !(filter.empty() || filter == "none" || filter == "strict-match")) {
    fail(
        "{}.metric: \"{}\" has no counterpart in smelt's task scores; use \"acc,none\" or "
        "\"exact_match,none\" (the task's score: exact matches and multiple-choice hits), or "
        "\"acc_norm,none\" (multiple-choice lines by length-normalised log-likelihood)",
        where, s.metric);
  }
  return s;
}

}  // namespace

const std::vector<std::string>& evolvable_methods() {
  static const std::vector<std::string> methods = {"linear", "task_arithmetic", "ties", "dare_ties",
                                                   "slerp"};
  return methods;
}

EvolveConfig parse_evolve_config(const YAML::Node& root, const std::string& file) {
  if (!root.IsMap()) fail("{}: expected a mapping with genome: and tasks:", file);
  check_keys(root, file + ": ", kTopKeys);
  EvolveConfig c;
  if (is_null(root["genome"])) fail("{}: genome: missing", file);
  c.genome = parse_genome(root["genome"], file);
  const YAML::Node tasks = root["tasks"];
  if (is_null(tasks) || !tasks.IsSequence() || tasks.size() == 0)
    fail("{}: tasks: give a list of tasks, e.g. [{{name: add, weight: 1}}]", file);
  for (size_t i = 0; i < tasks.size(); ++i)
    c.tasks.push_back(parse_task(tasks[i], fmt::format("{}: tasks[{}]", file, i)));
  if (!is_null(root["limit"])) {
    const long long limit = scalar<long long>(root["limit"], file + ": limit", "a whole number");
    if (limit < 1) fail("{}: limit: give 1 or more lines per task", file);
    c.limit = static_cast<size_t>(limit);
  }
  if (!is_null(root["num_fewshot"]) &&
      scalar<long long>(root["num_fewshot"], file + ": num_fewshot", "a whole number") != 0) {
    fail(
        "{}: num_fewshot: smelt's task files hold whole prompts; put the examples into each "
        "prompt and leave num_fewshot unset",
        file);
  }
  if (!is_null(root["shuffle"]) &&
      scalar<bool>(root["shuffle"], file + ": shuffle", "true or false"))
    fail("{}: shuffle: not supported; task lines are scored in file order", file);
  if (!is_null(root["random_init"]))
    c.random_init = scalar<bool>(root["random_init"], file + ": random_init", "true or false");
  // apply_chat_template and fewshot_as_multiturn are lm-evaluation-harness settings: task files
  // are scored as written, so they are read and have no effect.
  for (const char* key : {"apply_chat_template", "fewshot_as_multiturn"})
    if (!is_null(root[key]))
      scalar<bool>(root[key], fmt::format("{}: {}", file, key), "true or false");
  return c;
}

EvolveConfig load_evolve_config(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail("{}: no such genome file", path);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    fail("{}: not valid YAML: {}", path, e.what());
  }
  return parse_evolve_config(root, path);
}

int model_layer_count(const std::string& model) {
  const io::ResolvedModel resolved = io::resolve_model(io::ModelRef::parse(model));
  if (resolved.config_json.empty())
    fail("{}: no config.json, so evolve cannot tell the layer count", model);
  const fs::path config = resolved.config_json;
  std::ifstream in(config);
  if (!in) fail("{}: cannot read this file (the layer count of {})", config.string(), model);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("{}: not valid JSON", config.string());
  for (const nlohmann::json* c : {&j, j.contains("text_config") ? &j["text_config"] : nullptr}) {
    if (!c || !c->is_object()) continue;
    for (const char* key : {"num_hidden_layers", "n_layer", "num_layers"}) {
      if (c->contains(key) && (*c)[key].is_number_unsigned() && (*c)[key].get<int64_t>() > 0 &&
          (*c)[key].get<int64_t>() < 1000000)
        return static_cast<int>((*c)[key].get<int64_t>());
    }
  }
  fail("{}: no num_hidden_layers; evolve needs the layer count", config.string());
}

Genome::Genome(GenomeDefinition definition, int num_layers)
    : definition_(std::move(definition)), num_layers_(num_layers) {
  const int g = definition_.layer_granularity;
  if (num_layers_ < 1) fail("the genome's models have no layers");
  if (g > 0 && num_layers_ % g != 0) {
    fail(
        "genome.layer_granularity: {} does not divide the models' {} layers; use a divisor of "
        "{} (or 0 for one parameter set for all layers)",
        g, num_layers_, num_layers_);
  }
  groups_ = g > 0 ? static_cast<size_t>(num_layers_ / g) : 1;
  const std::string& m = definition_.merge_method;
  if (m == "ties" || m == "dare_ties")
    params_ = {"weight", "density"};
  else if (m == "slerp")
    params_ = {"t"};
  else
    params_ = {"weight"};
}

size_t Genome::dimension() const {
  return groups_ * definition_.models.size() * param_sets() * params_.size();
}

size_t Genome::index(size_t group, size_t model, size_t set, size_t param) const {
  return ((group * definition_.models.size() + model) * param_sets() + set) * params_.size() +
         param;
}

std::vector<std::string> Genome::coordinate_names() const {
  std::vector<std::string> short_names;
  for (size_t m = 0; m < definition_.models.size(); ++m) {
    std::string name = fs::path(definition_.models[m]).filename().string();
    if (name.empty()) name = fs::path(definition_.models[m]).parent_path().filename().string();
    if (std::count(short_names.begin(), short_names.end(), name) || name.empty())
      name = fmt::format("model{}", m);
    short_names.push_back(name);
  }
  std::vector<std::string> names(dimension());
  for (size_t g = 0; g < groups_; ++g)
    for (size_t m = 0; m < definition_.models.size(); ++m)
      for (size_t s = 0; s < param_sets(); ++s)
        for (size_t p = 0; p < params_.size(); ++p) {
          std::string n = fmt::format("g{}.{}.{}", g, short_names[m], params_[p]);
          if (s < definition_.filters.size()) n += "@" + definition_.filters[s];
          names[index(g, m, s, p)] = n;
        }
  return names;
}

std::vector<double> Genome::initial_genotype() const {
  std::vector<double> x(dimension(), 0.0);
  const double w = 1.0 / static_cast<double>(definition_.models.size());
  for (size_t g = 0; g < groups_; ++g)
    for (size_t m = 0; m < definition_.models.size(); ++m)
      for (size_t s = 0; s < param_sets(); ++s)
        for (size_t p = 0; p < params_.size(); ++p) x[index(g, m, s, p)] = p == 0 ? w : 1.0;
  return x;
}

YAML::Node Genome::merge_config(const std::vector<double>& x) const {
  if (x.size() != dimension())
    fail("a genotype of {} values for a genome of {}", x.size(), dimension());
  const auto& d = definition_;
  const size_t n_models = d.models.size();
  const int step = d.layer_granularity > 0 ? d.layer_granularity : num_layers_;
  const bool base_apart =
      d.base_model && std::find(d.models.begin(), d.models.end(), *d.base_model) == d.models.end();
  // The value of a parameter as the merge sees it: |w| unless negative weights are allowed,
  // densities in [0, 1].
  auto value = [&](size_t g, size_t m, size_t s, size_t p) {
    const double v = x[index(g, m, s, p)];
    if (params_[p] == "density") return std::clamp(std::fabs(v), 0.0, 1.0);
    return d.allow_negative_weights ? v : std::fabs(v);
  };
  auto layer_range = [&](size_t g) {
    YAML::Node r(YAML::NodeType::Sequence);
    r.SetStyle(YAML::EmitterStyle::Flow);
    r.push_back(static_cast<int>(g) * step);
    r.push_back(static_cast<int>(g + 1) * step);
    return r;
  };
  // One parameter over the layer groups `groups` (a number, or a gradient when smooth), with a
  // conditional list when the genome has filters.
  auto parameter = [&](size_t m, size_t p, const std::vector<size_t>& groups) {
    auto over_groups = [&](size_t s) {
      if (groups.size() == 1) return number(value(groups[0], m, s, p));
      YAML::Node list(YAML::NodeType::Sequence);
      list.SetStyle(YAML::EmitterStyle::Flow);
      for (size_t g : groups) list.push_back(number(value(g, m, s, p)));
      return list;
    };
    if (param_sets() == 1) return over_groups(0);
    YAML::Node list(YAML::NodeType::Sequence);
    for (size_t s = 0; s < param_sets(); ++s) {
      YAML::Node entry;
      entry["filter"] =
          s < d.filters.size() ? YAML::Node(d.filters[s]) : YAML::Node(YAML::NodeType::Null);
      entry["value"] = over_groups(s);
      list.push_back(entry);
    }
    return list;
  };

  YAML::Node config;
  config["merge_method"] = d.merge_method;
  if (d.merge_method == "slerp") {
    YAML::Node slices(YAML::NodeType::Sequence);
    for (size_t g = 0; g < groups_; ++g) {
      // The two models with the highest raw weight (the lower index first on a tie); t is the
      // second one's share of softmax over the two.
      size_t first = 0;
      for (size_t m = 1; m < n_models; ++m)
        if (x[index(g, m, 0, 0)] > x[index(g, first, 0, 0)]) first = m;
      size_t second = first == 0 ? 1 : 0;
      for (size_t m = 0; m < n_models; ++m)
        if (m != first && x[index(g, m, 0, 0)] > x[index(g, second, 0, 0)]) second = m;
      const double t = 1.0 / (1.0 + std::exp(x[index(g, first, 0, 0)] - x[index(g, second, 0, 0)]));
      YAML::Node slice;
      YAML::Node sources(YAML::NodeType::Sequence);
      for (size_t m : {first, second}) {
        YAML::Node src;
        src["model"] = d.models[m];
        src["layer_range"] = layer_range(g);
        if (d.tokenizer_source) src["parameters"]["weight"] = number(m == first ? 1 - t : t);
        sources.push_back(src);
      }
      if (base_apart) {
        YAML::Node src;
        src["model"] = *d.base_model;
        src["layer_range"] = layer_range(g);
        sources.push_back(src);
      }
      slice["sources"] = sources;
      slice["base_model"] = d.models[first];
      slice["parameters"]["t"] = number(t);
      slices.push_back(slice);
    }
    config["slices"] = slices;
  } else if (d.smooth) {
    std::vector<size_t> all(groups_);
    for (size_t g = 0; g < groups_; ++g) all[g] = g;
    YAML::Node models(YAML::NodeType::Sequence);
    for (size_t m = 0; m < n_models; ++m) {
      YAML::Node entry;
      entry["model"] = d.models[m];
      for (size_t p = 0; p < params_.size(); ++p)
        entry["parameters"][params_[p]] = parameter(m, p, all);
      models.push_back(entry);
    }
    if (base_apart) {
      YAML::Node entry;
      entry["model"] = *d.base_model;
      models.push_back(entry);
    }
    config["models"] = models;
  } else {
    YAML::Node slices(YAML::NodeType::Sequence);
    for (size_t g = 0; g < groups_; ++g) {
      YAML::Node sources(YAML::NodeType::Sequence);
      for (size_t m = 0; m < n_models; ++m) {
        YAML::Node src;
        src["model"] = d.models[m];
        src["layer_range"] = layer_range(g);
        for (size_t p = 0; p < params_.size(); ++p)
          src["parameters"][params_[p]] = parameter(m, p, {g});
        sources.push_back(src);
      }
      if (base_apart) {
        YAML::Node src;
        src["model"] = *d.base_model;
        src["layer_range"] = layer_range(g);
        sources.push_back(src);
      }
      YAML::Node slice;
      slice["sources"] = sources;
      slices.push_back(slice);
    }
    config["slices"] = slices;
  }
  const bool normalize = d.normalize.value_or(
      d.merge_method == "ties" || d.merge_method == "dare_ties" || d.merge_method == "linear");
  config["parameters"]["normalize"] = normalize;
  config["parameters"]["int8_mask"] = true;
  config["dtype"] = "bfloat16";
  if (d.base_model) config["base_model"] = *d.base_model;
  if (d.tokenizer_source) config["tokenizer_source"] = *d.tokenizer_source;
  return config;
}

std::string config_yaml_text(const YAML::Node& config) {
  YAML::Emitter out;
  out << config;
  return std::string(out.c_str()) + "\n";
}

}  // namespace smelt::search
