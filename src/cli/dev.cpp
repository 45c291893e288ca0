// `smelt dev make-model`: hidden developer verb that generates tiny llama-shaped test models.
#include "cli/common.h"
#include "smelt/dev/make_model.h"
#include "smelt/error.h"

namespace smelt::cli {

void add_dev(CLI::App& app) {
  CLI::App* dev = app.add_subcommand("dev", "developer tools");
  dev->group("");  // hidden from the main help
  dev->require_subcommand(1);
  auto o = std::make_shared<dev::MakeModelOptions>();
  auto out = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("BF16");
  auto base = std::make_shared<std::string>();
  CLI::App* mk = dev->add_subcommand(
      "make-model",
      "Write a tiny llama-shaped HF model folder (config, tokenizer, safetensors).\n"
      "--arch Qwen3ForCausalLM / Gemma2ForCausalLM add those families' norms and config keys.\n"
      "Example:\n  smelt dev make-model base --layers 2 --hidden 64\n"
      "  smelt dev make-model ft1 --base base --delta-scale 0.01 --seed 1");
  mk->add_option("out", *out, "output folder")->required();
  mk->add_option("--hidden", o->hidden_size, "hidden size")->capture_default_str();
  mk->add_option("--intermediate", o->intermediate_size, "MLP size (0 = 2*hidden)");
  mk->add_option("--layers", o->num_layers, "layers")->capture_default_str();
  mk->add_option("--heads", o->num_heads, "attention heads")->capture_default_str();
  mk->add_option("--kv-heads", o->num_kv_heads, "key/value heads (0 = heads)");
  mk->add_option("--vocab", o->vocab_size, "vocabulary size (>= 259)")->capture_default_str();
  mk->add_option("--dtype", *dtype, "F32, F16, BF16, ...")->capture_default_str();
  mk->add_option("--shards", o->shards, "number of shard files")->capture_default_str();
  mk->add_option("--seed", o->seed, "random seed")->capture_default_str();
  mk->add_flag("--tied", o->tied_embeddings, "tie lm_head to the embeddings (no lm_head tensor)");
  mk->add_option("--arch", o->architecture, "config.json architectures[0]")->capture_default_str();
  mk->add_option("--model-type", o->model_type, "config.json model_type")->capture_default_str();
  mk->add_option("--style", o->style, "tensor names: llama or gpt2")->capture_default_str();
  mk->add_option("--head-dim", o->head_dim, "config head_dim (0 = hidden/heads)");
  mk->add_option("--sliding-window", o->sliding_window,
                 "config sliding_window (0 = none; gemma2 then writes 4096)");
  mk->add_option("--rope-theta", o->rope_theta, "config rope_theta")->capture_default_str();
  mk->add_option("--rope-scaling", o->rope_scaling, "config rope_scaling type: linear or llama3")
      ->check(CLI::IsMember({"", "linear", "llama3"}));
  mk->add_option("--rope-factor", o->rope_factor, "rope_scaling factor")->capture_default_str();
  mk->add_option("--rope-original-context", o->rope_original_context,
                 "llama3 rope_scaling original_max_position_embeddings")
      ->capture_default_str();
  mk->add_option("--weight-std", o->weight_std, "std of the random matrices")
      ->capture_default_str();
  mk->add_option("--attn-softcap", o->attn_logit_softcapping, "gemma2 attn_logit_softcapping")
      ->capture_default_str();
  mk->add_option("--query-pre-attn-scalar", o->query_pre_attn_scalar,
                 "gemma2 query_pre_attn_scalar (0 = head_dim)");
  mk->add_option("--final-softcap", o->final_logit_softcapping, "gemma2 final_logit_softcapping")
      ->capture_default_str();
  mk->add_option("--base", *base, "make a fine-tune of this model folder");
  mk->add_option("--delta-scale", o->delta_scale, "fine-tune delta std")->capture_default_str();
  mk->add_option("--sparsity", o->sparsity, "fraction of zero delta elements")
      ->capture_default_str();
  mk->callback([o, out, dtype, base] {
    auto d = parse_dtype(*dtype);
    if (!d) d = parse_torch_dtype(*dtype);
    if (!d) fail("--dtype: unknown dtype '{}'", *dtype);
    o->dtype = *d;
    o->base = *base;
    dev::make_model(*o, *out);
  });
}

}  // namespace smelt::cli
