// `smelt tokenize MODEL TEXT|--file F`: a model's tokenizer run on a text (ids and tokens), or
// `--decode ID...` back to text (docs/tokenizer-sentencepiece.md).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/tokenizer/tokenizer.h"

namespace smelt::cli {
namespace {
namespace fs = std::filesystem;

struct TokenizeOptions {
  std::string model;
  std::string text;
  std::string file;
  std::vector<int32_t> decode;
  bool json = false;
  bool no_special = false;
  bool skip_special = false;
};

// The tokenizer of a model folder or tokenizer file, else of a Hub id in the local cache.
std::unique_ptr<tok::Tokenizer> load_tokenizer(const std::string& model) {
  std::error_code ec;
  if (fs::exists(model, ec)) return tok::Tokenizer::load(model);
  return tok::Tokenizer::load(io::resolve_model(io::ModelRef::parse(model)).root);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read this file", path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// JSON text of strings that come from a vocabulary: invalid UTF-8 becomes U+FFFD.
std::string dump(const nlohmann::ordered_json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void run_decode(const tok::Tokenizer& t, const TokenizeOptions& o) {
  const std::string text = t.decode(o.decode, {.skip_special_tokens = o.skip_special});
  if (o.json) {
    fmt::print("{}\n", dump({{"ids", o.decode}, {"text", text}}));
  } else {
    fmt::print("{}\n", printable(text));
  }
}

void run_tokenize(const TokenizeOptions& o) {
  auto t = load_tokenizer(o.model);
  if (!o.decode.empty()) {
    if (!o.text.empty() || !o.file.empty()) fail("--decode takes ids, not TEXT or --file");
    run_decode(*t, o);
    return;
  }
  if (!o.text.empty() && !o.file.empty()) fail("give TEXT or --file, not both");
  if (o.text.empty() && o.file.empty())
    fail("nothing to tokenize: give TEXT, --file F or --decode ID...");
  const std::string text = o.file.empty() ? o.text : read_text_file(o.file);
  const tok::Encoding e = t->encode(text, {.add_special_tokens = !o.no_special});
  if (o.json) {
    nlohmann::ordered_json j;
    j["ids"] = e.ids;
    j["tokens"] = e.tokens;
    fmt::print("{}\n", dump(j));
    return;
  }
  // Tokens come from a stranger's vocabulary: printable() keeps escape sequences off the terminal.
  fmt::print("{} tokens ({} tokenizer, vocabulary of {})\n", e.ids.size(), t->kind(),
             t->vocab_size());
  for (size_t i = 0; i < e.ids.size(); ++i) {
    fmt::print("{:>8}  {}{}\n", e.ids[i], printable(e.tokens[i]),
               t->is_special(e.ids[i]) ? "  (special)" : "");
  }
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "Run a model's tokenizer: text to ids and tokens, or ids back to text.\n"
      "MODEL: a model folder (tokenizer.json, else tokenizer.model), a tokenizer.json or\n"
      "tokenizer.model file, or a Hugging Face id in the local cache.\n"
      "Examples:\n  smelt tokenize ./my-model \"Hello world\"\n"
      "  smelt tokenize ./my-model --file prompt.txt --json\n"
      "  smelt tokenize ./my-model --decode 1 15043 3186");
  cmd->add_option("model", opts->model, "model folder or tokenizer file")->required();
  cmd->add_option("text", opts->text, "the text to tokenize");
  cmd->add_option("--file,-f", opts->file, "tokenize this file's contents instead of TEXT");
  cmd->add_option("--decode", opts->decode, "decode these ids to text")->expected(1, -1);
  cmd->add_flag("--json", opts->json, "machine-readable output");
  cmd->add_flag("--no-special", opts->no_special,
                "do not add special tokens (BOS/EOS, templates): add_special_tokens=False");
  cmd->add_flag("--skip-special", opts->skip_special, "with --decode: leave special tokens out");
  cmd->callback([opts] { run_tokenize(*opts); });
}

}  // namespace smelt::cli
