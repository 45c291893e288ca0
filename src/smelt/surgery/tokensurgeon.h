// `smelt tokensurgeon MODEL DONOR OUT`: MODEL re-targeted to DONOR's tokenizer — new input
// embedding and LM head indexed by donor ids, every other tensor unchanged (docs/tokensurgeon.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "smelt/surgery/token_match.h"

namespace smelt::surgery {

struct TokenSurgeonOptions {
  // "omp" (default), "subword", "mean" or "zero"; mergekit's other methods are refused by name.
  std::string method = "omp";
  size_t k = 64;  // omp: most shared tokens per new token
  // "no", "yes", "embed" (input embedding only) or "lm_head" (LM head only).
  std::string byte_match = "no";
  std::string prefix_match = "no";
  std::string subword_method = "mean";
  size_t threads = 0;  // 0 = one per hardware thread
  bool overwrite = false;
  uint64_t shard_size = 5'000'000'000;
  std::function<void(const std::string&)> on_note;
};

// What was done, for the summary.
struct TokenSurgeonReport {
  std::string embed_name;  // input embedding tensor
  std::string head_name;   // LM head tensor; "" when tied to the embedding
  size_t model_vocab = 0;  // model tokenizer ids
  size_t donor_vocab = 0;  // rows of the new matrices
  MatchCounts embed_counts;
  MatchCounts head_counts;      // equals embed_counts' totals when tied (unused)
  double omp_max_residual = 0;  // largest relative OMP residual in donor space
};

// Checks everything, then writes the re-targeted model at `out` under the rules of every smelt
// output (docs/reliability.md: never into an input, built under a temporary name, published
// whole). MODEL: a safetensors (or PyTorch .bin) model folder with a tokenizer. DONOR: a folder
// with a tokenizer (and weights, needed by omp). Throws smelt::Error saying what to do.
TokenSurgeonReport token_surgeon(const std::string& model_ref, const std::string& donor_ref,
                                 const std::filesystem::path& out,
                                 const TokenSurgeonOptions& options);

}  // namespace smelt::surgery
