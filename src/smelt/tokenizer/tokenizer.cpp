// Tokenizer::load: picks the engine for a model folder or tokenizer file.
#include "smelt/tokenizer/tokenizer.h"

#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "smelt/tokenizer/gguf_vocab.h"
#include "smelt/tokenizer/sentencepiece_model.h"
#include "smelt/tokenizer/tokenizer_json.h"

namespace smelt::tok {
namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> Tokenizer::load(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::is_regular_file(path / "tokenizer.json", ec)) {
      return load_tokenizer_json(path / "tokenizer.json", path);
    }
    if (fs::is_regular_file(path / "tokenizer.model", ec)) {
      return load_sentencepiece(path / "tokenizer.model", path);
    }
    fail("{}: no tokenizer.json or tokenizer.model in this folder", path.string());
  }
  if (!fs::is_regular_file(path, ec))
    fail("{}: no such tokenizer file or model folder", path.string());
  if (path.extension() == ".json") return load_tokenizer_json(path, path.parent_path());
  if (path.extension() == ".gguf") return load_gguf_tokenizer(*io::GgufFile::open(path));
  return load_sentencepiece(path, path.parent_path());
}

}  // namespace smelt::tok
