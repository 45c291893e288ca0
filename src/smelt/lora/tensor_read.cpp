// Tensors read in bounded chunks and converted to f32 by the dtype kernels.
#include "smelt/lora/tensor_read.h"

#include <algorithm>

#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/kernels/convert.h"

namespace smelt::lora {

std::vector<float> read_tensor_f32(const io::ModelTensor& t) {
  const io::TensorInfo& info = *t.info;
  if (info.quantized() || !dtype_is_convertible_float(info.dtype)) {
    fail("tensor '{}' in {}: dtype {} cannot be read as floating point", info.name,
         t.file->path().string(), dtype_name(info.dtype));
  }
  const uint64_t n = info.numel();
  const uint64_t elem = static_cast<uint64_t>(std::max(1, dtype_bits(info.dtype) / 8));
  if (n * elem != info.nbytes) {
    fail("tensor '{}' in {}: {} bytes for {} elements", info.name, t.file->path().string(),
         info.nbytes, n);
  }
  std::vector<float> out(n);
  constexpr uint64_t kChunk = uint64_t{1} << 20;  // elements per read
  std::vector<char> raw(static_cast<size_t>(std::min(n, kChunk) * elem));
  for (uint64_t off = 0; off < n; off += kChunk) {
    const uint64_t c = std::min(kChunk, n - off);
    t.file->read(info, off * elem, raw.data(), c * elem);
    kernels::to_f32(info.dtype, raw.data(), out.data() + off, static_cast<size_t>(c));
  }
  return out;
}

}  // namespace smelt::lora
