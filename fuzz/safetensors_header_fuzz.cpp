// libFuzzer target: a whole safetensors file (8-byte header length, JSON header, data) opened by
// SafetensorsFile::open, then every tensor looked up and its first bytes read. smelt::Error is the
// expected outcome for a bad file; anything else (a crash, another exception) is a finding.
#include <algorithm>
#include <vector>

#include "fuzz_util.h"
#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static smelt::fuzz::MemFile file;
  const std::string& path = file.write(smelt::fuzz::as_text(data, size));
  try {
    auto f = smelt::io::SafetensorsFile::open(path);
    std::vector<char> buf(64);
    uint64_t end = 0;
    for (const smelt::io::TensorInfo& t : f->tensors()) {
      // The header's documented guarantees: tensors in data order, inside the file, sized by
      // their shape and dtype, each findable by name.
      if (f->find(t.name) != &t) __builtin_trap();
      if (t.offset < end || t.offset > f->file_size() || t.nbytes > f->file_size() - t.offset) {
        __builtin_trap();
      }
      if (smelt::dtype_bytes(t.dtype, t.numel()) != t.nbytes) __builtin_trap();
      end = t.offset + t.nbytes;
      const uint64_t n = std::min<uint64_t>(t.nbytes, buf.size());
      f->read(t, 0, buf.data(), n);
      (void)t.numel();
    }
    for (const auto& [key, value] : f->metadata()) (void)(key.size() + value.size());
  } catch (const smelt::Error&) {
  }
  return 0;
}
