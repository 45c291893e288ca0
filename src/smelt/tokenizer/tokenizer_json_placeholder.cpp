// Temporary stand-in for the tokenizer.json engine, which another branch implements; the lead
// deletes this file when the two branches are merged (docs/tokenizer.md).
#include "smelt/error.h"
#include "smelt/tokenizer/tokenizer_json.h"

namespace smelt::tok {

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json,
                                               const std::filesystem::path&) {
  fail("{}: tokenizer.json engine not merged yet", tokenizer_json.string());
}

}  // namespace smelt::tok
