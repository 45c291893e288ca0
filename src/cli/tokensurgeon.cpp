// `smelt tokensurgeon MODEL DONOR OUT`: a model re-targeted to another tokenizer
// (docs/tokensurgeon.md).
#include "smelt/surgery/tokensurgeon.h"

#include <fmt/format.h>

#include <memory>
#include <string>

#include "cli/common.h"
#include "smelt/io/safetensors.h"

namespace smelt::cli {
namespace {

struct TokenSurgeonCliOptions {
  std::string model, donor, out;
  surgery::TokenSurgeonOptions options;
  std::string shard_size = "5B";
};

void print_counts(const std::string& what, const surgery::MatchCounts& c) {
  fmt::print("{}: {} exact, {} byte, {} prefix, {} approximated", what, c.exact, c.byte, c.prefix,
             c.approximated);
  if (c.none) fmt::print(", {} ids without a token (zero rows)", c.none);
  fmt::print("\n");
}

void run_tokensurgeon(TokenSurgeonCliOptions& o) {
  o.options.shard_size = io::parse_shard_size(o.shard_size);
  o.options.on_note = [](const std::string& text) { fmt::print(stderr, "note: {}\n", text); };
  const surgery::TokenSurgeonReport r = surgery::token_surgeon(o.model, o.donor, o.out, o.options);
  fmt::print("re-targeted {} ({} ids) to the tokenizer of {} ({} ids) with {}\n", o.model,
             r.model_vocab, o.donor, r.donor_vocab, o.options.method);
  print_counts(r.embed_name + (r.head_name.empty() ? " (tied LM head)" : ""), r.embed_counts);
  if (!r.head_name.empty()) print_counts(r.head_name, r.head_counts);
  if (o.options.method == "omp") {
    fmt::print("omp: largest relative residual in donor space {:.3g}\n", r.omp_max_residual);
  }
  fmt::print("wrote {}\n", o.out);
}

}  // namespace

void add_tokensurgeon(CLI::App& app) {
  auto o = std::make_shared<TokenSurgeonCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokensurgeon",
      "Re-target MODEL to DONOR's tokenizer (mergekit-tokensurgeon): new input embedding and LM\n"
      "head indexed by the donor's ids; tokens the model has keep their rows, the others are\n"
      "approximated. Everything else is copied unchanged. See docs/tokensurgeon.md.\n"
      "Examples:\n"
      "  smelt tokensurgeon ./model ./donor ./model-donor-tok\n"
      "  smelt tokensurgeon ./model ./donor ./out --approximation-method subword "
      "--subword-method weighted_mean\n"
      "  smelt tokensurgeon ./model ./donor ./out --k 32 --byte-match yes --prefix-match embed");
  cmd->add_option("model", o->model, "model folder (safetensors weights, config, tokenizer)")
      ->required();
  cmd->add_option("donor", o->donor,
                  "folder with the new tokenizer (and weights, for --approximation-method omp)")
      ->required();
  cmd->add_option("out", o->out, "output model folder")->required();
  cmd->add_option("-a,--approximation-method", o->options.method,
                  "omp, subword, mean or zero (rows of tokens the model lacks)")
      ->capture_default_str();
  cmd->add_option("-k,--k", o->options.k, "omp: most shared tokens combined per new token")
      ->capture_default_str();
  cmd->add_option("--byte-match", o->options.byte_match,
                  "match <0xNN> byte tokens with one-byte character tokens: yes, no, embed, "
                  "lm_head")
      ->capture_default_str();
  cmd->add_option("--prefix-match", o->options.prefix_match,
                  "give a new token the row of its longest known prefix: yes, no, embed, lm_head")
      ->capture_default_str();
  cmd->add_option("-s,--subword-method", o->options.subword_method,
                  "subword: mean, sum, weighted_mean or first_last")
      ->capture_default_str();
  cmd->add_option("-j,--threads", o->options.threads, "threads (0 = one per core)")
      ->capture_default_str();
  cmd->add_option("--out-shard-size", o->shard_size,
                  "largest shard in bytes (k/m/b decimal suffixes)")
      ->capture_default_str();
  cmd->add_flag("--force,--overwrite", o->options.overwrite,
                "replace an existing output (only a folder of model files)");
  cmd->callback([o] { run_tokensurgeon(*o); });
}

}  // namespace smelt::cli
