// libFuzzer target: a whole GGUF file opened by GgufFile::open, then every metadata value read
// through each accessor, re-encoded, and every tensor's first bytes read. smelt::Error is the
// expected outcome for a bad file; anything else (a crash, another exception) is a finding.
#include <algorithm>
#include <vector>

#include "fuzz_util.h"
#include "smelt/error.h"
#include "smelt/io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static smelt::fuzz::MemFile file;
  const std::string& path = file.write(smelt::fuzz::as_text(data, size));
  try {
    auto f = smelt::io::GgufFile::open(path);
    for (const smelt::io::GgufKv& kv : f->kvs()) {
      if (f->find_kv(kv.key) == nullptr) __builtin_trap();
      const smelt::io::GgufValue& v = kv.value;
      (void)v.as_uint();
      (void)v.as_int();
      (void)v.as_float();
      (void)v.as_bool();
      (void)v.as_string();
      (void)v.string_array();
      (void)v.to_string();
      (void)kv.encode();
      if (v.is_array()) {
        for (uint64_t i = 0; i < std::min<uint64_t>(v.size(), 4); ++i) (void)v.at(i).to_string();
      }
    }
    std::vector<char> buf(64);
    uint64_t end = 0;
    for (const smelt::io::TensorInfo& t : f->tensors()) {
      // The reader's documented guarantees: data in tensor-info order without overlap, aligned,
      // inside the file; each tensor findable by name.
      if (f->find(t.name) != &t) __builtin_trap();
      if (t.offset < end || t.offset % f->alignment() != 0 || t.offset > f->file_size() ||
          t.nbytes > f->file_size() - t.offset) {
        __builtin_trap();
      }
      end = t.offset + t.nbytes;
      f->read(t, 0, buf.data(), std::min<uint64_t>(t.nbytes, buf.size()));
    }
  } catch (const smelt::Error&) {
  }
  return 0;
}
