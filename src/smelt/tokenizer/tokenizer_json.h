// The tokenizer.json engine: every component type of Hugging Face's tokenizer.json format
// (normalizers, pre-tokenizers, models, post-processors, decoders, added tokens), loaded and run
// as the reference library runs them, plus the edits the vocabulary work needs (docs/tokenizer.md).
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "smelt/tokenizer/added_vocabulary.h"
#include "smelt/tokenizer/json_where.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::tok {

// A tokenizer.json pipeline. Edits change the parsed JSON and rebuild the pipeline from it, so a
// saved file keeps every field of the original that smelt did not touch.
class JsonTokenizer : public Tokenizer {
 public:
  // Loads `tokenizer_json`; `config_dir` (may be empty) holds tokenizer_config.json and
  // special_tokens_map.json when present. Throws smelt::Error naming the file.
  JsonTokenizer(const std::filesystem::path& tokenizer_json,
                const std::filesystem::path& config_dir);
  // Builds the pipeline from a tokenizer.json document held in memory, without
  // tokenizer_config.json; `name` stands for the file in error messages.
  JsonTokenizer(Json doc, std::string name);
  ~JsonTokenizer() override;

  Encoding encode(std::string_view text, const EncodeOptions& options = {}) const override;
  std::string decode(const std::vector<int32_t>& ids,
                     const DecodeOptions& options = {}) const override;
  size_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  std::string_view kind() const override { return "tokenizer.json"; }

  // Adds tokens (their `id` is ignored) and returns their ids, as the reference library's
  // add_tokens does: a token already added keeps its id and takes the new flags; a token of the
  // model vocab gets the model's id; any other gets the next free id.
  std::vector<int32_t> add_tokens(const std::vector<AddedToken>& tokens);
  // Removes every id >= n: model vocab entries, the BPE merges that use or produce them, added
  // tokens, and tokenizer_config.json / special_tokens_map.json references to them. Throws when
  // the post-processor or the model's unk token needs a removed id.
  void truncate_vocab(size_t n);
  // Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir`.
  void save(const std::filesystem::path& dir) const;

  const Json& json() const { return doc_; }
  // The added tokens in tokenizer.json order, a repeated entry once, with their ids and flags.
  const std::vector<AddedToken>& added_tokens() const;

 private:
  struct Pipeline;
  // Builds the pipeline from doc_ and config_ (throws naming file_ on any problem).
  std::unique_ptr<Pipeline> build() const;
  // tokenizer.json's "truncation" applied to an encoding before post-processing.
  void truncate(const Pipeline& p, bool add_special_tokens, Encoding& out) const;
  // Applies an edit to doc_/config_/special_map_ and rebuilds, restoring all three on failure.
  template <typename Edit>
  void edit(Edit&& change);

  std::string file_;
  std::string config_file_;
  Json doc_;
  Json config_;       // tokenizer_config.json, or null
  Json special_map_;  // special_tokens_map.json, or null
  std::unique_ptr<Pipeline> pipeline_;
};

// Loads `tokenizer_json` as a JsonTokenizer (see the constructor).
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json,
                                               const std::filesystem::path& config_dir);

}  // namespace smelt::tok
