// libFuzzer target: the tokenizer files of a model folder turned into GGUF metadata by
// gguf_export_kvs (fixed small llama config.json). The input is tokenizer.json; when it holds a
// NUL byte, the part after the first NUL is tokenizer_config.json (JSON text never holds a raw
// NUL). smelt::Error is the expected outcome for bad files; anything else is a finding.
#include <cstring>
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/io/gguf_export.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const smelt::fuzz::TempDir dir;
  static const nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"max_position_embeddings", 128},
      {"hidden_size", 64},
      {"intermediate_size", 128},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 4},
      {"rms_norm_eps", 1e-5},
      {"vocab_size", 32},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  const std::string_view text = smelt::fuzz::as_text(data, size);
  const size_t nul = text.find('\0');
  dir.put("tokenizer.json", text.substr(0, nul));
  if (nul == std::string_view::npos) {
    dir.remove("tokenizer_config.json");
  } else {
    dir.put("tokenizer_config.json", text.substr(nul + 1));
  }
  try {
    (void)smelt::io::gguf_export_kvs(dir.path(), config, "fuzz", -1);
  } catch (const smelt::Error&) {
  }
  return 0;
}
