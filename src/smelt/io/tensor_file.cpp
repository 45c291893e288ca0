// TensorInfo and the pread loop both tensor file readers use.
#include "smelt/io/tensor_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::io {

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

bool TensorInfo::quantized() const {
  // ggml ids of F32, F16, the integer types, F64 and BF16 are plain element types.
  return ggml_type >= 0 && ggml_type != 0 && ggml_type != 1 &&
         !(ggml_type >= 24 && ggml_type <= 28) && ggml_type != 30;
}

void pread_exact(int fd, void* dst, uint64_t size, uint64_t pos, const std::filesystem::path& path,
                 std::string_view tensor) {
  const int64_t r = pread_full(fd, dst, size, pos);
  if (r != static_cast<int64_t>(size)) {
    fail("{}: tensor '{}': read failed: {} (was the file changed while merging?)", path.string(),
         tensor, r < 0 ? errno_text() : "unexpected end of file");
  }
}

}  // namespace smelt::io
