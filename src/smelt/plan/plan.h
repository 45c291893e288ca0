// The merge plan: one job per output tensor (inputs, method, resolved parameters, output name,
// dtype and shape), built from the config, config.json files and safetensors headers only, so
// every mistake in a config surfaces before any tensor data is read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "smelt/config/config.h"
#include "smelt/dtype.h"
#include "smelt/io/model_ref.h"
#include "smelt/methods/method.h"
#include "smelt/plan/architecture.h"

namespace smelt::plan {

// One input tensor of a job.
struct JobInput {
  size_t model = 0;        // index into Plan::models
  std::string tensor;      // name in that model (differs from the output name in frankenmerges)
  io::ModelTensor source;  // its shape may exceed the job's (embeddings cropped to a common block)
  // >0: rows are read in llama.cpp's Q/K order for this many heads (HF -> GGUF export).
  int64_t permute_heads = 0;
};

// One output tensor and how to compute it.
struct TensorJob {
  std::string name;
  DType dtype = DType::kF32;  // output dtype
  std::vector<uint64_t> shape;
  std::vector<JobInput> inputs;
  const methods::Method* method = nullptr;  // the config's method, or passthrough for tensors
                                            // copied from the base (e.g. vision towers)
  int base = -1;                            // index into inputs of the base model, or -1
  // GGUF output: the ggml type written (may be block-quantized); -1 for safetensors output.
  int32_t ggml_type = -1;
  bool copy = false;  // copy inputs[0]'s bytes unchanged (non-float tensors)
  // Values computed by the planner rather than merged (e.g. GGUF's rope_freqs.weight); no inputs.
  std::shared_ptr<const std::vector<float>> constant;
  // Added to every merged value before it is written (GGUF export of gemma2's norms, 1 + w).
  float value_offset = 0.0f;
  // GGUF export of a mixture of experts: this job is slice `pack_index` of the 3-D tensor `name`
  // that stacks `pack_count` experts' matrices (ffn_gate_exps, ...); -1 for a tensor of its own.
  int pack_index = -1;
  int pack_count = 0;
  bool is_embedding = false;
  double t = 0;  // gradient position
  methods::ResolvedParams params;
  // Identical jobs are computed once: the first lists the others, which point back to it.
  std::vector<size_t> duplicates;
  int duplicate_of = -1;
  // Where each resolved value came from ("models[1].parameters.weight", "default").
  std::map<std::string, std::string> global_origin;
  std::vector<std::map<std::string, std::string>> model_origin;

  uint64_t numel() const;
  uint64_t output_bytes() const;
  methods::TensorContext context(uint64_t seed) const;
};

enum class OutputFormat { kAuto, kSafetensors, kGguf };

// What to do with tensors only some raw (config-less) input files have.
enum class TensorSetMode { kError, kIntersection, kUnion };

// A model known by name rather than by path: the output of an earlier stage of a multi-stage
// recipe, computed tensor by tensor when read.
struct NamedModel {
  std::shared_ptr<io::Model> model;
  std::string config_text;
};

struct PlanOptions {
  std::map<std::string, NamedModel> named_models;  // recipe stage name -> its output
  uint64_t seed = 0;
  uint64_t shard_size = 5'000'000'000;
  bool allow_crimes = false;  // allow models of different architectures
  // Task-vector methods: leave out (with a warning) a model whose non-embedding tensor differs in
  // shape from the base's, instead of failing.
  bool allow_shape_mismatch = false;
  TensorSetMode tensor_set = TensorSetMode::kError;
  // Output file format; kAuto = GGUF when the inputs are GGUF models, else safetensors.
  OutputFormat format = OutputFormat::kAuto;
  // GGUF output types: per-tensor regex overrides (first match wins), then one type for all
  // tensors of two or more dimensions; unset = each tensor's input type (GGUF inputs) or the
  // converter's default (safetensors inputs).
  std::vector<std::pair<std::string, std::string>> gguf_tensor_types;  // regex, type name
  std::string gguf_out_type;
};

// A loaded model taking part in the merge.
struct PlanModel {
  std::string ref;  // canonical reference string
  std::shared_ptr<io::Model> model;
  std::string config_text;  // config.json text, empty when absent
  ArchitectureInfo arch;
  bool stage = false;  // the output of an earlier recipe stage (not a file)
  bool gguf = false;   // a GGUF model (tensor names blk.N.*, metadata instead of config.json)
};

struct Plan {
  config::MergeConfig config;
  const methods::Method* method = nullptr;
  std::vector<PlanModel> models;
  int base_model = -1;  // index into models, or -1
  size_t donor = 0;     // model whose config.json and tokenizer are used
  std::vector<TensorJob> jobs;
  // Layer count written to the output config.json (slices only; -1 = keep the donor's).
  int64_t output_layers = -1;
  std::string layer_count_key;
  // `modules:` configs: each sliced module's layer-count config key and its output layer count.
  std::vector<std::pair<std::string, int64_t>> module_layer_counts;
  // Vocabulary size written to config.json when embeddings were cropped (-1 = keep).
  int64_t output_vocab = -1;
  bool raw = false;  // inputs are bare tensor files (no config.json): tensors merged by name
  bool gguf_output = false;  // write one GGUF file instead of a safetensors folder
  bool gguf_export = false;  // ... converted from safetensors models (names mapped, Q/K permuted)
  std::string gguf_arch;     // the GGUF architecture of an export
  std::vector<std::string> warnings;
  // Mixture-of-experts assembly (docs/moe.md) writes its own config.json, records its config as
  // mergekit_moe_config.yml and writes its own model card; empty = the usual files.
  std::string output_config_text;
  std::string recorded_config_name = "mergekit_config.yml";
  std::string model_card_text;
  // The config's chat_template resolved to its text (plan/chat_template.h); unset: the donor's
  // tokenizer files are copied as they are.
  std::optional<std::string> chat_template;
  // A merged tokenizer (`tokenizer_source` / `tokenizer:`, docs/tokenizer-merge.md): the files
  // written instead of the donor's; the embeddings' inputs are then computed tensors (below).
  struct OutputTokenizer {
    std::string tokenizer_json;
    std::string tokenizer_config_json;    // "" when the source has none
    std::filesystem::path source_folder;  // special_tokens_map.json etc. are copied from here
    size_t tokens = 0;                    // real vocabulary size (before padding)
    size_t added = 0;                     // tokens beyond the source tokenizer's
    bool edited = false;  // false: the source's tokenizer files are copied unchanged
  };
  std::optional<OutputTokenizer> output_tokenizer;
  // Owners of computed input tensors (embeddings permuted to the output vocabulary) that jobs'
  // inputs point into.
  std::vector<std::shared_ptr<const io::TensorFile>> computed_files;

  uint64_t output_bytes() const;
  uint64_t input_bytes() const;  // bytes read from inputs (each input tensor once)
};

// Builds and validates the plan. Throws smelt::Error naming the YAML path, model, or tensor.
Plan build_plan(const config::MergeConfig& config, const PlanOptions& options);

}  // namespace smelt::plan
