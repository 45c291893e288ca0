// libFuzzer target: a GGUF file as `smelt eval` opens it — the forward pass's loader
// (infer::Model::load: metadata, tensor names, shapes and types) and the tokenizer built from its
// vocabulary (tok::load_gguf_tokenizer); when both load, a few tokens are encoded, run through
// the model and decoded. smelt::Error is the expected outcome for a bad file; anything else (a
// crash, another exception) is a finding.
#include <algorithm>
#include <vector>

#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/infer/model.h"
#include "smelt/io/gguf.h"
#include "smelt/tokenizer/gguf_vocab.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static smelt::fuzz::TempDir dir;
  dir.put("m.gguf", smelt::fuzz::as_text(data, size));
  const auto path = dir.path() / "m.gguf";
  std::unique_ptr<smelt::infer::Model> model;
  std::unique_ptr<smelt::tok::Tokenizer> tokenizer;
  try {
    model = smelt::infer::Model::load(path, {.threads = 1});
  } catch (const smelt::Error&) {
  }
  try {
    tokenizer = smelt::tok::load_gguf_tokenizer(*smelt::io::GgufFile::open(path));
  } catch (const smelt::Error&) {
  }
  try {
    std::vector<int32_t> ids = {0};
    if (tokenizer) {
      ids = tokenizer->encode("Hi 12 w\xc3\xa9!").ids;
      (void)tokenizer->decode(ids);
    }
    if (model && !ids.empty()) {
      auto session = model->new_session(16);
      std::vector<float> logits;
      ids.resize(std::min<size_t>(ids.size(), 8));
      session->decode(ids, 1, logits);
      if (logits.size() != static_cast<size_t>(session->vocab_size())) __builtin_trap();
    }
  } catch (const smelt::Error&) {
  }
  return 0;
}
