// The SentencePiece engine: tokenizer.model files encoded and decoded by libsentencepiece itself,
// with BOS/EOS added as Hugging Face's Llama tokenizer adds them (docs/tokenizer-sentencepiece.md).
#include "smelt/tokenizer/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "smelt/error.h"

namespace smelt::tok {
namespace fs = std::filesystem;
namespace {

// Reads tokenizer_config.json's boolean `key`: `fallback` when the file, the key or its value is
// absent (null counts as absent, as transformers treats it).
bool config_flag(const nlohmann::json& config, const fs::path& file, const char* key,
                 bool fallback) {
  if (!config.is_object()) return fallback;
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean())
    fail("{}: '{}' must be true or false, not {}", file.string(), key, it->dump());
  return it->get<bool>();
}

// Whether `piece` is longer than its first UTF-8 character, as libsentencepiece's OneCharLen
// measures it (the length its lead byte announces).
bool is_multi_char(const std::string& piece) {
  static constexpr size_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return piece.size() > kLen[static_cast<unsigned char>(piece[0]) >> 4];
}

// Loads `model_file` into `sp`; throws naming the file when libsentencepiece refuses it.
void load_model(sentencepiece::SentencePieceProcessor& sp, const fs::path& model_file) {
  std::error_code ec;
  if (!fs::is_regular_file(model_file, ec))
    fail("{}: no such SentencePiece model file", model_file.string());
  sentencepiece::util::Status status;
  try {
    status = sp.Load(model_file.string());
  } catch (const std::exception& e) {
    // The library also throws: its trie builder refuses a piece that starts with a NUL byte.
    fail("{}: not a SentencePiece model file ({})", model_file.string(), e.what());
  }
  if (!status.ok()) {
    // The library's parse failure names its own source line; say what it means instead.
    std::string reason = status.message();
    if (reason.find("ParseFromArray") != std::string::npos) {
      reason = "the bytes are not a SentencePiece ModelProto";
    }
    fail("{}: not a SentencePiece model file ({})", model_file.string(), reason);
  }
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const fs::path& model_file, const fs::path& config_dir) {
    load_model(sp_, model_file);
    nlohmann::json config;
    const fs::path config_file =
        config_dir.empty() ? fs::path() : config_dir / "tokenizer_config.json";
    std::error_code ec;
    if (!config_file.empty() && fs::is_regular_file(config_file, ec)) {
      std::ifstream in(config_file, std::ios::binary);
      config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (config.is_discarded()) fail("{}: not valid JSON", config_file.string());
    }
    // Llama's HF tokenizer: BOS yes, EOS no unless tokenizer_config.json says otherwise.
    add_bos_ = config_flag(config, config_file, "add_bos_token", true) && sp_.bos_id() >= 0;
    add_eos_ = config_flag(config, config_file, "add_eos_token", false) && sp_.eos_id() >= 0;
  }

  Encoding encode(std::string_view text, const EncodeOptions& options) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(absl::string_view(text.data(), text.size()), &ids);
    if (!status.ok()) fail("SentencePiece could not encode the text: {}", status.message());
    Encoding e;
    const bool special = options.add_special_tokens;
    e.ids.reserve(ids.size() + 2);
    if (special && add_bos_) e.ids.push_back(sp_.bos_id());
    e.ids.insert(e.ids.end(), ids.begin(), ids.end());
    if (special && add_eos_) e.ids.push_back(sp_.eos_id());
    e.tokens.reserve(e.ids.size());
    for (int32_t id : e.ids) e.tokens.push_back(sp_.IdToPiece(id));
    return e;
  }

  std::string decode(const std::vector<int32_t>& ids, const DecodeOptions& options) const override {
    const int n = sp_.GetPieceSize();
    std::vector<int> kept;
    kept.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= n) fail("token id {} is out of range (vocabulary of {} pieces)", id, n);
      if (options.skip_special_tokens && is_special(id)) continue;
      kept.push_back(id);
    }
    std::string text;
    const auto status = sp_.Decode(kept, &text);
    if (!status.ok()) fail("SentencePiece could not decode the ids: {}", status.message());
    return text;
  }

  size_t vocab_size() const override { return static_cast<size_t>(sp_.GetPieceSize()); }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    // PieceToId answers unk_id for pieces it does not know: only an exact round trip counts.
    const int id = sp_.PieceToId(absl::string_view(token.data(), token.size()));
    if (id < 0 || id >= sp_.GetPieceSize() || sp_.IdToPiece(id) != token) return std::nullopt;
    return id;
  }

  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || id >= sp_.GetPieceSize()) return std::nullopt;
    return sp_.IdToPiece(id);
  }

  // Control pieces (<s>, </s>, ...) and the unknown piece, as transformers marks them special;
  // user-defined pieces are ordinary tokens that are never split.
  bool is_special(int32_t id) const override {
    if (id < 0 || id >= sp_.GetPieceSize()) return false;
    return sp_.IsControl(id) || sp_.IsUnknown(id);
  }

  std::string_view kind() const override { return "sentencepiece"; }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  bool add_bos_ = true;
  bool add_eos_ = false;
};

}  // namespace

SentencePieceVocab read_sentencepiece_vocab(const fs::path& model_file) {
  sentencepiece::SentencePieceProcessor sp;
  load_model(sp, model_file);
  const int n = sp.GetPieceSize();
  SentencePieceVocab v;
  v.pieces.reserve(static_cast<size_t>(n));
  v.scores.reserve(static_cast<size_t>(n));
  v.types.reserve(static_cast<size_t>(n));
  for (int id = 0; id < n; ++id) {
    v.pieces.push_back(sp.IdToPiece(id));
    v.scores.push_back(sp.GetScore(id));
    SentencePieceVocab::Type type = SentencePieceVocab::kNormal;
    if (sp.IsUnknown(id)) {
      type = SentencePieceVocab::kUnknown;
    } else if (sp.IsControl(id)) {
      type = SentencePieceVocab::kControl;
    } else if (sp.IsUnused(id)) {
      type = SentencePieceVocab::kUnused;
    } else if (sp.IsByte(id)) {
      type = SentencePieceVocab::kByte;
    }
    v.types.push_back(type);
  }
  // The library's API has no IsUserDefined. SetVocabulary({}) marks every normal piece of more
  // than one character unused and leaves user-defined pieces alone, which tells the two apart;
  // a one-character user-defined piece stays "normal" (docs/tokenizer-sentencepiece.md,
  // "Vocabulary"). Models that are neither BPE nor Unigram refuse the call and keep "normal".
  if (sp.SetVocabulary({}).ok()) {
    for (int id = 0; id < n; ++id) {
      const size_t i = static_cast<size_t>(id);
      if (v.types[i] == SentencePieceVocab::kNormal && !sp.IsUnused(id) &&
          is_multi_char(v.pieces[i])) {
        v.types[i] = SentencePieceVocab::kUserDefined;
      }
    }
  }
  return v;
}

std::unique_ptr<Tokenizer> load_sentencepiece(const fs::path& model_file,
                                              const fs::path& config_dir) {
  return std::make_unique<SentencePieceTokenizer>(model_file, config_dir);
}

}  // namespace smelt::tok
