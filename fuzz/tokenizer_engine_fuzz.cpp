// libFuzzer target: the tokenizer.json engine (src/smelt/tokenizer, docs/tokenizer.md). The input
// is a tokenizer.json; when it holds a NUL byte, the part after the first NUL is text to encode
// (JSON text never holds a raw NUL), else a fixed mixed-script text is encoded. A loaded
// tokenizer also encodes without special tokens and decodes what it encoded. smelt::Error is
// the expected outcome for bad files; anything else is a finding.
#include <string>

#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/tokenizer/tokenizer_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const smelt::fuzz::TempDir dir;
  const std::string_view input = smelt::fuzz::as_text(data, size);
  const size_t nul = input.find('\0');
  dir.put("tokenizer.json", input.substr(0, nul));
  const std::string text =
      nul == std::string_view::npos
          ? std::string("Héllo wörld 123 你好 مرحبا 🤖 <s> a\tb\n  end")
          : std::string(input.substr(nul + 1));
  try {
    auto tok = smelt::tok::load_tokenizer_json(dir.path() / "tokenizer.json", {});
    const smelt::tok::Encoding e = tok->encode(text);
    (void)tok->encode(text, {.add_special_tokens = false});
    (void)tok->decode(e.ids);
    (void)tok->decode(e.ids, {.skip_special_tokens = true});
    for (int32_t id : e.ids) (void)tok->id_to_token(id);
  } catch (const smelt::Error&) {
  }
  return 0;
}
