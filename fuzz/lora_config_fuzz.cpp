// libFuzzer target: an adapter_config.json text read by parse_lora_config (the parser
// LoraAdapter::open uses), then every rank and scaling asked for a module name. smelt::Error is
// the expected outcome for a bad config; anything else (a crash, a JSON or regex library
// exception escaping) is a finding.
#include <cmath>

#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/io/lora_adapter.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const smelt::io::LoraConfig c =
        smelt::io::parse_lora_config(smelt::fuzz::as_text(data, size), "adapter_config.json");
    for (const char* m : {"model.layers.0.self_attn.q_proj", "lm_head", ""}) {
      if (c.rank_of(m) <= 0) __builtin_trap();  // documented: ranks are positive
      if (!std::isfinite(c.alpha_of(m))) __builtin_trap();
    }
  } catch (const smelt::Error&) {
  }
  return 0;
}
