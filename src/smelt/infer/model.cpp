// The decoder forward pass of docs/inference.md ("Forward pass"): weights loaded (mapped or owned)
// in their stored type, one code path for every family with the differences as flags.
#include "smelt/infer/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <numbers>
#include <optional>
#include <unordered_map>

#include "smelt/error.h"
#include "smelt/infer/matmul.h"
#include "smelt/infer/parallel.h"
#include "smelt/io/gguf.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/torch_bin.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/ggml_type.h"

namespace smelt::infer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using kernels::GgmlType;

constexpr int64_t kMaxDim = int64_t{1} << 24;  // any single dimension of a supported model
constexpr int kMaxBatch = 512;                 // tokens per forward step (bounds the scratch)
// Below this many multiply-adds an attention step runs on the calling thread alone: waking the
// team costs more (matmul.cpp has the same threshold for matrix products).
constexpr double kParallelMinWork = double{1 << 18};

// ---- weights in memory ------------------------------------------------------------------------

// A read-only mapping of a whole file, unmapped on destruction.
class Mapping {
 public:
  explicit Mapping(const fs::path& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("{}: cannot open ({})", path.string(), std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("{}: cannot stat ({})", path.string(), std::strerror(errno));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        fail("{}: cannot map ({})", path.string(), std::strerror(errno));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
  }
  ~Mapping() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  fs::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One tensor as the loader sees it, whatever its source.
struct RawTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::string type_name;        // for messages
  bool supported = true;        // false: a dtype the forward pass cannot read
  std::vector<uint64_t> shape;  // PyTorch order
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

struct TensorSet {
  std::string label;  // the file or "the model in memory"
  std::unordered_map<std::string, RawTensor> by_name;
  const RawTensor* find(const std::string& n) const {
    auto it = by_name.find(n);
    return it == by_name.end() ? nullptr : &it->second;
  }
};

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// ---- hyper-parameters -----------------------------------------------------------------------

enum class Family { kLlama, kMistral, kMixtral, kQwen2, kQwen2Moe, kQwen3, kGemma2 };

const char* family_name(Family f) {
  switch (f) {
    case Family::kLlama:
      return "llama";
    case Family::kMistral:
      return "mistral";
    case Family::kMixtral:
      return "mixtral";
    case Family::kQwen2:
      return "qwen2";
    case Family::kQwen2Moe:
      return "qwen2_moe";
    case Family::kQwen3:
      return "qwen3";
    case Family::kGemma2:
      return "gemma2";
  }
  return "?";
}

constexpr const char* kSupportedHf =
    "LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, "
    "Qwen2MoeForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM";
constexpr const char* kSupportedGguf = "llama, qwen2, qwen2moe, qwen3, gemma2";

struct Hparams {
  Family family = Family::kLlama;
  bool gguf = false;
  float eps = 1e-6f;
  std::vector<double> inv_freq;   // head_dim/2 angle per position, scaling applied
  bool rope_interleaved = false;  // pairs (2i, 2i+1) (GGUF llama) instead of (i, i + d/2)
  std::vector<int> window;        // per layer: keys visible to a query (0 = all)
  float q_scale = 1.0f;
  float attn_softcap = 0.0f;   // 0 = off
  float final_softcap = 0.0f;  // 0 = off
  bool gelu = false;           // gelu (tanh approximation) instead of silu
  float embd_scale = 1.0f;
  bool norm_plus_one = false;  // HF gemma2: x̂·(1+w)
  // Mixture of experts (docs/inference.md): 0 experts = a dense MLP.
  int n_expert = 0;
  int n_expert_used = 0;
  bool norm_topk = true;  // renormalise the top k weights (Mixtral; qwen2_moe's norm_topk_prob)
  int n_ff_shared = 0;    // qwen2_moe: the shared expert's width (0 = no shared expert)
};

// ---- config.json --------------------------------------------------------------------------

const json* jfind(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t cfg_int(const json& cfg, const char* key, std::optional<int64_t> fallback,
                int64_t min_value = 1, int64_t max_value = kMaxDim) {
  const json* v = jfind(cfg, key);
  if (!v) {
    if (fallback) return *fallback;
    fail("config.json: '{}' is missing; the forward pass needs it", key);
  }
  if (!v->is_number_integer())
    fail("config.json: '{}' must be an integer (it is {})", key, v->dump());
  const int64_t x = v->get<int64_t>();
  if (x < min_value || x > max_value)
    fail("config.json: '{}' = {} is outside [{}, {}]", key, x, min_value, max_value);
  return x;
}

double cfg_float(const json& cfg, const char* key, double fallback, bool positive = true) {
  const json* v = jfind(cfg, key);
  if (!v) return fallback;
  if (!v->is_number()) fail("config.json: '{}' must be a number (it is {})", key, v->dump());
  const double x = v->get<double>();
  if (!std::isfinite(x) || (positive && x <= 0))
    fail("config.json: '{}' = {} must be a finite{} number", key, x, positive ? " positive" : "");
  return x;
}

std::vector<double> base_inv_freq(double theta, int head_dim) {
  std::vector<double> inv(static_cast<size_t>(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i)
    inv[static_cast<size_t>(i)] = std::pow(theta, -2.0 * i / head_dim);
  return inv;
}

// HF rope_scaling / rope_parameters (docs/inference.md: linear and llama3).
void apply_hf_rope_scaling(const json& cfg, std::vector<double>& inv) {
  const json* params = nullptr;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (const json* v = jfind(cfg, key)) {
      if (!v->is_object()) fail("config.json: '{}' must be an object (it is {})", key, v->dump());
      params = v;
      break;
    }
  }
  if (!params) return;
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (const json* v = jfind(*params, key)) {
      if (!v->is_string()) fail("config.json: rope '{}' must be a string", key);
      type = v->get<std::string>();
      break;
    }
  }
  if (type.empty() || type == "default") return;
  const double factor = cfg_float(*params, "factor", 1.0);
  if (type == "linear") {
    for (double& f : inv) f /= factor;
    return;
  }
  if (type == "llama3") {
    const double low = cfg_float(*params, "low_freq_factor", 1.0);
    const double high = cfg_float(*params, "high_freq_factor", 4.0);
    const double old_ctx = cfg_float(*params, "original_max_position_embeddings", 8192.0);
    if (high <= low)
      fail("config.json: rope_scaling high_freq_factor {} must exceed low_freq_factor {}", high,
           low);
    for (double& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen < old_ctx / high) continue;
      if (wavelen > old_ctx / low) {
        f /= factor;
      } else {
        const double s = (old_ctx / wavelen - low) / (high - low);
        f = (1 - s) * f / factor + s * f;
      }
    }
    return;
  }
  fail(
      "config.json: RoPE scaling type '{}' is not supported by the forward pass (supported: "
      "linear, llama3)",
      type);
}

std::vector<int32_t> token_ids(const json* v) {
  std::vector<int32_t> out;
  if (!v) return out;
  auto one = [&](const json& x) {
    if (x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < (int64_t{1} << 31))
      out.push_back(static_cast<int32_t>(x.get<int64_t>()));
  };
  if (v->is_array()) {
    for (const json& x : *v) one(x);
  } else {
    one(*v);
  }
  return out;
}

struct HfSetup {
  ModelInfo info;
  Hparams hp;
};

HfSetup hf_setup(const json& cfg) {
  if (!cfg.is_object()) fail("config.json: not a JSON object");
  std::string arch;
  if (const json* a = jfind(cfg, "architectures");
      a && a->is_array() && !a->empty() && (*a)[0].is_string())
    arch = (*a)[0].get<std::string>();
  std::string model_type;
  if (const json* t = jfind(cfg, "model_type"); t && t->is_string())
    model_type = t->get<std::string>();
  HfSetup s;
  Hparams& hp = s.hp;
  ModelInfo& mi = s.info;
  if (arch == "LlamaForCausalLM" || (arch.empty() && model_type == "llama"))
    hp.family = Family::kLlama;
  else if (arch == "MistralForCausalLM" || (arch.empty() && model_type == "mistral"))
    hp.family = Family::kMistral;
  else if (arch == "MixtralForCausalLM" || (arch.empty() && model_type == "mixtral"))
    hp.family = Family::kMixtral;
  else if (arch == "Qwen2ForCausalLM" || (arch.empty() && model_type == "qwen2"))
    hp.family = Family::kQwen2;
  else if (arch == "Qwen2MoeForCausalLM" || (arch.empty() && model_type == "qwen2_moe"))
    hp.family = Family::kQwen2Moe;
  else if (arch == "Qwen3ForCausalLM" || (arch.empty() && model_type == "qwen3"))
    hp.family = Family::kQwen3;
  else if (arch == "Gemma2ForCausalLM" || (arch.empty() && model_type == "gemma2"))
    hp.family = Family::kGemma2;
  else
    fail("config.json: architecture '{}' is not supported by the forward pass (supported: {})",
         arch.empty() ? model_type : arch, kSupportedHf);
  const bool gemma = hp.family == Family::kGemma2;
  mi.family = family_name(hp.family);
  mi.n_vocab = static_cast<int>(cfg_int(cfg, "vocab_size", std::nullopt));
  mi.n_embd = static_cast<int>(cfg_int(cfg, "hidden_size", std::nullopt));
  mi.n_layer = static_cast<int>(cfg_int(cfg, "num_hidden_layers", std::nullopt));
  mi.n_head = static_cast<int>(cfg_int(cfg, "num_attention_heads", std::nullopt));
  mi.n_head_kv = static_cast<int>(cfg_int(cfg, "num_key_value_heads", mi.n_head));
  mi.n_ff = static_cast<int>(cfg_int(cfg, "intermediate_size", std::nullopt));
  if (hp.family == Family::kMixtral) {
    hp.n_expert = static_cast<int>(cfg_int(cfg, "num_local_experts", std::nullopt, 1, 1024));
    hp.n_expert_used = static_cast<int>(cfg_int(cfg, "num_experts_per_tok", 2, 1, hp.n_expert));
    mi.n_expert = hp.n_expert;
    mi.n_expert_used = hp.n_expert_used;
  } else if (hp.family == Family::kQwen2Moe) {
    // Every layer sparse, each with a shared expert: what smelt moe writes (docs/inference.md).
    if (cfg_int(cfg, "decoder_sparse_step", 1) != 1)
      fail("config.json: qwen2_moe with decoder_sparse_step other than 1 is not supported");
    if (const json* only = jfind(cfg, "mlp_only_layers"); only && !only->empty())
      fail("config.json: qwen2_moe with mlp_only_layers (dense layers) is not supported");
    hp.n_expert = static_cast<int>(cfg_int(cfg, "num_experts", std::nullopt, 1, 1024));
    hp.n_expert_used = static_cast<int>(cfg_int(cfg, "num_experts_per_tok", 2, 1, hp.n_expert));
    const json* norm = jfind(cfg, "norm_topk_prob");
    if (norm && !norm->is_boolean()) fail("config.json: 'norm_topk_prob' must be true or false");
    hp.norm_topk = norm && norm->get<bool>();  // transformers' default: false
    mi.n_ff = static_cast<int>(cfg_int(cfg, "moe_intermediate_size", std::nullopt));
    hp.n_ff_shared =
        static_cast<int>(cfg_int(cfg, "shared_expert_intermediate_size", std::nullopt));
    mi.n_expert = hp.n_expert;
    mi.n_expert_used = hp.n_expert_used;
  }
  const bool has_head_dim = jfind(cfg, "head_dim") != nullptr;
  if (!has_head_dim && !gemma && mi.n_embd % mi.n_head != 0)
    fail("config.json: hidden_size {} is not a multiple of num_attention_heads {}", mi.n_embd,
         mi.n_head);
  mi.head_dim = static_cast<int>(cfg_int(cfg, "head_dim", gemma ? 256 : mi.n_embd / mi.n_head));
  if (mi.head_dim % 2 != 0)
    fail("config.json: head dimension {} is odd; RoPE needs pairs", mi.head_dim);
  if (mi.n_head % mi.n_head_kv != 0)
    fail("config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
         mi.n_head, mi.n_head_kv);
  mi.n_ctx_train = static_cast<int>(
      cfg_int(cfg, "max_position_embeddings", 0, 0, std::numeric_limits<int32_t>::max()));
  hp.eps = static_cast<float>(cfg_float(cfg, "rms_norm_eps", 1e-6));
  double theta = 10000.0;
  if (const json* rp = jfind(cfg, "rope_parameters"); rp && jfind(*rp, "rope_theta"))
    theta = cfg_float(*rp, "rope_theta", 10000.0);
  theta = cfg_float(cfg, "rope_theta", theta);
  hp.inv_freq = base_inv_freq(theta, mi.head_dim);
  apply_hf_rope_scaling(cfg, hp.inv_freq);

  // Sliding windows (docs/inference.md): explicit layer_types first, else the family's rule.
  hp.window.assign(static_cast<size_t>(mi.n_layer), 0);
  auto sliding = [&](int64_t fallback) -> int {
    const json* v = jfind(cfg, "sliding_window");
    if (!v) return static_cast<int>(fallback);
    if (!v->is_number_integer() || v->get<int64_t>() < 1 || v->get<int64_t>() > (1 << 30))
      fail("config.json: 'sliding_window' must be a positive integer or null (it is {})",
           v->dump());
    return static_cast<int>(v->get<int64_t>());
  };
  const json* layer_types = jfind(cfg, "layer_types");
  if (layer_types) {
    if (!layer_types->is_array() || layer_types->size() != static_cast<size_t>(mi.n_layer))
      fail("config.json: 'layer_types' must list num_hidden_layers ({}) entries", mi.n_layer);
    const int w = sliding(0);
    for (int l = 0; l < mi.n_layer; ++l) {
      const json& t = (*layer_types)[static_cast<size_t>(l)];
      if (!t.is_string()) fail("config.json: 'layer_types' entries must be strings");
      if (t == "sliding_attention") {
        if (w == 0) fail("config.json: a sliding_attention layer needs 'sliding_window'");
        hp.window[static_cast<size_t>(l)] = w;
      } else if (t != "full_attention") {
        fail("config.json: layer type '{}' is not supported", t.get<std::string>());
      }
    }
  } else if (hp.family == Family::kMistral) {
    const bool present = cfg.contains("sliding_window");  // null: off; absent: 4096
    const int w = present ? sliding(0) : 4096;
    std::fill(hp.window.begin(), hp.window.end(), w);
  } else if (hp.family == Family::kMixtral) {
    std::fill(hp.window.begin(), hp.window.end(), sliding(0));  // null or absent: off
  } else if (hp.family == Family::kQwen2 || hp.family == Family::kQwen2Moe ||
             hp.family == Family::kQwen3) {
    const json* use = jfind(cfg, "use_sliding_window");
    if (use && use->is_boolean() && use->get<bool>()) {
      const int w = sliding(4096);
      const int64_t from = cfg_int(cfg, "max_window_layers", 28, 0);
      for (int l = 0; l < mi.n_layer; ++l)
        if (l >= from) hp.window[static_cast<size_t>(l)] = w;
    }
  } else if (gemma) {
    const int w = sliding(4096);
    for (int l = 0; l < mi.n_layer; l += 2) hp.window[static_cast<size_t>(l)] = w;
  }

  if (gemma) {
    hp.q_scale = static_cast<float>(1.0 / std::sqrt(cfg_float(cfg, "query_pre_attn_scalar", 256)));
    hp.attn_softcap = cfg.contains("attn_logit_softcapping")
                          ? static_cast<float>(cfg_float(cfg, "attn_logit_softcapping", 0.0, false))
                          : 50.0f;
    hp.final_softcap =
        cfg.contains("final_logit_softcapping")
            ? static_cast<float>(cfg_float(cfg, "final_logit_softcapping", 0.0, false))
            : 30.0f;
    hp.gelu = true;
    hp.embd_scale = std::sqrt(static_cast<float>(mi.n_embd));
    hp.norm_plus_one = true;
  } else {
    hp.q_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(mi.head_dim)));
  }
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    const json* v = jfind(cfg, key);
    if (!v) continue;
    const std::string act = v->is_string() ? v->get<std::string>() : v->dump();
    if (act == "silu" || act == "swish")
      hp.gelu = false;
    else if (act == "gelu_pytorch_tanh" || act == "gelu_tanh")
      hp.gelu = true;
    else
      fail("config.json: '{}' = '{}' is not supported (silu, gelu_pytorch_tanh)", key, act);
    break;
  }
  const json* bos = jfind(cfg, "bos_token_id");
  const auto bos_ids = token_ids(bos);
  if (!bos_ids.empty()) mi.bos_token_id = bos_ids[0];
  mi.eos_token_ids = token_ids(jfind(cfg, "eos_token_id"));
  return s;
}

// ---- GGUF metadata ----------------------------------------------------------------------------

struct GgufMeta {
  const io::GgufFile* file;
  std::string arch;
  const io::GgufValue* find(const std::string& key) const { return file->find_kv(key); }
  int64_t get_int(const std::string& key, std::optional<int64_t> fallback, int64_t min_value = 1,
                  int64_t max_value = kMaxDim) const {
    const io::GgufValue* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      fail("{}: metadata key '{}' is missing; the forward pass needs it", file->path().string(),
           key);
    }
    auto x = v->as_int();
    if (!x || *x < min_value || *x > max_value)
      fail("{}: metadata key '{}' must be an integer in [{}, {}] (it is {})", file->path().string(),
           key, min_value, max_value, v->to_string());
    return *x;
  }
  double get_float(const std::string& key, double fallback, bool positive = true) const {
    const io::GgufValue* v = find(key);
    if (!v) return fallback;
    auto x = v->as_float();
    if (!x || !std::isfinite(*x) || (positive && *x <= 0))
      fail("{}: metadata key '{}' must be a finite{} number (it is {})", file->path().string(), key,
           positive ? " positive" : "", v->to_string());
    return *x;
  }
};

// ---- the model ----------------------------------------------------------------------------------

struct Layer {
  WeightMatrix wq, wk, wv, wo, gate, up, down;
  // Mixture of experts: the router [n_expert, n_embd] and each expert's MLP.
  WeightMatrix router;
  std::vector<WeightMatrix> exp_gate, exp_up, exp_down;
  // qwen2_moe's shared expert and its gate [1, n_embd] (empty rows = none).
  WeightMatrix shared_gate, shared_up, shared_down, shared_expert_gate;
  std::vector<float> bq, bk, bv, bo;  // empty when absent
  std::vector<float> attn_norm, ffn_norm, attn_post_norm, ffn_post_norm, q_norm, k_norm;
};

class ForwardModel;

class Session : public LanguageModel {
 public:
  Session(const ForwardModel& m, int n_ctx);
  int vocab_size() const override;
  int context_size() const override { return n_ctx_; }
  int n_past() const override { return n_past_; }
  void truncate(int n) override {
    if (n < 0 || n > n_past_) fail("truncate({}): the cache holds {} positions", n, n_past_);
    n_past_ = n;
  }
  void decode(std::span<const int32_t> tokens, int n_logits, std::vector<float>& logits) override;
  // Called with the residual stream entering each layer: (layer, n tokens × n_embd).
  std::function<void(int, const float*, int)> on_layer_input;

 private:
  void step(const int32_t* tokens, int n, int n_out, float* out);
  void moe_ffn(const Layer& L, int n);
  const ForwardModel& m_;
  int n_ctx_;
  int n_past_ = 0;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer: n_ctx x (n_head_kv*hd)
  // Scratch, sized for kMaxBatch tokens.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_, scores_;
  std::vector<float> router_, xg_, yg_;  // mixture of experts
};

class ForwardModel : public Model {
 public:
  ModelInfo info_;
  Hparams hp_;
  std::vector<Layer> layers_;
  WeightMatrix tok_embd_, output_;
  std::vector<float> out_norm_;
  std::vector<std::unique_ptr<Mapping>> maps_;
  std::vector<MemoryTensor> owned_;
  std::unique_ptr<Parallel> par_;

  const ModelInfo& info() const override { return info_; }
  std::unique_ptr<LanguageModel> new_session(int n_ctx) const override {
    if (n_ctx < 1 || n_ctx > (1 << 24)) fail("context size {} must be in [1, 2^24]", n_ctx);
    return std::make_unique<Session>(*this, n_ctx);
  }
  std::vector<float> layer_inputs(std::span<const int32_t> tokens, bool average) const override;
  std::vector<float> embedding_row(int32_t token) const override {
    if (token < 0 || token >= info_.n_vocab)
      fail("token {} is outside the vocabulary of {}", token, info_.n_vocab);
    std::vector<float> row(static_cast<size_t>(info_.n_embd));
    get_row(tok_embd_, token, row.data());
    return row;
  }

  // Builds layers_ etc. from `ts`, whose names `name_of` maps from HF names.
  void build(const TensorSet& ts, bool gguf);
};

// Names of the tensors in each source, by logical kind.
std::string tensor_name(bool gguf, Family family, const std::string& kind, int layer) {
  const bool gemma = family == Family::kGemma2;
  if (!gguf) {
    static const std::unordered_map<std::string, std::string> loose = {
        {"tok_embd", "model.embed_tokens.weight"},
        {"output_norm", "model.norm.weight"},
        {"output", "lm_head.weight"}};
    if (layer < 0) return loose.at(kind);
    static const std::unordered_map<std::string, std::string> hf = {
        {"attn_norm", "input_layernorm.weight"},
        {"attn_post_norm", "post_attention_layernorm.weight"},
        {"ffn_post_norm", "post_feedforward_layernorm.weight"},
        {"wq", "self_attn.q_proj.weight"},
        {"wk", "self_attn.k_proj.weight"},
        {"wv", "self_attn.v_proj.weight"},
        {"wo", "self_attn.o_proj.weight"},
        {"bq", "self_attn.q_proj.bias"},
        {"bk", "self_attn.k_proj.bias"},
        {"bv", "self_attn.v_proj.bias"},
        {"bo", "self_attn.o_proj.bias"},
        {"q_norm", "self_attn.q_norm.weight"},
        {"k_norm", "self_attn.k_norm.weight"},
        {"gate", "mlp.gate_proj.weight"},
        {"up", "mlp.up_proj.weight"},
        {"down", "mlp.down_proj.weight"}};
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    if (kind == "ffn_norm")
      return p + (gemma ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight");
    return p + hf.at(kind);
  }
  static const std::unordered_map<std::string, std::string> loose = {
      {"tok_embd", "token_embd.weight"},
      {"output_norm", "output_norm.weight"},
      {"output", "output.weight"}};
  if (layer < 0) return loose.at(kind);
  static const std::unordered_map<std::string, std::string> gg = {
      {"attn_norm", "attn_norm.weight"},
      {"attn_post_norm", "post_attention_norm.weight"},
      {"ffn_norm", "ffn_norm.weight"},
      {"ffn_post_norm", "post_ffw_norm.weight"},
      {"wq", "attn_q.weight"},
      {"wk", "attn_k.weight"},
      {"wv", "attn_v.weight"},
      {"wo", "attn_output.weight"},
      {"bq", "attn_q.bias"},
      {"bk", "attn_k.bias"},
      {"bv", "attn_v.bias"},
      {"bo", "attn_output.bias"},
      {"q_norm", "attn_q_norm.weight"},
      {"k_norm", "attn_k_norm.weight"},
      {"gate", "ffn_gate.weight"},
      {"up", "ffn_up.weight"},
      {"down", "ffn_down.weight"}};
  return "blk." + std::to_string(layer) + "." + gg.at(kind);
}

void ForwardModel::build(const TensorSet& ts, bool gguf) {
  const ModelInfo& mi = info_;
  std::unordered_map<std::string, bool> used;
  auto lookup = [&](const std::string& name, bool required) -> const RawTensor* {
    const RawTensor* t = ts.find(name);
    if (t) used[name] = true;
    if (!t && required)
      fail("{}: tensor '{}' is missing; a {} model needs it", ts.label, name, mi.family);
    if (t && !t->supported)
      fail(
          "{}: tensor '{}' has type {}, which the forward pass does not read (supported: F32, "
          "F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)",
          ts.label, name, t->type_name);
    return t;
  };
  auto matrix = [&](const RawTensor* t, int64_t rows, int64_t cols) {
    if (t->shape.size() != 2 || t->shape[0] != static_cast<uint64_t>(rows) ||
        t->shape[1] != static_cast<uint64_t>(cols))
      fail("{}: tensor '{}' has shape {}; this {} model needs [{}, {}]", ts.label, t->name,
           shape_str(t->shape), mi.family, rows, cols);
    if (!matmul_supports(t->type))
      fail(
          "{}: tensor '{}' has type {}, which the forward pass does not read (supported: F32, "
          "F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)",
          ts.label, t->name, t->type_name);
    WeightMatrix w{t->type, rows, cols, t->data};
    auto bytes = kernels::ggml_type_bytes(t->type, static_cast<uint64_t>(rows) * cols);
    if (!bytes || *bytes != t->nbytes || cols % kernels::ggml_type_traits(t->type)->block_elems)
      fail("{}: tensor '{}' holds {} bytes, not the size of {} of {}", ts.label, t->name, t->nbytes,
           shape_str(t->shape), t->type_name);
    info_.weight_bytes += t->nbytes;
    return w;
  };
  auto weight = [&](const std::string& name, int64_t rows, int64_t cols) {
    return matrix(lookup(name, true), rows, cols);
  };
  // A 1-D tensor as f32 (plus `add`); empty when absent and optional.
  auto vec = [&](const std::string& name, int64_t n, bool required, float add = 0.0f) {
    std::vector<float> out;
    const RawTensor* t = lookup(name, required);
    if (!t) return out;
    if (t->shape.size() != 1 || t->shape[0] != static_cast<uint64_t>(n))
      fail("{}: tensor '{}' has shape {}; this {} model needs [{}]", ts.label, name,
           shape_str(t->shape), mi.family, n);
    auto bytes = kernels::ggml_type_bytes(t->type, static_cast<uint64_t>(n));
    if (!matmul_supports(t->type) || !bytes || *bytes != t->nbytes)
      fail("{}: tensor '{}' of type {} cannot be read as {} numbers", ts.label, name, t->type_name,
           n);
    out.resize(static_cast<size_t>(n));
    get_row(WeightMatrix{t->type, 1, n, t->data}, 0, out.data());
    for (float& x : out) x += add;
    info_.weight_bytes += t->nbytes;
    return out;
  };
  // Expert tensors: one per expert (Hugging Face's Mixtral layout), or all experts of a layer in
  // one 3-D tensor [n_expert, rows, cols] (GGUF's ffn_*_exps), cut into one matrix per expert.
  auto experts = [&](const std::string& name, int64_t rows, int64_t cols) {
    const RawTensor* t = lookup(name, true);
    const uint64_t n = static_cast<uint64_t>(hp_.n_expert);
    if (t->shape.size() != 3 || t->shape[0] != n || t->shape[1] != static_cast<uint64_t>(rows) ||
        t->shape[2] != static_cast<uint64_t>(cols))
      fail("{}: tensor '{}' has shape {}; this {} model needs [{}, {}, {}]", ts.label, t->name,
           shape_str(t->shape), mi.family, n, rows, cols);
    RawTensor one = *t;
    one.shape = {static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)};
    one.nbytes = t->nbytes / n;
    std::vector<WeightMatrix> out;
    for (uint64_t e = 0; e < n; ++e) {
      one.data = static_cast<const uint8_t*>(t->data) + e * one.nbytes;
      out.push_back(matrix(&one, rows, cols));
    }
    if (one.nbytes * n != t->nbytes)
      fail("{}: tensor '{}' holds {} bytes, not {} experts' worth", ts.label, t->name, t->nbytes,
           n);
    return out;
  };
  auto build_experts = [&](Layer& L, int l) {
    const int64_t E = mi.n_embd, F = mi.n_ff;
    if (gguf) {
      const std::string p = "blk." + std::to_string(l) + ".";
      L.router = weight(p + "ffn_gate_inp.weight", hp_.n_expert, E);
      L.exp_gate = experts(p + "ffn_gate_exps.weight", F, E);
      L.exp_up = experts(p + "ffn_up_exps.weight", F, E);
      L.exp_down = experts(p + "ffn_down_exps.weight", E, F);
      if (hp_.family == Family::kQwen2Moe) {
        const int64_t S = hp_.n_ff_shared;
        L.shared_gate = weight(p + "ffn_gate_shexp.weight", S, E);
        L.shared_up = weight(p + "ffn_up_shexp.weight", S, E);
        L.shared_down = weight(p + "ffn_down_shexp.weight", E, S);
        // The shared expert's gate is a vector [n_embd] in GGUF: a one-row matrix here.
        const RawTensor* g = lookup(p + "ffn_gate_inp_shexp.weight", true);
        if (g->shape.size() != 1)
          fail("{}: tensor '{}' has shape {}; this {} model needs [{}]", ts.label, g->name,
               shape_str(g->shape), mi.family, E);
        RawTensor row = *g;
        row.shape = {1, g->shape[0]};
        L.shared_expert_gate = matrix(&row, 1, E);
      }
      return;
    }
    // transformers 5 saves the experts fused: mlp.experts.gate_up_proj [E, 2I, H] (each expert's
    // gate rows, then its up rows) and mlp.experts.down_proj [E, H, I], the router as mlp.gate.
    const std::string mlp = "model.layers." + std::to_string(l) + ".mlp.";
    const bool qwen2moe = hp_.family == Family::kQwen2Moe;
    if (ts.find(mlp + "experts.gate_up_proj")) {
      L.router = weight(mlp + "gate.weight", hp_.n_expert, E);
      for (const WeightMatrix& gu : experts(mlp + "experts.gate_up_proj", 2 * F, E)) {
        const uint64_t half = *kernels::ggml_type_bytes(gu.type, static_cast<uint64_t>(F * E));
        L.exp_gate.push_back(WeightMatrix{gu.type, F, E, gu.data});
        L.exp_up.push_back(
            WeightMatrix{gu.type, F, E, static_cast<const uint8_t*>(gu.data) + half});
      }
      L.exp_down = experts(mlp + "experts.down_proj", E, F);
    } else if (qwen2moe) {
      L.router = weight(mlp + "gate.weight", hp_.n_expert, E);
      for (int e = 0; e < hp_.n_expert; ++e) {
        const std::string x = mlp + "experts." + std::to_string(e) + ".";
        L.exp_gate.push_back(weight(x + "gate_proj.weight", F, E));
        L.exp_up.push_back(weight(x + "up_proj.weight", F, E));
        L.exp_down.push_back(weight(x + "down_proj.weight", E, F));
      }
    }
    if (qwen2moe) {
      const int64_t S = hp_.n_ff_shared;
      L.shared_gate = weight(mlp + "shared_expert.gate_proj.weight", S, E);
      L.shared_up = weight(mlp + "shared_expert.up_proj.weight", S, E);
      L.shared_down = weight(mlp + "shared_expert.down_proj.weight", E, S);
      L.shared_expert_gate = weight(mlp + "shared_expert_gate.weight", 1, E);
    }
    if (!L.exp_gate.empty()) return;
    const std::string p = "model.layers." + std::to_string(l) + ".block_sparse_moe.";
    L.router = weight(p + "gate.weight", hp_.n_expert, E);
    for (int e = 0; e < hp_.n_expert; ++e) {
      const std::string x = p + "experts." + std::to_string(e) + ".";
      L.exp_gate.push_back(weight(x + "w1.weight", F, E));
      L.exp_up.push_back(weight(x + "w3.weight", F, E));
      L.exp_down.push_back(weight(x + "w2.weight", E, F));
    }
  };
  const Family f = hp_.family;
  auto name = [&](const char* kind, int layer = -1) { return tensor_name(gguf, f, kind, layer); };
  const int64_t E = mi.n_embd, hd = mi.head_dim, nq = mi.n_head * hd, nkv = mi.n_head_kv * hd;
  const float plus = hp_.norm_plus_one ? 1.0f : 0.0f;
  tok_embd_ = weight(name("tok_embd"), mi.n_vocab, E);
  // transformers multiplies gemma2's embeddings by sqrt(hidden) rounded to the activation dtype
  // (the stored one); llama.cpp by sqrt(n_embd) in f32 (docs/inference.md).
  if (!gguf && hp_.embd_scale != 1.0f) {
    if (tok_embd_.type == GgmlType::kBF16)
      hp_.embd_scale = kernels::bf16_to_f32(kernels::f32_to_bf16(hp_.embd_scale));
    else if (tok_embd_.type == GgmlType::kF16)
      hp_.embd_scale = kernels::f16_to_f32(kernels::f32_to_f16(hp_.embd_scale));
  }
  out_norm_ = vec(name("output_norm"), E, true, plus);
  if (const RawTensor* o = lookup(name("output"), false))
    output_ = matrix(o, mi.n_vocab, E);
  else
    output_ = tok_embd_;
  const bool qwen2 = f == Family::kQwen2 || f == Family::kQwen2Moe, qwen3 = f == Family::kQwen3,
             gemma = f == Family::kGemma2;
  // Every layer has tensors of its own: a layer count beyond the file's tensor count is a
  // corrupt header, refused before anything is sized by it.
  if (static_cast<size_t>(mi.n_layer) > ts.by_name.size())
    fail("{}: the model claims {} layers but holds only {} tensors", ts.label, mi.n_layer,
         ts.by_name.size());
  layers_.resize(static_cast<size_t>(mi.n_layer));
  for (int l = 0; l < mi.n_layer; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    L.attn_norm = vec(name("attn_norm", l), E, true, plus);
    L.ffn_norm = vec(name("ffn_norm", l), E, true, plus);
    if (gemma) {
      L.attn_post_norm = vec(name("attn_post_norm", l), E, true, plus);
      L.ffn_post_norm = vec(name("ffn_post_norm", l), E, true, plus);
    }
    L.wq = weight(name("wq", l), nq, E);
    L.wk = weight(name("wk", l), nkv, E);
    L.wv = weight(name("wv", l), nkv, E);
    L.wo = weight(name("wo", l), E, nq);
    // qwen2 has q/k/v biases; a checkpoint without any of them runs with zeros, as llama.cpp
    // runs it, but one with only some of them is refused.
    const bool qkv_bias =
        qwen2 && (ts.find(name("bq", l)) || ts.find(name("bk", l)) || ts.find(name("bv", l)));
    L.bq = vec(name("bq", l), nq, qkv_bias);
    L.bk = vec(name("bk", l), nkv, qkv_bias);
    L.bv = vec(name("bv", l), nkv, qkv_bias);
    L.bo = vec(name("bo", l), E, false);
    if (qwen3) {
      L.q_norm = vec(name("q_norm", l), hd, true);
      L.k_norm = vec(name("k_norm", l), hd, true);
    }
    if (hp_.n_expert > 0) {
      build_experts(L, l);
    } else {
      L.gate = weight(name("gate", l), mi.n_ff, E);
      L.up = weight(name("up", l), mi.n_ff, E);
      L.down = weight(name("down", l), E, mi.n_ff);
    }
  }
  // A tensor the forward pass would ignore means a model it does not describe (MLP biases, extra
  // norms, experts, ...): refuse rather than compute something else. Tensors converters drop
  // anyway are allowed.
  static constexpr std::string_view kIgnorable[] = {
      ".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias", "rope_freqs.weight"};
  std::vector<std::string> unused;
  for (const auto& [n, t] : ts.by_name) {
    if (used.count(n)) continue;
    bool ignorable = false;
    for (std::string_view suffix : kIgnorable) ignorable = ignorable || n.ends_with(suffix);
    if (!ignorable) unused.push_back(n);
  }
  if (!unused.empty()) {
    std::sort(unused.begin(), unused.end());
    fail(
        "{}: tensor '{}'{} is not part of a {} model as the forward pass runs it "
        "(docs/inference.md lists what each family has)",
        ts.label, unused.front(),
        unused.size() > 1 ? fmt::format(" (and {} more)", unused.size() - 1) : "", mi.family);
  }
}

// ---- sources ------------------------------------------------------------------------------------

RawTensor raw_from_dtype(const std::string& name, DType dtype, std::vector<uint64_t> shape,
                         const void* data, uint64_t nbytes) {
  RawTensor r;
  r.name = name;
  r.shape = std::move(shape);
  r.data = data;
  r.nbytes = nbytes;
  r.type_name = std::string(dtype_name(dtype));
  if (dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16)
    r.type = *kernels::ggml_type_for_dtype(dtype);
  else
    r.supported = false;
  return r;
}

void check_shape(const std::string& label, const std::string& name,
                 const std::vector<uint64_t>& shape) {
  for (uint64_t d : shape)
    if (d == 0 || d > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()))
      fail("{}: tensor '{}' has a dimension of {} in {}", label, name, d, shape_str(shape));
}

std::unique_ptr<Model> finish(std::unique_ptr<ForwardModel> m, const TensorSet& ts, bool gguf,
                              const LoadOptions& options) {
  m->build(ts, gguf);
  m->par_ = std::make_unique<Parallel>(options.threads);
  return m;
}

// `path`: a model folder, or one .safetensors or PyTorch .bin file with config.json beside it.
std::unique_ptr<Model> load_hf(const fs::path& path, const LoadOptions& options) {
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  const fs::path cfg_path = dir / "config.json";
  std::ifstream in(cfg_path);
  if (!in)
    fail("{}: cannot read config.json (a Hugging Face model folder needs one)", dir.string());
  json cfg;
  try {
    cfg = json::parse(in);
  } catch (const std::exception& e) {
    fail("{}: not valid JSON ({})", cfg_path.string(), e.what());
  }
  auto m = std::make_unique<ForwardModel>();
  HfSetup setup;
  try {
    setup = hf_setup(cfg);
  } catch (const Error& e) {
    fail("{}: {}", cfg_path.string(), e.what());
  }
  m->info_ = setup.info;
  m->hp_ = setup.hp;
  // generation_config.json's special tokens win over config.json's.
  const fs::path gen_path = dir / "generation_config.json";
  if (fs::exists(gen_path)) {
    std::ifstream g(gen_path);
    json gen = json::parse(g, nullptr, /*allow_exceptions=*/false);
    if (gen.is_object()) {
      auto bos = token_ids(jfind(gen, "bos_token_id"));
      if (!bos.empty()) m->info_.bos_token_id = bos[0];
      auto eos = token_ids(jfind(gen, "eos_token_id"));
      if (!eos.empty()) m->info_.eos_token_ids = eos;
    }
  }
  io::ResolvedModel resolved = io::resolve_model(io::ModelRef::parse(path.string()));
  resolved.lora_dir = options.lora_adapter;
  if (!options.lora_adapter.empty()) resolved.ref += "+" + options.lora_adapter.string();
  auto model = io::Model::open(resolved);
  TensorSet ts;
  ts.label = path.string();
  std::unordered_map<const io::TensorFile*, const Mapping*> maps;
  for (const auto& f : model->files()) {
    m->maps_.push_back(std::make_unique<Mapping>(f->path()));
    maps[f.get()] = m->maps_.back().get();
  }
  for (const io::ModelTensor& t : model->tensors()) {
    if (!t.info->contiguous) {
      // A strided PyTorch view is not a range of the mapped file: gather it into memory.
      check_shape(t.file->path().string(), t.info->name, t.info->shape);
      MemoryTensor& owned = m->owned_.emplace_back();
      owned.name = t.info->name;
      owned.bytes.resize(t.info->nbytes);
      t.file->read(*t.info, 0, owned.bytes.data(), t.info->nbytes);
      ts.by_name[t.info->name] = raw_from_dtype(t.info->name, t.info->dtype, t.info->shape,
                                                owned.bytes.data(), owned.bytes.size());
      continue;
    }
    const Mapping* map = maps.at(t.file);
    if (t.info->offset + t.info->nbytes > map->size())
      fail("{}: tensor '{}' lies past the end of the file", t.file->path().string(), t.info->name);
    check_shape(t.file->path().string(), t.info->name, t.info->shape);
    ts.by_name[t.info->name] = raw_from_dtype(t.info->name, t.info->dtype, t.info->shape,
                                              map->data() + t.info->offset, t.info->nbytes);
  }
  return finish(std::move(m), ts, false, options);
}

std::unique_ptr<Model> load_gguf(const fs::path& path, const LoadOptions& options) {
  auto files = io::open_gguf_model(path);
  auto m = std::make_unique<ForwardModel>();
  const io::GgufFile& first = *files.front();
  const std::string label = path.string();
  const io::GgufValue* arch_v = first.find_kv("general.architecture");
  const auto arch = arch_v ? arch_v->as_string() : std::nullopt;
  if (!arch) fail("{}: 'general.architecture' is missing", label);
  GgufMeta meta{&first, std::string(*arch)};
  Hparams& hp = m->hp_;
  ModelInfo& mi = m->info_;
  hp.gguf = true;
  if (meta.arch == "llama")
    hp.family = Family::kLlama;
  else if (meta.arch == "qwen2")
    hp.family = Family::kQwen2;
  else if (meta.arch == "qwen2moe")
    hp.family = Family::kQwen2Moe;
  else if (meta.arch == "qwen3")
    hp.family = Family::kQwen3;
  else if (meta.arch == "gemma2")
    hp.family = Family::kGemma2;
  else
    fail("{}: GGUF architecture '{}' is not supported by the forward pass (supported: {})", label,
         meta.arch, kSupportedGguf);
  const std::string a = meta.arch + ".";
  mi.family = family_name(hp.family);
  mi.n_embd = static_cast<int>(meta.get_int(a + "embedding_length", std::nullopt));
  mi.n_layer = static_cast<int>(meta.get_int(a + "block_count", std::nullopt));
  mi.n_ff = static_cast<int>(meta.get_int(a + "feed_forward_length", std::nullopt));
  mi.n_head = static_cast<int>(meta.get_int(a + "attention.head_count", std::nullopt));
  mi.n_head_kv = static_cast<int>(meta.get_int(a + "attention.head_count_kv", mi.n_head));
  mi.n_ctx_train = static_cast<int>(
      meta.get_int(a + "context_length", 0, 0, std::numeric_limits<int32_t>::max()));
  if (mi.n_head % mi.n_head_kv != 0)
    fail("{}: head_count {} is not a multiple of head_count_kv {}", label, mi.n_head, mi.n_head_kv);
  const int64_t default_hd = mi.n_embd / mi.n_head;
  mi.head_dim = static_cast<int>(meta.get_int(a + "attention.key_length", default_hd));
  if (meta.get_int(a + "attention.value_length", mi.head_dim) != mi.head_dim)
    fail("{}: attention.value_length differs from key_length; not supported", label);
  if (mi.head_dim % 2 != 0)
    fail("{}: head dimension {} is odd; RoPE needs pairs", label, mi.head_dim);
  if (meta.get_int(a + "rope.dimension_count", mi.head_dim) != mi.head_dim)
    fail(
        "{}: {}rope.dimension_count differs from the head dimension {} (partial RoPE is not "
        "supported)",
        label, a, mi.head_dim);
  hp.eps = static_cast<float>(meta.get_float(a + "attention.layer_norm_rms_epsilon", 1e-6));
  hp.inv_freq = base_inv_freq(meta.get_float(a + "rope.freq_base", 10000.0), mi.head_dim);
  if (const io::GgufValue* st = meta.find(a + "rope.scaling.type")) {
    const auto type = st->as_string();
    if (!type) fail("{}: {}rope.scaling.type must be a string", label, a);
    if (*type == "linear") {
      const double factor = meta.get_float(a + "rope.scaling.factor", 1.0);
      for (double& f : hp.inv_freq) f /= factor;
    } else if (*type != "none") {
      fail(
          "{}: RoPE scaling '{}' is not supported by the forward pass (supported: linear, "
          "llama3 rope_freqs)",
          label, *type);
    }
  }
  hp.rope_interleaved = hp.family == Family::kLlama;
  if (hp.family == Family::kLlama || hp.family == Family::kQwen2Moe) {
    const bool qwen = hp.family == Family::kQwen2Moe;
    hp.n_expert = static_cast<int>(
        meta.get_int(a + "expert_count", qwen ? std::nullopt : std::optional<int64_t>(0), 0, 1024));
    if (hp.n_expert > 0) {
      hp.n_expert_used =
          static_cast<int>(meta.get_int(a + "expert_used_count", std::nullopt, 1, hp.n_expert));
      mi.n_expert = hp.n_expert;
      mi.n_expert_used = hp.n_expert_used;
    }
    if (qwen) {
      // llama.cpp's qwen2moe: the experts' width, the shared expert's, and no renormalisation
      // of the top-k weights (docs/inference.md).
      mi.n_ff = static_cast<int>(meta.get_int(a + "expert_feed_forward_length", mi.n_ff));
      hp.n_ff_shared =
          static_cast<int>(meta.get_int(a + "expert_shared_feed_forward_length", mi.n_ff));
      hp.norm_topk = false;
    }
  }
  hp.window.assign(static_cast<size_t>(mi.n_layer), 0);
  hp.q_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(mi.head_dim)));
  if (hp.family == Family::kGemma2) {
    const int w = static_cast<int>(meta.get_int(a + "attention.sliding_window", 4096));
    for (int l = 0; l < mi.n_layer; l += 2) hp.window[static_cast<size_t>(l)] = w;
    hp.attn_softcap = static_cast<float>(meta.get_float(a + "attn_logit_softcapping", 50.0, false));
    hp.final_softcap =
        static_cast<float>(meta.get_float(a + "final_logit_softcapping", 30.0, false));
    hp.gelu = true;
    hp.embd_scale = std::sqrt(static_cast<float>(mi.n_embd));
    // llama.cpp's gemma2: the 46-layer (27B) model scales by n_embd / n_head.
    if (mi.n_layer == 46)
      hp.q_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(mi.n_embd / mi.n_head)));
  }
  // Special tokens.
  auto tok = [&](const char* key) -> int32_t {
    const io::GgufValue* v = meta.find(key);
    auto x = v ? v->as_int() : std::nullopt;
    return x && *x >= 0 && *x < (int64_t{1} << 31) ? static_cast<int32_t>(*x) : -1;
  };
  mi.bos_token_id = tok("tokenizer.ggml.bos_token_id");
  if (int32_t eos = tok("tokenizer.ggml.eos_token_id"); eos >= 0) mi.eos_token_ids = {eos};
  if (const io::GgufValue* v = meta.find("tokenizer.ggml.add_bos_token"); v && v->as_bool())
    mi.add_bos = *v->as_bool();
  else if (const io::GgufValue* tm = meta.find("tokenizer.ggml.model"))
    mi.add_bos = tm->as_string() == "llama";  // llama.cpp's default for SentencePiece vocabularies

  TensorSet ts;
  ts.label = label;
  for (const auto& f : files) {
    m->maps_.push_back(std::make_unique<Mapping>(f->path()));
    const Mapping& map = *m->maps_.back();
    for (const io::TensorInfo& t : f->tensors()) {
      if (t.offset + t.nbytes > map.size())
        fail("{}: tensor '{}' lies past the end of the file", f->path().string(), t.name);
      check_shape(f->path().string(), t.name, t.shape);
      RawTensor r;
      r.name = t.name;
      r.type = static_cast<GgmlType>(t.ggml_type);
      r.type_name = kernels::ggml_type_name(r.type);
      r.supported = matmul_supports(r.type);
      r.shape = t.shape;
      r.data = map.data() + t.offset;
      r.nbytes = t.nbytes;
      ts.by_name[t.name] = std::move(r);
    }
  }
  const RawTensor* embd = ts.find("token_embd.weight");
  if (!embd || embd->shape.size() != 2)
    fail("{}: tensor 'token_embd.weight' is missing or not 2-D", label);
  mi.n_vocab =
      static_cast<int>(meta.get_int(a + "vocab_size", static_cast<int64_t>(embd->shape[0])));
  // llama3 RoPE: rope_freqs.weight holds a divisor per frequency.
  if (const RawTensor* rf = ts.find("rope_freqs.weight")) {
    const int64_t n = mi.head_dim / 2;
    if (rf->shape.size() != 1 || rf->shape[0] != static_cast<uint64_t>(n) ||
        rf->type != GgmlType::kF32 || rf->nbytes != static_cast<uint64_t>(n) * 4)
      fail("{}: tensor 'rope_freqs.weight' must be F32 of shape [{}]", label, n);
    std::vector<float> div(static_cast<size_t>(n));
    std::memcpy(div.data(), rf->data, div.size() * 4);
    for (size_t i = 0; i < div.size(); ++i) {
      if (!(div[i] > 0) || !std::isfinite(div[i]))
        fail("{}: rope_freqs.weight[{}] = {} is not a positive number", label, i, div[i]);
      hp.inv_freq[i] /= div[i];
    }
  }
  return finish(std::move(m), ts, true, options);
}

}  // namespace

// ---- public entry points ----------------------------------------------------------------------

std::unique_ptr<Model> Model::load(const std::filesystem::path& path, const LoadOptions& options) {
  if (fs::is_directory(path) || path.extension() == ".safetensors" || io::is_torch_file_name(path))
    return load_hf(path, options);
  if (path.extension() == ".gguf") {
    if (!options.lora_adapter.empty()) {
      fail("{}: a PEFT LoRA adapter ({}) applies to Hugging Face weights, not to a GGUF file",
           path.string(), options.lora_adapter.string());
    }
    return load_gguf(path, options);
  }
  if (!fs::exists(path)) fail("{}: no such model folder or .gguf file", path.string());
  fail("{}: not a model folder (with config.json), a .safetensors, .bin or .gguf file",
       path.string());
}

std::unique_ptr<Model> Model::from_memory(const nlohmann::json& config,
                                          std::vector<MemoryTensor> tensors,
                                          const LoadOptions& options) {
  auto m = std::make_unique<ForwardModel>();
  HfSetup setup = hf_setup(config);
  m->info_ = setup.info;
  m->hp_ = setup.hp;
  m->owned_ = std::move(tensors);
  TensorSet ts;
  ts.label = "the model in memory";
  for (const MemoryTensor& t : m->owned_) {
    check_shape(ts.label, t.name, t.shape);
    uint64_t numel = 1;
    for (uint64_t d : t.shape) {
      if (numel > std::numeric_limits<uint64_t>::max() / d)
        fail("{}: tensor '{}' is too large", ts.label, t.name);
      numel *= d;
    }
    auto bytes = dtype_bytes(t.dtype, numel);
    if (!bytes || *bytes != t.bytes.size())
      fail("{}: tensor '{}' has {} bytes, not the size of {} {}", ts.label, t.name, t.bytes.size(),
           shape_str(t.shape), dtype_name(t.dtype));
    ts.by_name[t.name] = raw_from_dtype(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
  }
  return finish(std::move(m), ts, false, options);
}

// ---- the session ----------------------------------------------------------------------------

namespace {

Session::Session(const ForwardModel& m, int n_ctx) : m_(m), n_ctx_(n_ctx) {
  const ModelInfo& mi = m.info_;
  const size_t kv = static_cast<size_t>(mi.n_head_kv) * static_cast<size_t>(mi.head_dim);
  // The weight shapes bound kv by 2^31 and new_session n_ctx by 2^24: no 64-bit overflow.
  const double bytes = 2.0 * mi.n_layer * static_cast<double>(kv) * n_ctx * sizeof(float);
  try {
    k_cache_.resize(static_cast<size_t>(mi.n_layer));
    v_cache_.resize(static_cast<size_t>(mi.n_layer));
    for (int l = 0; l < mi.n_layer; ++l) {
      k_cache_[static_cast<size_t>(l)].resize(kv * static_cast<size_t>(n_ctx));
      v_cache_[static_cast<size_t>(l)].resize(kv * static_cast<size_t>(n_ctx));
    }
  } catch (const std::exception&) {  // bad_alloc, or length_error past max_size()
    fail(
        "cannot allocate the KV cache of {:.0f} MiB for a context of {} tokens; use a smaller "
        "context",
        bytes / (1 << 20), n_ctx);
  }
}

int Session::vocab_size() const { return m_.info_.n_vocab; }

void Session::decode(std::span<const int32_t> tokens, int n_logits, std::vector<float>& logits) {
  const int n = static_cast<int>(tokens.size());
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int>::max()) || n_logits < 0 ||
      n_logits > n)
    fail("decode: {} logits requested for {} tokens", n_logits, tokens.size());
  if (static_cast<int64_t>(n_past_) + n > n_ctx_)
    fail(
        "decode: {} tokens after {} cached positions overflow the context of {} (use a larger "
        "--ctx)",
        n, n_past_, n_ctx_);
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= m_.info_.n_vocab)
      fail("decode: token {} (at {}) is outside the vocabulary of {}", tokens[i], i,
           m_.info_.n_vocab);
  const size_t V = static_cast<size_t>(m_.info_.n_vocab);
  logits.assign(static_cast<size_t>(n_logits) * V, 0.0f);
  const int first_out = n - n_logits;
  const int start = n_past_;
  try {
    for (int b = 0; b < n; b += kMaxBatch) {
      const int len = std::min(kMaxBatch, n - b);
      // Outputs of this chunk: tokens [max(b, first_out), b + len).
      const int o0 = std::max(b, first_out);
      const int n_out = std::max(0, b + len - o0);
      step(tokens.data() + b, len, n_out,
           n_out ? logits.data() + static_cast<size_t>(o0 - first_out) * V : nullptr);
    }
  } catch (...) {
    n_past_ = start;
    throw;
  }
}

// Attention's inner products (x86-64 baseline and AVX2 clones, like the dequantizers): 16
// partial sums so the compiler can keep them in vector registers.
__attribute__((target_clones("avx2", "default"))) float dot(const float* a, const float* b,
                                                            int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0;
  for (int j = 0; j < 16; ++j) s += acc[j];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += alpha * x.
__attribute__((target_clones("avx2", "default"))) void axpy(float alpha, const float* x, float* y,
                                                            int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void rms_norm(const float* x, const std::vector<float>& w, float eps, int64_t n, float* y) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r * w[static_cast<size_t>(i)];
}

// gate[i] = act(gate[i]) · up[i]: SwiGLU (silu) or GeGLU (gelu, tanh approximation).
void glu(float* gate, const float* up, size_t n, bool gelu) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    float a;
    if (gelu) {
      constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
      a = 0.5f * g * (1.0f + std::tanh(kC * (g + 0.044715f * g * g * g)));
    } else {
      a = g / (1.0f + std::exp(-g));
    }
    gate[i] = a * up[i];
  }
}

// The mixture-of-experts MLP of the normalised tokens in xn_ into proj_ (docs/inference.md):
// router logits, softmax over every expert, the top k (ties: the lower index), their weights
// renormalised to sum to one (Mixtral; qwen2_moe only with norm_topk_prob, as transformers runs
// it), and the weighted sum of those experts' SwiGLU MLPs; qwen2_moe then adds its shared
// expert's MLP times sigmoid(shared_expert_gate · x). Tokens are grouped by expert so each
// expert's matrices are multiplied once per batch.
void Session::moe_ffn(const Layer& L, int n) {
  const ForwardModel& m = m_;
  const Hparams& hp = m.hp_;
  Parallel* par = m.par_.get();
  const int64_t E = m.info_.n_embd, F = m.info_.n_ff;
  const int X = hp.n_expert, K = hp.n_expert_used;
  const size_t N = static_cast<size_t>(n);
  router_.resize(N * static_cast<size_t>(X));
  matmul(L.router, xn_.data(), n, router_.data(), par);
  std::vector<std::vector<std::pair<int, float>>> routed(static_cast<size_t>(X));
  std::vector<int> order(static_cast<size_t>(X));
  std::vector<double> p(static_cast<size_t>(X));
  for (int t = 0; t < n; ++t) {
    const float* r = router_.data() + static_cast<size_t>(t) * X;
    const float mx = *std::max_element(r, r + X);
    double sum = 0;
    for (int e = 0; e < X; ++e) sum += (p[static_cast<size_t>(e)] = std::exp(double{r[e]} - mx));
    for (int e = 0; e < X; ++e) p[static_cast<size_t>(e)] /= sum;
    for (int e = 0; e < X; ++e) order[static_cast<size_t>(e)] = e;
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int a, int b) {
      const double pa = p[static_cast<size_t>(a)], pb = p[static_cast<size_t>(b)];
      return pa != pb ? pa > pb : a < b;
    });
    double top = 0;
    for (int k = 0; k < K; ++k) top += p[static_cast<size_t>(order[static_cast<size_t>(k)])];
    if (!hp.norm_topk) top = 1.0;
    for (int k = 0; k < K; ++k) {
      const int e = order[static_cast<size_t>(k)];
      routed[static_cast<size_t>(e)].push_back(
          {t, static_cast<float>(p[static_cast<size_t>(e)] / top)});
    }
  }
  std::fill(proj_.begin(), proj_.begin() + static_cast<ptrdiff_t>(N * E), 0.0f);
  xg_.resize(N * E);
  yg_.resize(N * E);
  for (int e = 0; e < X; ++e) {
    const auto& tokens = routed[static_cast<size_t>(e)];
    if (tokens.empty()) continue;
    const int64_t g = static_cast<int64_t>(tokens.size());
    for (int64_t i = 0; i < g; ++i)
      std::memcpy(xg_.data() + i * E, xn_.data() + tokens[static_cast<size_t>(i)].first * E,
                  static_cast<size_t>(E) * sizeof(float));
    matmul(L.exp_gate[static_cast<size_t>(e)], xg_.data(), g, gate_.data(), par);
    matmul(L.exp_up[static_cast<size_t>(e)], xg_.data(), g, up_.data(), par);
    glu(gate_.data(), up_.data(), static_cast<size_t>(g * F), hp.gelu);
    matmul(L.exp_down[static_cast<size_t>(e)], gate_.data(), g, yg_.data(), par);
    for (int64_t i = 0; i < g; ++i) {
      const auto [t, w] = tokens[static_cast<size_t>(i)];
      axpy(w, yg_.data() + i * E, proj_.data() + static_cast<int64_t>(t) * E, E);
    }
  }
  if (hp.n_ff_shared > 0) {
    const int64_t S = hp.n_ff_shared;
    matmul(L.shared_gate, xn_.data(), n, gate_.data(), par);
    matmul(L.shared_up, xn_.data(), n, up_.data(), par);
    glu(gate_.data(), up_.data(), N * static_cast<size_t>(S), hp.gelu);
    matmul(L.shared_down, gate_.data(), n, yg_.data(), par);
    matmul(L.shared_expert_gate, xn_.data(), n, router_.data(), par);  // n gate logits
    for (int t = 0; t < n; ++t) {
      const float w =
          static_cast<float>(1.0 / (1.0 + std::exp(-double{router_[static_cast<size_t>(t)]})));
      axpy(w, yg_.data() + static_cast<int64_t>(t) * E, proj_.data() + static_cast<int64_t>(t) * E,
           E);
    }
  }
}

std::vector<float> ForwardModel::layer_inputs(std::span<const int32_t> tokens, bool average) const {
  if (tokens.empty()) fail("layer_inputs: no tokens");
  const size_t E = static_cast<size_t>(info_.n_embd);
  std::vector<double> acc(static_cast<size_t>(info_.n_layer) * E, 0.0);
  std::vector<float> last(acc.size());
  Session s(*this, static_cast<int>(tokens.size()));
  s.on_layer_input = [&](int l, const float* x, int n) {
    double* a = acc.data() + static_cast<size_t>(l) * E;
    for (int t = 0; t < n; ++t)
      for (size_t i = 0; i < E; ++i) a[i] += x[static_cast<size_t>(t) * E + i];
    std::memcpy(last.data() + static_cast<size_t>(l) * E, x + static_cast<size_t>(n - 1) * E,
                E * sizeof(float));
  };
  std::vector<float> logits;
  s.decode(tokens, 0, logits);
  if (!average) return last;
  std::vector<float> mean(acc.size());
  for (size_t i = 0; i < acc.size(); ++i)
    mean[i] = static_cast<float>(acc[i] / static_cast<double>(tokens.size()));
  return mean;
}

void Session::step(const int32_t* tokens, int n, int n_out, float* out) {
  const ForwardModel& m = m_;
  const ModelInfo& mi = m.info_;
  const Hparams& hp = m.hp_;
  Parallel* par = m.par_.get();
  const int64_t E = mi.n_embd, hd = mi.head_dim, H = mi.n_head, Hkv = mi.n_head_kv, F = mi.n_ff;
  const int64_t nq = H * hd, nkv = Hkv * hd;
  const size_t N = static_cast<size_t>(n);
  x_.resize(N * E);
  xn_.resize(N * std::max(E, nq));
  q_.resize(N * nq);
  k_.resize(N * nkv);
  v_.resize(N * nkv);
  attn_.resize(N * nq);
  proj_.resize(N * E);
  gate_.resize(N * static_cast<size_t>(std::max<int64_t>(F, m.hp_.n_ff_shared)));
  up_.resize(N * static_cast<size_t>(std::max<int64_t>(F, m.hp_.n_ff_shared)));
  scores_.resize(par->threads() * static_cast<size_t>(n_ctx_));

  for (int t = 0; t < n; ++t) {
    float* xt = x_.data() + t * E;
    get_row(m.tok_embd_, tokens[t], xt);
    if (hp.embd_scale != 1.0f)
      for (int64_t i = 0; i < E; ++i) xt[i] *= hp.embd_scale;
  }
  // cos/sin per token and frequency.
  const int64_t half = hd / 2;
  std::vector<float> cos_t(N * half), sin_t(N * half);
  for (int t = 0; t < n; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(n_past_ + t) * hp.inv_freq[static_cast<size_t>(i)];
      cos_t[t * half + i] = static_cast<float>(std::cos(angle));
      sin_t[t * half + i] = static_cast<float>(std::sin(angle));
    }
  auto rope = [&](float* v, int64_t heads, int t) {
    for (int64_t h = 0; h < heads; ++h) {
      float* head = v + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = hp.rope_interleaved ? 2 * i : i;
        const int64_t b = hp.rope_interleaved ? 2 * i + 1 : i + half;
        const float c = cos_t[t * half + i], s = sin_t[t * half + i];
        const float x0 = head[a], x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x1 * c + x0 * s;
      }
    }
  };
  auto add_bias = [&](float* y, const std::vector<float>& bias, int64_t rows) {
    if (bias.empty()) return;
    for (int t = 0; t < n; ++t)
      for (int64_t r = 0; r < rows; ++r) y[t * rows + r] += bias[static_cast<size_t>(r)];
  };
  const size_t group = static_cast<size_t>(H / Hkv);

  for (int l = 0; l < mi.n_layer; ++l) {
    const Layer& L = m.layers_[static_cast<size_t>(l)];
    if (on_layer_input) on_layer_input(l, x_.data(), n);
    for (int t = 0; t < n; ++t)
      rms_norm(x_.data() + t * E, L.attn_norm, hp.eps, E, xn_.data() + t * E);
    matmul(L.wq, xn_.data(), n, q_.data(), par);
    matmul(L.wk, xn_.data(), n, k_.data(), par);
    matmul(L.wv, xn_.data(), n, v_.data(), par);
    add_bias(q_.data(), L.bq, nq);
    add_bias(k_.data(), L.bk, nkv);
    add_bias(v_.data(), L.bv, nkv);
    float* kc = k_cache_[static_cast<size_t>(l)].data();
    float* vc = v_cache_[static_cast<size_t>(l)].data();
    for (int t = 0; t < n; ++t) {
      float* qt = q_.data() + t * nq;
      float* kt = k_.data() + t * nkv;
      if (!L.q_norm.empty()) {
        for (int64_t h = 0; h < H; ++h) rms_norm(qt + h * hd, L.q_norm, hp.eps, hd, qt + h * hd);
        for (int64_t h = 0; h < Hkv; ++h) rms_norm(kt + h * hd, L.k_norm, hp.eps, hd, kt + h * hd);
      }
      rope(qt, H, t);
      rope(kt, Hkv, t);
      const size_t pos = static_cast<size_t>(n_past_ + t);
      std::memcpy(kc + pos * nkv, kt, nkv * sizeof(float));
      std::memcpy(vc + pos * nkv, v_.data() + t * nkv, nkv * sizeof(float));
    }
    // Attention: one task per (token, head); inline when the whole is too small to be worth
    // waking the team (a short generation step of a small model).
    const int window = hp.window[static_cast<size_t>(l)];
    const double attn_work = static_cast<double>(N) * static_cast<double>(H) *
                             static_cast<double>(n_past_ + n) * static_cast<double>(hd);
    const auto attention = [&](size_t begin, size_t end, size_t thread) {
      float* s = scores_.data() + thread * static_cast<size_t>(n_ctx_);
      for (size_t job = begin; job < end; ++job) {
        const size_t t = job / static_cast<size_t>(H), h = job % static_cast<size_t>(H);
        const size_t g = h / group;
        const int64_t pos = n_past_ + static_cast<int64_t>(t);
        const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
        const float* qh = q_.data() + t * nq + h * hd;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t u = lo; u <= pos; ++u) {
          float d = dot(qh, kc + u * nkv + g * hd, hd) * hp.q_scale;
          if (hp.attn_softcap > 0) d = hp.attn_softcap * std::tanh(d / hp.attn_softcap);
          s[u] = d;
          mx = std::max(mx, d);
        }
        double sum = 0;
        for (int64_t u = lo; u <= pos; ++u) sum += (s[u] = std::exp(s[u] - mx));
        const float inv = static_cast<float>(1.0 / sum);
        float* o = attn_.data() + t * nq + h * hd;
        std::fill(o, o + hd, 0.0f);
        for (int64_t u = lo; u <= pos; ++u) {
          axpy(s[u] * inv, vc + u * nkv + g * hd, o, hd);
        }
      }
    };
    if (attn_work >= kParallelMinWork)
      par->for_range(N * static_cast<size_t>(H), attention);
    else
      attention(0, N * static_cast<size_t>(H), 0);
    matmul(L.wo, attn_.data(), n, proj_.data(), par);
    add_bias(proj_.data(), L.bo, E);
    for (int t = 0; t < n; ++t) {
      float* pt = proj_.data() + t * E;
      if (!L.attn_post_norm.empty()) rms_norm(pt, L.attn_post_norm, hp.eps, E, pt);
      float* xt = x_.data() + t * E;
      for (int64_t i = 0; i < E; ++i) xt[i] += pt[i];
      rms_norm(xt, L.ffn_norm, hp.eps, E, xn_.data() + t * E);
    }
    if (hp.n_expert > 0) {
      moe_ffn(L, n);
    } else {
      matmul(L.gate, xn_.data(), n, gate_.data(), par);
      matmul(L.up, xn_.data(), n, up_.data(), par);
      glu(gate_.data(), up_.data(), N * F, hp.gelu);
      matmul(L.down, gate_.data(), n, proj_.data(), par);
    }
    for (int t = 0; t < n; ++t) {
      float* pt = proj_.data() + t * E;
      if (!L.ffn_post_norm.empty()) rms_norm(pt, L.ffn_post_norm, hp.eps, E, pt);
      float* xt = x_.data() + t * E;
      for (int64_t i = 0; i < E; ++i) xt[i] += pt[i];
    }
  }
  n_past_ += n;
  if (n_out == 0) return;
  const int first = n - n_out;
  for (int t = 0; t < n_out; ++t)
    rms_norm(x_.data() + (first + t) * E, m.out_norm_, hp.eps, E, xn_.data() + t * E);
  matmul(m.output_, xn_.data(), n_out, out, par);
  if (hp.final_softcap > 0) {
    const size_t total = static_cast<size_t>(n_out) * static_cast<size_t>(mi.n_vocab);
    for (size_t i = 0; i < total; ++i)
      out[i] = hp.final_softcap * std::tanh(out[i] / hp.final_softcap);
  }
}

}  // namespace
}  // namespace smelt::infer
