// Mixture-of-experts assembly plan (docs/moe.md).
#include "smelt/plan/moe_plan.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "smelt/error.h"
#include "smelt/kernels/random.h"
#include "smelt/methods/method.h"
#include "smelt/plan/model_config.h"

namespace smelt::plan {
namespace {

using ordered_json = nlohmann::ordered_json;

// An expert's tensor with Gaussian noise added, then scaled: (x + noise_scale * N(0, 1)) * scale
// (docs/moe.md). The noise of element i is a pure function of (--random-seed, output tensor name,
// i), so the output does not depend on the thread count.
class NoisyExpertMerger : public methods::TensorMerger {
 public:
  NoisyExpertMerger(uint64_t key, float noise, float scale)
      : key_(key), noise_(noise), scale_(scale) {}
  void merge(const methods::Chunk& chunk, float* out) override {
    const float* in = chunk.inputs[0];
    for (size_t i = 0; i < chunk.n; ++i) {
      out[i] = (in[i] + noise_ * kernels::random_normal(key_, chunk.offset + i)) * scale_;
    }
  }

 private:
  uint64_t key_;
  float noise_, scale_;
};

class NoisyExpert : public methods::Method {
 public:
  std::string_view name() const override { return "moe_expert_noise"; }
  std::string_view pretty_name() const override { return "MoE expert with noise"; }
  std::string_view reference_url() const override { return ""; }
  std::vector<methods::ParamSpec> model_params() const override {
    return {{"scale", 1.0, "multiply the tensor by this factor (residual_scale)"},
            {"noise_scale", 0.0, "std of the Gaussian noise added before scaling"}};
  }
  std::unique_ptr<methods::TensorMerger> begin(const methods::TensorContext& ctx) const override {
    const auto& p = ctx.params->per_model.at(0);
    return std::make_unique<NoisyExpertMerger>(
        kernels::stream_key(ctx.seed, ctx.name, /*salt=*/0x401e),
        static_cast<float>(p.at("noise_scale")), static_cast<float>(p.at("scale")));
  }
};

const NoisyExpert kNoisyExpert;

// The config.json values an expert must share with the base.
struct DenseShape {
  std::string model_type;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t layers = 0;
  std::optional<DType> torch_dtype;
  ordered_json json;
};

DenseShape read_shape(const PlanModel& m, const std::string& path) {
  if (m.config_text.empty()) {
    fail("{}: {} has no config.json; MoE assembly needs each model's config", path, m.ref);
  }
  DenseShape s;
  try {
    s.json = ordered_json::parse(m.config_text);
  } catch (const std::exception& e) {
    fail("{}: {}: config.json is not valid JSON ({})", path, m.ref, e.what());
  }
  if (!s.json.is_object()) fail("{}: {}: config.json is not a JSON object", path, m.ref);
  auto integer = [&](const char* key) -> int64_t {
    auto it = s.json.find(key);
    if (it == s.json.end() || !it->is_number_integer() || it->get<int64_t>() <= 0) {
      fail("{}: {}: config.json has no positive integer '{}'", path, m.ref, key);
    }
    return it->get<int64_t>();
  };
  if (auto it = s.json.find("model_type"); it != s.json.end() && it->is_string()) {
    s.model_type = it->get<std::string>();
  }
  if (s.model_type != "llama" && s.model_type != "mistral" && s.model_type != "qwen2" &&
      s.model_type != "qwen3") {
    fail(
        "{}: {}: model_type \"{}\" is not an input any MoE output takes (Mixtral and DeepSeek "
        "MoE take llama or mistral, Qwen MoE also qwen2, Qwen3 MoE qwen3)",
        path, m.ref, s.model_type.empty() ? "(none)" : s.model_type);
  }
  s.hidden = integer("hidden_size");
  s.intermediate = integer("intermediate_size");
  s.layers = integer("num_hidden_layers");
  if (auto it = s.json.find("torch_dtype"); it != s.json.end() && it->is_string()) {
    s.torch_dtype = parse_torch_dtype(it->get<std::string>());
  }
  return s;
}

std::string mlp_name(int64_t layer, const char* proj) {
  return fmt::format("model.layers.{}.mlp.{}.weight", layer, proj);
}

bool is_random(const config::MoeConfig& c) {
  return c.gate_mode == "random" || c.gate_mode == "uniform_random";
}

// Why `family` cannot be written for these models and this config ("" = it can), by mergekit's
// rules (docs/moe.md, "Output architectures").
std::string unsupported_because(config::MoeOutput family, const config::MoeConfig& c,
                                const std::string& model_type) {
  using config::MoeOutput;
  const bool llama = model_type == "llama" || model_type == "mistral";
  const size_t shared = c.shared_experts.size();
  switch (family) {
    case MoeOutput::kMixtral:
      if (shared) return "it has no shared expert";
      if (!llama) return "it takes llama or mistral models";
      return "";
    case MoeOutput::kDeepseek:
      if (shared && (!c.shared_experts[0].positive_prompts.empty() ||
                     !c.shared_experts[0].negative_prompts.empty()))
        return "its shared expert is not gated, so shared_experts[0] takes no prompts";
      if (!llama) return "it takes llama or mistral models";
      return "";
    case MoeOutput::kQwen2:
      if (shared != 1) return "it needs exactly one shared expert (shared_experts)";
      if (!is_random(c) && c.shared_experts[0].positive_prompts.empty())
        return fmt::format(
            "its shared expert's gate needs shared_experts[0].positive_prompts with gate_mode {}",
            c.gate_mode);
      if (!llama && model_type != "qwen2") return "it takes llama, mistral or qwen2 models";
      return "";
    case MoeOutput::kQwen3:
      if (shared) return "it has no shared expert";
      if (model_type != "qwen3") return "it takes qwen3 models";
      return "";
  }
  return "unknown family";
}

class MoePlanner {
 public:
  MoePlanner(const config::MoeConfig& cfg, const MoePlanOptions& options)
      : cfg_(cfg), options_(options) {}

  Plan build() {
    plan_.config.yaml_text = cfg_.yaml_text;
    plan_.method = methods::find_method("passthrough");
    plan_.recorded_config_name = "mergekit_moe_config.yml";
    const size_t base = open("base_model", cfg_.base_model);
    plan_.base_model = static_cast<int>(base);
    plan_.donor = base;
    const DenseShape shape = read_shape(plan_.models[base], "base_model");
    // Every expert, then the shared expert, must have the base's shape.
    auto open_expert = [&](const std::string& path, const std::string& ref) {
      const size_t m = open(path, ref);
      const DenseShape s = read_shape(plan_.models[m], path);
      auto differs = [&](const char* what, const auto& mine, const auto& theirs) {
        fail("{}: {} has {} {} but base_model {} has {}; experts must match the base", path,
             plan_.models[m].ref, what, mine, plan_.models[base].ref, theirs);
      };
      if (s.model_type != shape.model_type) differs("model_type", s.model_type, shape.model_type);
      if (s.hidden != shape.hidden) differs("hidden_size", s.hidden, shape.hidden);
      if (s.intermediate != shape.intermediate) {
        differs("intermediate_size", s.intermediate, shape.intermediate);
      }
      if (s.layers != shape.layers) differs("num_hidden_layers", s.layers, shape.layers);
      return m;
    };
    std::vector<size_t> experts;
    for (size_t i = 0; i < cfg_.experts.size(); ++i) {
      experts.push_back(
          open_expert(fmt::format("experts[{}].source_model", i), cfg_.experts[i].source_model));
    }
    std::optional<size_t> shared;
    if (!cfg_.shared_experts.empty()) {
      shared = open_expert("shared_experts[0].source_model", cfg_.shared_experts[0].source_model);
    }
    if (!options_.allow_same_model && experts.size() > 1 &&
        std::all_of(experts.begin(), experts.end(), [&](size_t m) { return m == experts[0]; })) {
      fail(
          "experts: every expert is the same model ({}); an MoE of identical experts is not "
          "useful without training; pass --i-understand-this-is-not-useful-without-training to "
          "build it anyway",
          plan_.models[experts[0]].ref);
    }
    family_ = select_family(shape.model_type);
    const bool mixtral = family_ == config::MoeOutput::kMixtral;
    const bool qwen2 = family_ == config::MoeOutput::kQwen2;
    const std::optional<DType> out_dtype = cfg_.dtype ? cfg_.dtype : shape.torch_dtype;

    // Non-MLP tensors of the base, under their own names.
    static const std::regex kMlp(R"(^model\.layers\.(\d+)\.mlp\.(.*)$)");
    for (const io::ModelTensor& t : plan_.models[base].model->tensors()) {
      std::smatch match;
      const std::string& name = t.info->name;
      if (std::regex_match(name, match, kMlp)) {
        const std::string rest = match[2].str();
        if (rest != "gate_proj.weight" && rest != "up_proj.weight" && rest != "down_proj.weight") {
          fail(
              "base_model: {} has MLP tensor '{}', which the {} layout has no place for "
              "(not supported yet)",
              plan_.models[base].ref, name, config::moe_output_name(family_));
        }
        continue;
      }
      if (qwen2 && name.ends_with(".self_attn.o_proj.bias")) {
        fail("base_model: {} has '{}'; Qwen2-MoE's attention has no o_proj bias",
             plan_.models[base].ref, name);
      }
      add_copy(name, base, name, out_dtype, 1.0, 0.0, "base_model");
    }
    // Qwen2-MoE's attention has q/k/v biases; a base without them gets zeros (as mergekit).
    if (qwen2) {
      for (int64_t layer = 0; layer < shape.layers; ++layer) {
        for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
          const std::string w = fmt::format("model.layers.{}.self_attn.{}.weight", layer, proj);
          const std::string bias = fmt::format("model.layers.{}.self_attn.{}.bias", layer, proj);
          if (plan_.models[base].model->find(bias).info) continue;
          const io::ModelTensor t = plan_.models[base].model->find(w);
          if (!t.info || t.info->shape.size() != 2) {
            fail("base_model: {} has no 2-D tensor '{}'", plan_.models[base].ref, w);
          }
          add_zeros(bias, t.info->shape[0], out_dtype);
        }
      }
    }
    // Per layer: the router, then each expert's MLP, then the shared expert's.
    const int64_t n_experts = static_cast<int64_t>(experts.size());
    const auto ih = std::vector<uint64_t>{static_cast<uint64_t>(shape.intermediate),
                                          static_cast<uint64_t>(shape.hidden)};
    const auto hi = std::vector<uint64_t>{ih[1], ih[0]};
    // The rows of options_.gate_vectors per layer: the experts', then the shared expert's.
    const int64_t rows = n_experts + (gated_shared() ? 1 : 0);
    auto add_mlp = [&](const std::string& out, size_t model, const config::MoeExpert& x,
                       int64_t layer, const std::string& path, bool mixtral_names) {
      const double residual = x.residual_scale.value_or(1.0);
      const double noise = x.noise_scale.value_or(0.0);
      add_copy(out + (mixtral_names ? "w1.weight" : "gate_proj.weight"), model,
               mlp_name(layer, "gate_proj"), out_dtype, 1.0, noise, path, &ih);
      add_copy(out + (mixtral_names ? "w3.weight" : "up_proj.weight"), model,
               mlp_name(layer, "up_proj"), out_dtype, 1.0, noise, path, &ih);
      add_copy(out + (mixtral_names ? "w2.weight" : "down_proj.weight"), model,
               mlp_name(layer, "down_proj"), out_dtype, residual, noise, path, &hi);
    };
    for (int64_t layer = 0; layer < shape.layers; ++layer) {
      const std::string prefix =
          fmt::format("model.layers.{}.{}.", layer, mixtral ? "block_sparse_moe" : "mlp");
      add_router(prefix + "gate.weight", layer, 0, n_experts, rows, shape.hidden, out_dtype);
      for (size_t e = 0; e < experts.size(); ++e) {
        add_mlp(fmt::format("{}experts.{}.", prefix, e), experts[e], cfg_.experts[e], layer,
                fmt::format("experts[{}].source_model", e), mixtral);
      }
      if (shared) {
        add_mlp(prefix + (qwen2 ? "shared_expert." : "shared_experts."), *shared,
                cfg_.shared_experts[0], layer, "shared_experts[0].source_model", false);
      }
      if (qwen2) {
        add_router(prefix + "shared_expert_gate.weight", layer, n_experts, 1, rows, shape.hidden,
                   out_dtype);
      }
    }
    if ((n_experts & (n_experts - 1)) != 0) {
      plan_.warnings.push_back(fmt::format(
          "experts: {} experts is not a power of 2; llama.cpp may not load the model", n_experts));
    }
    plan_.output_config_text = output_config(shape, n_experts);
    plan_.model_card_text = card();
    return std::move(plan_);
  }

  config::MoeOutput family() const { return family_; }

  // Whether the shared expert has a router row computed from its prompts (the Qwen MoE gate).
  bool gated_shared() const {
    return !cfg_.shared_experts.empty() && !is_random(cfg_) &&
           !cfg_.shared_experts[0].positive_prompts.empty();
  }

 private:
  size_t open(const std::string& path, const std::string& ref) {
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (plan_.models[i].ref == ref) return i;
    }
    PlanModel pm;
    pm.ref = ref;
    try {
      pm.model = io::Model::open(ref);
    } catch (const Error& e) {
      fail("{}: {}", path, e.what());
    }
    if (pm.model->files().empty() || pm.model->tensors().empty()) {
      fail("{}: {} has no tensors", path, ref);
    }
    pm.config_text = model_config_text(*pm.model);
    std::vector<std::string> names;
    for (const auto& t : pm.model->tensors()) names.push_back(t.info->name);
    pm.arch = infer_architecture(names, pm.config_text);
    // The same folder (and LoRA adapter) named twice (different spellings) is one model.
    auto where = [](const io::ResolvedModel& r) {
      return std::make_pair(
          std::filesystem::weakly_canonical(r.root),
          r.lora_dir.empty() ? r.lora_dir : std::filesystem::weakly_canonical(r.lora_dir));
    };
    const auto here = where(pm.model->resolved());
    for (size_t i = 0; i < plan_.models.size(); ++i) {
      if (where(plan_.models[i].model->resolved()) == here) return i;
    }
    plan_.models.push_back(std::move(pm));
    return plan_.models.size() - 1;
  }

  void add_copy(const std::string& out_name, size_t model, const std::string& tensor,
                std::optional<DType> out_dtype, double scale, double noise, const std::string& path,
                const std::vector<uint64_t>* want_shape = nullptr) {
    TensorJob job;
    job.name = out_name;
    JobInput in;
    in.model = model;
    in.tensor = tensor;
    in.source = plan_.models[model].model->find(tensor);
    if (!in.source.info) fail("{}: {} has no tensor '{}'", path, plan_.models[model].ref, tensor);
    if (want_shape && in.source.info->shape != *want_shape) {
      fail("{}: {}: tensor '{}' has shape [{}] but the config.json sizes say [{}]", path,
           plan_.models[model].ref, tensor, fmt::join(in.source.info->shape, ", "),
           fmt::join(*want_shape, ", "));
    }
    job.shape = in.source.info->shape;
    job.is_embedding = plan_.models[model].arch.is_embedding(tensor);
    job.inputs.push_back(in);
    const io::TensorInfo& info = *in.source.info;
    if (!info.quantized() && !dtype_is_convertible_float(info.dtype)) {
      if (scale != 1.0)
        fail("{}: tensor '{}' is not floating point; it cannot be scaled", path, tensor);
      job.copy = true;
      job.dtype = info.dtype;
    } else {
      job.method = noise != 0.0 ? &kNoisyExpert : plan_.method;
      job.dtype = out_dtype ? *out_dtype : info.quantized() ? DType::kF16 : info.dtype;
      job.params.per_model.resize(1);
      job.params.per_model[0]["scale"] = scale;
      if (noise != 0.0) job.params.per_model[0]["noise_scale"] = noise;
      job.model_origin.resize(1);
      job.model_origin[0]["scale"] =
          scale == 1.0 ? "copied" : path.substr(0, path.find('.')) + ".residual_scale";
    }
    plan_.jobs.push_back(std::move(job));
  }

  // The first family `architecture:` allows that takes these models, Mixtral first (mergekit's
  // choice); a note when another family would also do.
  config::MoeOutput select_family(const std::string& model_type) {
    std::vector<std::string> refused;
    std::vector<config::MoeOutput> ok;
    for (const config::MoeOutput f : cfg_.allowed_outputs) {
      const std::string why = unsupported_because(f, cfg_, model_type);
      if (why.empty()) {
        ok.push_back(f);
      } else {
        refused.push_back(fmt::format("{}: {}", config::moe_output_name(f), why));
      }
    }
    if (ok.empty()) {
      fail(
          "{}: no output architecture takes this config (model_type {}, {} shared expert{}{}): "
          "{}",
          cfg_.architecture.empty() ? "shared_experts" : "architecture", model_type,
          cfg_.shared_experts.size(), cfg_.shared_experts.size() == 1 ? "" : "s",
          cfg_.architecture.empty() ? "" : fmt::format(", architecture \"{}\"", cfg_.architecture),
          fmt::join(refused, "; "));
    }
    if (ok.size() > 1 && ok[0] != config::MoeOutput::kMixtral) {
      std::vector<std::string> names;
      for (const auto f : ok) names.push_back(config::moe_output_name(f));
      plan_.warnings.push_back(fmt::format(
          "architecture: {} all take this config; writing {} (set architecture: to choose)",
          fmt::join(names, ", "), names[0]));
    }
    return ok[0];
  }

  // A tensor of zeros (the Qwen2-MoE q/k/v biases a llama or mistral base lacks).
  void add_zeros(const std::string& name, uint64_t n, std::optional<DType> out_dtype) {
    TensorJob job;
    job.name = name;
    job.shape = {n};
    job.dtype = out_dtype ? *out_dtype : DType::kF32;
    job.constant = std::make_shared<std::vector<float>>(static_cast<size_t>(n), 0.0f);
    plan_.jobs.push_back(std::move(job));
  }

  // Router rows [first, first + count) of a layer: rows of options_.gate_vectors (a prompt gate
  // mode; `rows` per layer there), or random values keyed by the tensor's name.
  void add_router(const std::string& name, int64_t layer, int64_t first, int64_t count,
                  int64_t rows, int64_t hidden, std::optional<DType> out_dtype) {
    TensorJob job;
    job.name = name;
    job.shape = {static_cast<uint64_t>(count), static_cast<uint64_t>(hidden)};
    job.dtype = out_dtype ? *out_dtype : DType::kF32;
    auto values = std::make_shared<std::vector<float>>(static_cast<size_t>(count * hidden));
    const uint64_t key = kernels::stream_key(options_.seed, name, /*salt=*/0x6a7e);
    if (cfg_.gate_mode == "random") {
      for (size_t i = 0; i < values->size(); ++i) (*values)[i] = kernels::random_normal(key, i);
    } else if (cfg_.gate_mode != "uniform_random") {  // prompt modes: rows computed beforehand
      if (const std::vector<float>* g = options_.gate_vectors) {
        const size_t per_layer = static_cast<size_t>(rows * hidden);
        const size_t from =
            static_cast<size_t>(layer) * per_layer + static_cast<size_t>(first * hidden);
        if (g->size() < static_cast<size_t>(layer + 1) * per_layer)
          fail("internal: {} router values for {} layers of {} × {}", g->size(), layer + 1, rows,
               hidden);
        std::copy(g->begin() + static_cast<ptrdiff_t>(from),
                  g->begin() + static_cast<ptrdiff_t>(from + values->size()), values->begin());
      }
    } else {  // uniform_random: U(-1/sqrt(h), 1/sqrt(h))
      const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hidden)));
      for (size_t i = 0; i < values->size(); ++i) {
        (*values)[i] = (2.0f * kernels::random_uniform(key, i) - 1.0f) * bound;
      }
    }
    job.constant = std::move(values);
    plan_.jobs.push_back(std::move(job));
  }

  // config.json of the output: the base's, with the family's keys (docs/moe.md).
  std::string output_config(const DenseShape& base, int64_t experts) const {
    ordered_json j = base.json;
    const int64_t I = base.intermediate;
    switch (family_) {
      case config::MoeOutput::kMixtral:
        j["architectures"] = ordered_json::array({"MixtralForCausalLM"});
        j["model_type"] = "mixtral";
        j["num_local_experts"] = experts;
        j["num_experts_per_tok"] = cfg_.experts_per_token;
        j["intermediate_size"] = I;
        j["sliding_window"] = nullptr;
        break;
      case config::MoeOutput::kDeepseek:
        j["architectures"] = ordered_json::array({"DeepseekForCausalLM"});
        j["model_type"] = "deepseek";
        j["n_routed_experts"] = experts;
        j["n_shared_experts"] =
            cfg_.shared_experts.empty() ? ordered_json(nullptr) : ordered_json(1);
        j["num_experts_per_tok"] = cfg_.experts_per_token;
        j["first_k_dense_replace"] = 0;
        j["moe_layer_freq"] = 1;
        j["scoring_func"] = "softmax";
        j["norm_topk_prob"] = true;
        j["moe_intermediate_size"] = I;
        j["auto_map"] = {
            {"AutoConfig",
             "deepseek-ai/deepseek-moe-16b-base--configuration_deepseek.DeepseekConfig"},
            {"AutoModel", "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekModel"},
            {"AutoModelForCausalLM",
             "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM"}};
        break;
      case config::MoeOutput::kQwen2:
        j["architectures"] = ordered_json::array({"Qwen2MoeForCausalLM"});
        j["model_type"] = "qwen2_moe";
        j["num_experts"] = experts;
        j["num_experts_per_tok"] = cfg_.experts_per_token;
        j["decoder_sparse_step"] = 1;
        j["norm_topk_prob"] = true;
        j["sliding_window"] = nullptr;
        j["use_sliding_window"] = false;
        j["moe_intermediate_size"] = I;
        j["shared_expert_intermediate_size"] = I;
        if (!j.contains("mlp_only_layers")) j["mlp_only_layers"] = ordered_json::array();
        if (!j.contains("qkv_bias")) j["qkv_bias"] = true;
        break;
      case config::MoeOutput::kQwen3:
        j["architectures"] = ordered_json::array({"Qwen3MoeForCausalLM"});
        j["model_type"] = "qwen3_moe";
        j["num_experts"] = experts;
        j["num_experts_per_tok"] = cfg_.experts_per_token;
        j["decoder_sparse_step"] = 1;
        j["norm_topk_prob"] = true;
        j["moe_intermediate_size"] = I;
        if (!j.contains("mlp_only_layers")) j["mlp_only_layers"] = ordered_json::array();
        break;
    }
    if (family_ != config::MoeOutput::kDeepseek) {
      if (!j.contains("output_router_logits")) j["output_router_logits"] = false;
      if (!j.contains("router_aux_loss_coef")) j["router_aux_loss_coef"] = 0.001;
    }
    if (cfg_.dtype) {
      const std::string name(torch_dtype_name(*cfg_.dtype));
      j["torch_dtype"] = name;
      if (j.contains("dtype")) j["dtype"] = name;
    }
    return j.dump(2) + "\n";
  }

  std::string card() const {
    std::string s =
        "---\nlibrary_name: transformers\ntags:\n- moe\n- merge\n- mergekit\n- smelt\n---\n";
    s += fmt::format(
        "# Mixture of experts\n\nThis is a {} mixture of experts assembled with smelt "
        "(mergekit-moe compatible) from dense models. {}\n\n## Models\n\n- base (attention, "
        "norms, embeddings): {}\n",
        config::moe_output_name(family_),
        cfg_.gate_mode == "random"
            ? "Its router is random (N(0, 1)); it needs training before the routing means "
              "anything."
        : cfg_.gate_mode == "uniform_random"
            ? "Its router is uniform random (U(-1/sqrt(hidden), 1/sqrt(hidden))); it needs "
              "training before the routing means anything."
            : fmt::format("Its router rows come from each expert's prompts (gate_mode {}).",
                          cfg_.gate_mode),
        cfg_.base_model);
    for (size_t i = 0; i < cfg_.experts.size(); ++i) {
      s += fmt::format("- expert {}: {}\n", i, cfg_.experts[i].source_model);
    }
    for (const auto& x : cfg_.shared_experts) {
      s += fmt::format("- shared expert: {}\n", x.source_model);
    }
    s += fmt::format("\n## Configuration\n\n```yaml\n{}{}```\n", cfg_.yaml_text,
                     cfg_.yaml_text.ends_with('\n') ? "" : "\n");
    return s;
  }

  const config::MoeConfig& cfg_;
  const MoePlanOptions& options_;
  Plan plan_;
  config::MoeOutput family_ = config::MoeOutput::kMixtral;
};

}  // namespace

Plan build_moe_plan(const config::MoeConfig& config, const MoePlanOptions& options,
                    config::MoeOutput* family) {
  MoePlanner planner(config, options);
  Plan plan = planner.build();
  if (family) *family = planner.family();
  return plan;
}

config::MoeConfig gate_config(const config::MoeConfig& config) {
  config::MoeConfig c = config;
  const bool random = is_random(config);
  if (!random && !c.shared_experts.empty() && !c.shared_experts[0].positive_prompts.empty()) {
    c.experts.push_back(c.shared_experts[0]);
  }
  return c;
}

}  // namespace smelt::plan
