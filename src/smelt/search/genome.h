// mergekit-evolve's genome configs (docs/evolve.md): the YAML file `smelt evolve` reads, the
// genotype it defines (a real vector of shape [layer groups, models, filters + 1, parameters])
// and the mergekit merge config each genotype stands for.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace smelt::search {

// The methods a genome can vary, in mergekit-evolve's order.
const std::vector<std::string>& evolvable_methods();

// The `genome:` section.
struct GenomeDefinition {
  std::vector<std::string> models;
  std::string merge_method;
  std::optional<std::string> base_model;
  std::optional<std::string> tokenizer_source;
  int layer_granularity = 0;      // 0: one parameter set for all layers
  std::optional<bool> normalize;  // unset: true for linear, ties and dare_ties
  bool allow_negative_weights = false;
  std::vector<std::string> filters;
  bool smooth = false;
};

// One entry of `tasks:`.
struct TaskSpec {
  std::string name;
  double weight = 1.0;
  std::string metric = "acc,none";
  std::optional<std::string> test;  // smelt's addition: the held-out file of this task
};

// The whole genome file (mergekit-evolve's EvolMergeConfiguration).
struct EvolveConfig {
  GenomeDefinition genome;
  std::vector<TaskSpec> tasks;
  std::optional<size_t> limit;
  bool random_init = false;
};

// Parses a genome file's YAML. Throws smelt::Error naming `file` and the key for an unknown
// key, a wrong type, a method evolve cannot vary (listing those it can), a method that needs a
// base model without one, slerp with smooth or filters, a tokenizer_source smelt cannot honour,
// and settings of lm-evaluation-harness that smelt's task files cannot follow.
EvolveConfig parse_evolve_config(const YAML::Node& root, const std::string& file);
EvolveConfig load_evolve_config(const std::string& path);

// The layer count of a model reference (a folder, or a Hub id in the local cache): config.json's
// num_hidden_layers, or its text model's. Throws smelt::Error naming the model when unknown.
int model_layer_count(const std::string& model);

// The genotype's shape and its translation into merge configs.
class Genome {
 public:
  // Throws smelt::Error when layer_granularity does not divide `num_layers`.
  Genome(GenomeDefinition definition, int num_layers);

  size_t layer_groups() const { return groups_; }
  size_t param_sets() const { return definition_.filters.size() + 1; }
  // "weight" (linear, task_arithmetic, slerp's ranking), "weight" and "density" (ties family).
  const std::vector<std::string>& param_names() const { return params_; }
  size_t dimension() const;
  // Index of [group][model][set][param] in the flat genotype.
  size_t index(size_t group, size_t model, size_t set, size_t param) const;
  // A readable name per coordinate: "g0.ft-add.weight", "g1.ft-rev.density@mlp".
  std::vector<std::string> coordinate_names() const;

  // mergekit-evolve's starting point: weights 1/models, densities 1.
  std::vector<double> initial_genotype() const;

  // The merge config a genotype stands for (as mergekit-evolve writes it: slices per layer
  // group, or `models:` with gradients when smooth; int8_mask true, dtype bfloat16).
  YAML::Node merge_config(const std::vector<double>& genotype) const;

  const GenomeDefinition& definition() const { return definition_; }
  int num_layers() const { return num_layers_; }

 private:
  GenomeDefinition definition_;
  int num_layers_;
  size_t groups_;
  std::vector<std::string> params_;
};

// YAML text of a merge config with every number written so that it reads back to the same
// double.
std::string config_yaml_text(const YAML::Node& config);

}  // namespace smelt::search
