// libFuzzer target: PyTorch checkpoints. The first byte picks the entry point: 0 = the rest is a
// data.pkl state-dict pickle, 1 = the head of a legacy file, else the rest is a whole .bin file
// opened by TorchFile::open and every tensor's first bytes read. smelt::Error is the expected
// outcome for bad input; anything else (a crash, a leak, another exception) is a finding.
#include <algorithm>
#include <vector>

#include "fuzz_util.h"
#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/io/torch_bin.h"
#include "smelt/io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest = smelt::fuzz::as_text(data + 1, size - 1);
  try {
    if (data[0] == 0) {
      for (const auto& t : smelt::io::parse_state_dict_pickle(rest, "fuzz")) {
        // Guaranteed: every tensor lies inside its storage.
        uint64_t last = t.storage_offset;
        bool empty = false;
        for (size_t d = 0; d < t.shape.size(); ++d) {
          if (t.shape[d] == 0) empty = true;
          if (t.shape[d] > 0) last += (t.shape[d] - 1) * t.stride[d];
        }
        if (!empty && last >= t.storage_numel) __builtin_trap();
      }
    } else if (data[0] == 1) {
      (void)smelt::io::parse_legacy_head(rest, "fuzz");
    } else {
      static smelt::fuzz::MemFile file;
      auto f = smelt::io::TorchFile::open(file.write(rest));
      std::vector<char> buf(64);
      for (const smelt::io::TensorInfo& t : f->tensors()) {
        if (f->find(t.name) != &t) __builtin_trap();
        if (smelt::dtype_bytes(t.dtype, t.numel()) != t.nbytes) __builtin_trap();
        if (t.contiguous && (t.offset > f->file_size() || t.nbytes > f->file_size() - t.offset)) {
          __builtin_trap();
        }
        const uint64_t n = std::min<uint64_t>(t.nbytes, buf.size());
        f->read(t, 0, buf.data(), n);
      }
    }
  } catch (const smelt::Error&) {
  }
  return 0;
}
