#include "smelt/eval/eval_model.h"

#include "smelt/error.h"
#include "smelt/io/gguf.h"
#include "smelt/io/model_ref.h"
#include "smelt/tokenizer/gguf_vocab.h"

namespace smelt::eval {

namespace fs = std::filesystem;

EvalModel open_eval_model(const std::string& given, const infer::LoadOptions& given_options) {
  EvalModel m;
  m.label = given;
  std::error_code ec;
  std::string path = given;
  infer::LoadOptions options = given_options;
  if (!fs::exists(path, ec) && given.find('+') != std::string::npos) {
    // MODEL+LORA: the base model's files with the adapter applied as they load.
    const io::ModelRef ref = io::ModelRef::parse(given);
    if (!ref.lora_path.empty()) {
      const io::ResolvedModel r = io::resolve_model(ref);
      path = r.single_file ? r.weight_files.at(0).string() : r.root.string();
      options.lora_adapter = r.lora_dir;
    }
  }
  if (!fs::exists(path, ec)) fail("{}: no such model folder or file", path);
  m.model = infer::Model::load(path, options);
  const bool gguf = fs::is_regular_file(path, ec) && fs::path(path).extension() == ".gguf";
  if (gguf) {
    m.tokenizer = tok::load_gguf_tokenizer(*io::GgufFile::open(path));
  } else {
    const fs::path dir = fs::is_directory(path, ec) ? fs::path(path) : fs::path(path).parent_path();
    if (!fs::exists(dir / "tokenizer.json", ec) && !fs::exists(dir / "tokenizer.model", ec)) {
      fail(
          "{}: no tokenizer files (tokenizer.json or tokenizer.model) beside the weights; smelt "
          "eval needs the model's tokenizer to turn text into tokens",
          path);
    }
    m.tokenizer = tok::Tokenizer::load(dir);
  }
  resolve_special_tokens(m);
  return m;
}

void resolve_special_tokens(EvalModel& m) {
  const auto with = m.tokenizer->encode("a", {.add_special_tokens = true}).ids;
  const auto without = m.tokenizer->encode("a", {.add_special_tokens = false}).ids;
  m.bos.reset();
  if (with.size() > without.size() && !with.empty() &&
      !std::equal(without.begin(), without.end(), with.begin())) {
    m.bos = with.front();
  }
  m.eos = m.model->info().eos_token_ids;
  if (m.eos.empty()) {
    for (const char* name : {"</s>", "<|endoftext|>", "<eos>", "<|im_end|>", "<|eot_id|>"}) {
      if (auto id = m.tokenizer->token_to_id(name); id && m.tokenizer->is_special(*id)) {
        m.eos.push_back(*id);
      }
    }
  }
}

}  // namespace smelt::eval
