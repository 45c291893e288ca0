// libFuzzer target: a mergekit YAML config (possibly several documents) parsed into smelt's
// config structs. smelt::Error is the expected outcome for a bad config; anything else (a crash,
// a yaml-cpp or standard exception escaping) is a finding.
#include "fuzz_util.h"
#include "smelt/config/config.h"
#include "smelt/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)smelt::config::parse_config_documents(smelt::fuzz::as_text(data, size), "fuzz.yaml");
  } catch (const smelt::Error&) {
  }
  return 0;
}
