// libFuzzer target: a SentencePiece tokenizer.model (protobuf ModelProto) read through
// libsentencepiece by gguf_sentencepiece_vocab, at its own size and padded/cut to a fixed
// vocabulary size.
// smelt::Error is the expected outcome for a bad file; anything else is a finding.
#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/io/gguf_export.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static smelt::fuzz::MemFile file;
  const std::string& path = file.write(smelt::fuzz::as_text(data, size));
  for (const int64_t vocab_size : {int64_t{-1}, int64_t{8}}) {
    try {
      (void)smelt::io::gguf_sentencepiece_vocab(path, vocab_size);
    } catch (const smelt::Error&) {
    }
  }
  return 0;
}
