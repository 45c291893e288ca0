// libFuzzer target: a model.safetensors.index.json text read by parse_safetensors_index (the
// parser resolve_model and Model::open use). smelt::Error is the expected outcome for a bad
// index; anything else (a crash, a JSON library exception escaping) is a finding.
#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto map = smelt::io::parse_safetensors_index(smelt::fuzz::as_text(data, size),
                                                        "model.safetensors.index.json");
    if (map.empty()) __builtin_trap();  // documented: never empty
  } catch (const smelt::Error&) {
  }
  return 0;
}
