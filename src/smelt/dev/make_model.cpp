// Tiny llama-shaped Hugging Face model folders (config, byte-level BPE tokenizer, safetensors).
#include "smelt/dev/make_model.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/random.h"

namespace smelt::dev {
namespace fs = std::filesystem;
using nlohmann::json;
namespace {

// The tensor layout beyond llama's: extra norms and their convention.
enum class Family { kLlama, kQwen3, kGemma2 };

Family family_of(const std::string& architecture) {
  if (architecture == "Qwen3ForCausalLM") return Family::kQwen3;
  if (architecture == "Gemma2ForCausalLM") return Family::kGemma2;
  return Family::kLlama;
}

struct Shape {
  int hidden, intermediate, layers, heads, kv_heads, vocab;
  bool tied;
  int head_dim = 0;  // hidden / heads unless the config says otherwise
  Family family = Family::kLlama;
};

struct GenTensor {
  io::TensorSpec spec;
  // kZeroNorm: a norm applied as (1 + w) (gemma2), so its weights are drawn around 0.
  enum Kind { kWeight, kNorm, kEmbedding, kZeroNorm } kind;
};

std::vector<GenTensor> llama_tensors(const Shape& s, DType dtype) {
  const uint64_t h = s.hidden, v = s.vocab, inter = s.intermediate;
  const uint64_t hd = static_cast<uint64_t>(s.head_dim);
  const uint64_t q = static_cast<uint64_t>(s.heads) * hd;
  const uint64_t kv = static_cast<uint64_t>(s.kv_heads) * hd;
  const bool gemma2 = s.family == Family::kGemma2;
  const GenTensor::Kind norm = gemma2 ? GenTensor::kZeroNorm : GenTensor::kNorm;
  std::vector<GenTensor> out;
  auto add = [&](std::string name, std::vector<uint64_t> shape, GenTensor::Kind kind) {
    out.push_back({{std::move(name), dtype, std::move(shape)}, kind});
  };
  add("model.embed_tokens.weight", {v, h}, GenTensor::kEmbedding);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", {h}, norm);
    add(p + "self_attn.q_proj.weight", {q, h}, GenTensor::kWeight);
    add(p + "self_attn.k_proj.weight", {kv, h}, GenTensor::kWeight);
    add(p + "self_attn.v_proj.weight", {kv, h}, GenTensor::kWeight);
    if (s.family == Family::kQwen3) {
      add(p + "self_attn.q_norm.weight", {hd}, GenTensor::kNorm);
      add(p + "self_attn.k_norm.weight", {hd}, GenTensor::kNorm);
    }
    add(p + "self_attn.o_proj.weight", {h, q}, GenTensor::kWeight);
    add(p + "post_attention_layernorm.weight", {h}, norm);
    if (gemma2) {
      add(p + "pre_feedforward_layernorm.weight", {h}, norm);
      add(p + "post_feedforward_layernorm.weight", {h}, norm);
    }
    add(p + "mlp.gate_proj.weight", {inter, h}, GenTensor::kWeight);
    add(p + "mlp.up_proj.weight", {inter, h}, GenTensor::kWeight);
    add(p + "mlp.down_proj.weight", {h, inter}, GenTensor::kWeight);
  }
  add("model.norm.weight", {h}, norm);
  if (!s.tied) add("lm_head.weight", {v, h}, GenTensor::kEmbedding);
  return out;
}

// GPT-2's byte -> printable unicode mapping used by byte-level BPE.
std::vector<std::string> byte_level_alphabet() {
  std::vector<int> cps(256, -1);
  auto keep = [&](int lo, int hi) {
    for (int b = lo; b <= hi; ++b) cps[b] = b;
  };
  keep('!', '~');
  keep(0xA1, 0xAC);
  keep(0xAE, 0xFF);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    if (cps[b] < 0) cps[b] = next++;
  }
  std::vector<std::string> out;
  for (int cp : cps) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

void write_json(const fs::path& p, const json& j) {
  std::ofstream out(p);
  out << j.dump(2) << "\n";
  if (!out) fail("{}: cannot write", p.string());
}

void write_tokenizer(const fs::path& out, int vocab_size) {
  if (vocab_size < 259) fail("make-model: vocab_size must be >= 259 (3 special + 256 bytes)");
  const std::vector<std::string> specials = {"<unk>", "<s>", "</s>"};
  json vocab = json::object();
  std::vector<std::string> tokens;
  std::set<std::string> known;
  auto add_token = [&](const std::string& t) {
    vocab[t] = static_cast<int>(tokens.size());
    tokens.push_back(t);
    known.insert(t);
  };
  for (const auto& s : specials) add_token(s);
  const auto alphabet = byte_level_alphabet();
  for (const auto& b : alphabet) add_token(b);
  // Merges: grow tokens by appending letters (and "Ġ"-prefixed words), each merge joining two
  // tokens already in the vocabulary, so the BPE model is valid for any requested size.
  std::vector<std::string> letters;
  for (char c : std::string("etaoinshrdlcumwfgypbvkjxqz")) letters.push_back(std::string(1, c));
  json merges = json::array();
  std::vector<std::string> stems = {alphabet[' ']};  // "Ġ"
  for (const auto& l : letters) stems.push_back(l);
  for (size_t si = 0; static_cast<int>(tokens.size()) < vocab_size; ++si) {
    if (si >= stems.size()) fail("make-model: cannot generate {} tokens", vocab_size);
    const std::string stem = stems[si];
    for (const auto& l : letters) {
      if (static_cast<int>(tokens.size()) >= vocab_size) break;
      const std::string t = stem + l;
      if (known.count(t)) continue;
      merges.push_back(stem + " " + l);
      add_token(t);
      stems.push_back(t);
    }
  }
  json added = json::array();
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},
                     {"content", specials[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", true}};
  json tok = {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", byte_level},
              {"post_processor", byte_level},
              {"decoder", byte_level},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}}}};
  write_json(out / "tokenizer.json", tok);
  json decoder = json::object();
  for (int i = 0; i < 3; ++i) {
    decoder[std::to_string(i)] = {{"content", specials[i]}, {"single_word", false},
                                  {"lstrip", false},        {"rstrip", false},
                                  {"normalized", false},    {"special", true}};
  }
  write_json(out / "tokenizer_config.json", {{"add_bos_token", true},
                                             {"add_eos_token", false},
                                             {"added_tokens_decoder", decoder},
                                             {"bos_token", "<s>"},
                                             {"eos_token", "</s>"},
                                             {"unk_token", "<unk>"},
                                             {"clean_up_tokenization_spaces", false},
                                             {"model_max_length", 2048},
                                             {"tokenizer_class", "PreTrainedTokenizerFast"}});
  write_json(out / "special_tokens_map.json",
             {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
}

std::vector<GenTensor> gpt2_tensors(const Shape& s, DType dtype) {
  const uint64_t h = s.hidden, v = s.vocab, inter = s.intermediate;
  std::vector<GenTensor> out;
  auto add = [&](std::string name, std::vector<uint64_t> shape, GenTensor::Kind kind) {
    out.push_back({{std::move(name), dtype, std::move(shape)}, kind});
  };
  add("transformer.wte.weight", {v, h}, GenTensor::kEmbedding);
  add("transformer.wpe.weight", {64, h}, GenTensor::kWeight);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = fmt::format("transformer.h.{}.", l);
    add(p + "ln_1.weight", {h}, GenTensor::kNorm);
    add(p + "ln_1.bias", {h}, GenTensor::kWeight);
    add(p + "attn.c_attn.weight", {h, 3 * h}, GenTensor::kWeight);
    add(p + "attn.c_attn.bias", {3 * h}, GenTensor::kWeight);
    add(p + "attn.c_proj.weight", {h, h}, GenTensor::kWeight);
    add(p + "attn.c_proj.bias", {h}, GenTensor::kWeight);
    add(p + "ln_2.weight", {h}, GenTensor::kNorm);
    add(p + "ln_2.bias", {h}, GenTensor::kWeight);
    add(p + "mlp.c_fc.weight", {h, inter}, GenTensor::kWeight);
    add(p + "mlp.c_fc.bias", {inter}, GenTensor::kWeight);
    add(p + "mlp.c_proj.weight", {inter, h}, GenTensor::kWeight);
    add(p + "mlp.c_proj.bias", {h}, GenTensor::kWeight);
  }
  add("transformer.ln_f.weight", {h}, GenTensor::kNorm);
  add("transformer.ln_f.bias", {h}, GenTensor::kWeight);
  return out;
}

json gpt2_config(const Shape& s, const MakeModelOptions& o, DType dtype) {
  return {{"architectures", {o.architecture}},
          {"model_type", o.model_type},
          {"n_embd", s.hidden},
          {"n_head", s.heads},
          {"n_inner", s.intermediate},
          {"n_layer", s.layers},
          {"n_positions", 64},
          {"vocab_size", s.vocab},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", std::string(torch_dtype_name(dtype))}};
}

json rope_scaling_config(const MakeModelOptions& o) {
  if (o.rope_scaling.empty()) return nullptr;
  if (o.rope_scaling == "linear") return {{"rope_type", "linear"}, {"factor", o.rope_factor}};
  if (o.rope_scaling == "llama3") {
    return {{"rope_type", "llama3"},
            {"factor", o.rope_factor},
            {"low_freq_factor", 1.0},
            {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", o.rope_original_context}};
  }
  fail("make-model: unknown rope scaling '{}' (linear or llama3)", o.rope_scaling);
}

// Gemma2ForCausalLM's config.json (transformers' Gemma2Config keys).
json gemma2_config(const Shape& s, const MakeModelOptions& o, DType dtype) {
  return {
      {"architectures", {o.architecture}},
      {"model_type", o.model_type},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"attn_logit_softcapping", o.attn_logit_softcapping},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"final_logit_softcapping", o.final_logit_softcapping},
      {"head_dim", s.head_dim},
      {"hidden_act", "gelu_pytorch_tanh"},
      {"hidden_activation", "gelu_pytorch_tanh"},
      {"hidden_size", s.hidden},
      {"initializer_range", 0.02},
      {"intermediate_size", s.intermediate},
      {"max_position_embeddings", 8192},
      {"num_attention_heads", s.heads},
      {"num_hidden_layers", s.layers},
      {"num_key_value_heads", s.kv_heads},
      {"pad_token_id", 0},
      {"query_pre_attn_scalar", o.query_pre_attn_scalar > 0 ? o.query_pre_attn_scalar : s.head_dim},
      {"rms_norm_eps", 1e-6},
      {"rope_scaling", rope_scaling_config(o)},
      {"rope_theta", o.rope_theta},
      {"sliding_window", o.sliding_window > 0 ? o.sliding_window : 4096},
      {"tie_word_embeddings", true},
      {"torch_dtype", std::string(torch_dtype_name(dtype))},
      {"transformers_version", "4.46.0"},
      {"use_cache", true},
      {"vocab_size", s.vocab}};
}

json llama_config(const Shape& s, const MakeModelOptions& o, DType dtype) {
  if (s.family == Family::kGemma2) return gemma2_config(s, o, dtype);
  json config = {{"architectures", {o.architecture}},
                 {"model_type", o.model_type},
                 {"attention_bias", false},
                 {"attention_dropout", 0.0},
                 {"bos_token_id", 1},
                 {"eos_token_id", 2},
                 {"head_dim", s.head_dim},
                 {"hidden_act", "silu"},
                 {"hidden_size", s.hidden},
                 {"initializer_range", 0.02},
                 {"intermediate_size", s.intermediate},
                 {"max_position_embeddings", 2048},
                 {"mlp_bias", false},
                 {"num_attention_heads", s.heads},
                 {"num_hidden_layers", s.layers},
                 {"num_key_value_heads", s.kv_heads},
                 {"pretraining_tp", 1},
                 {"rms_norm_eps", 1e-5},
                 {"rope_scaling", rope_scaling_config(o)},
                 {"rope_theta", o.rope_theta},
                 {"tie_word_embeddings", s.tied},
                 {"torch_dtype", std::string(torch_dtype_name(dtype))},
                 {"transformers_version", "4.46.0"},
                 {"use_cache", true},
                 {"vocab_size", s.vocab}};
  // Keys only some options write, so that the other configs stay as they were.
  if (o.sliding_window > 0) config["sliding_window"] = o.sliding_window;
  if (s.family == Family::kQwen3) config["use_sliding_window"] = false;
  return config;
}

// Assigns tensors to `n` shards of roughly equal bytes, keeping order.
io::ShardLayout even_layout(const std::vector<io::TensorSpec>& specs, int n) {
  uint64_t total = 0;
  for (const auto& s : specs) total += s.nbytes();
  io::ShardLayout layout;
  layout.shards.resize(static_cast<size_t>(n));
  uint64_t before = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    size_t shard =
        total == 0 ? 0 : static_cast<size_t>((before * static_cast<uint64_t>(n)) / total);
    shard = std::min(shard, static_cast<size_t>(n - 1));
    // Never leave an earlier shard empty: each shard gets at least one tensor when possible.
    shard = std::min(shard, i);
    layout.shards[shard].push_back(i);
    before += specs[i].nbytes();
  }
  std::erase_if(layout.shards, [](const auto& s) { return s.empty(); });
  layout.file_names = io::shard_file_names(layout.shards.size());
  return layout;
}

}  // namespace

void make_model(const MakeModelOptions& o, const fs::path& out) {
  std::error_code ec;
  if (fs::exists(out) && !fs::is_empty(out, ec)) {
    fail("make-model: {} exists and is not empty", out.string());
  }
  fs::create_directories(out);
  std::shared_ptr<io::Model> base;
  Shape s{};
  DType dtype = o.dtype;
  json base_config;
  if (!o.base.empty()) {
    io::ModelRef ref;
    ref.path = o.base.string();
    base = io::Model::open(io::resolve_model(ref));
    if (base->resolved().config_json.empty())
      fail("make-model: base {} has no config.json", o.base.string());
    std::ifstream in(base->resolved().config_json);
    base_config = json::parse(in);
    const bool g = base_config.contains("n_layer");
    s.hidden = base_config.at(g ? "n_embd" : "hidden_size");
    s.intermediate = base_config.at(g ? "n_inner" : "intermediate_size");
    s.layers = base_config.at(g ? "n_layer" : "num_hidden_layers");
    s.heads = base_config.at(g ? "n_head" : "num_attention_heads");
    s.kv_heads = base_config.value("num_key_value_heads", s.heads);
    s.vocab = base_config.at("vocab_size");
    s.tied = g || base_config.value("tie_word_embeddings", false);
    if (base_config.contains("architectures") && base_config["architectures"].is_array() &&
        !base_config["architectures"].empty() && base_config["architectures"][0].is_string()) {
      s.family = family_of(base_config["architectures"][0].get<std::string>());
    }
    if (s.family == Family::kGemma2) s.tied = true;
    if (base_config.contains("head_dim") && base_config["head_dim"].is_number_integer()) {
      s.head_dim = base_config["head_dim"];
    }
    if (auto d = parse_torch_dtype(base_config.value("torch_dtype", "float32"))) dtype = *d;
  } else {
    s.hidden = o.hidden_size;
    s.intermediate =
        o.intermediate_size > 0 ? o.intermediate_size : (2 * o.hidden_size + 7) / 8 * 8;
    s.layers = o.num_layers;
    s.heads = o.num_heads;
    s.kv_heads = o.num_kv_heads > 0 ? o.num_kv_heads : o.num_heads;
    s.vocab = o.vocab_size;
    s.tied = o.tied_embeddings;
    s.family = family_of(o.architecture);
    if (s.family == Family::kGemma2) s.tied = true;  // Gemma2 ties its head to the embeddings
    s.head_dim = o.head_dim;
  }
  // head_dim defaults to hidden / heads, which must then divide evenly.
  const bool explicit_hd = s.head_dim > 0;
  if (s.hidden <= 0 || s.layers < 0 || s.heads <= 0 || (!explicit_hd && s.hidden % s.heads != 0) ||
      s.kv_heads <= 0 || s.heads % s.kv_heads != 0 || s.intermediate <= 0 || s.head_dim < 0) {
    fail(
        "make-model: inconsistent shape (hidden {} must be a positive multiple of heads {}, and "
        "heads a multiple of kv heads {})",
        s.hidden, s.heads, s.kv_heads);
  }
  if (!explicit_hd) s.head_dim = s.hidden / s.heads;
  if (!dtype_is_convertible_float(dtype))
    fail("make-model: dtype {} is not a float type", dtype_name(dtype));

  const bool gpt2 = base ? base_config.contains("n_layer") : o.style == "gpt2";
  if (!base && o.style != "llama" && o.style != "gpt2")
    fail("make-model: unknown style '{}'", o.style);
  std::vector<GenTensor> gen = gpt2 ? gpt2_tensors(s, dtype) : llama_tensors(s, dtype);
  std::vector<io::TensorSpec> specs;
  for (auto& g : gen) {
    if (base) {
      const io::ModelTensor bt = base->find(g.spec.name);
      if (!bt.info) fail("make-model: base has no tensor '{}'", g.spec.name);
      g.spec.dtype = bt.info->dtype;
    }
    specs.push_back(g.spec);
  }
  std::map<std::string, std::string> meta;
  io::ShardedWriter writer(out, specs, even_layout(specs, std::max(1, o.shards)), meta);

  std::vector<float> values;
  std::vector<char> bytes;
  for (size_t i = 0; i < gen.size(); ++i) {
    const io::TensorSpec& spec = specs[i];
    const uint64_t n = spec.numel();
    values.resize(n);
    const uint64_t key = kernels::stream_key(o.seed, spec.name);
    if (base) {
      const io::ModelTensor bt = base->find(spec.name);
      bytes.resize(bt.info->nbytes);
      bt.file->read(*bt.info, 0, bytes.data(), bytes.size());
      kernels::to_f32(bt.info->dtype, bytes.data(), values.data(), n);
      const uint64_t sparse_key = kernels::stream_key(o.seed, spec.name, 1);
      for (uint64_t j = 0; j < n; ++j) {
        if (o.sparsity > 0 && kernels::random_uniform(sparse_key, j) < o.sparsity) continue;
        values[j] += static_cast<float>(o.delta_scale) * kernels::random_normal(key, j);
      }
    } else {
      for (uint64_t j = 0; j < n; ++j) {
        const float z = kernels::random_normal(key, j);
        switch (gen[i].kind) {
          case GenTensor::kNorm:
            values[j] = 1.0f + 0.1f * z;
            break;
          case GenTensor::kZeroNorm:
            values[j] = 0.1f * z;
            break;
          default:
            values[j] = static_cast<float>(o.weight_std) * z;
        }
      }
    }
    bytes.resize(spec.nbytes());
    kernels::from_f32(spec.dtype, values.data(), bytes.data(), n);
    writer.write(i, 0, bytes.data(), bytes.size());
  }
  writer.finish();

  json config = base ? base_config : gpt2 ? gpt2_config(s, o, dtype) : llama_config(s, o, dtype);
  if (base) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json"}) {
      const fs::path src = base->resolved().root / f;
      if (fs::exists(src)) fs::copy_file(src, out / f, fs::copy_options::overwrite_existing);
    }
  } else {
    write_tokenizer(out, s.vocab);
    write_json(out / "generation_config.json",
               {{"bos_token_id", 1}, {"eos_token_id", 2}, {"transformers_version", "4.46.0"}});
  }
  write_json(out / "config.json", config);
}

}  // namespace smelt::dev
