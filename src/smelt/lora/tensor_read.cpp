// Tensors read in bounded chunks and converted to f32 by the dtype kernels.
#include "smelt/lora/tensor_read.h"

#include <algorithm>

#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/elementwise.h"

namespace smelt::lora {

namespace {

constexpr uint64_t kChunk = uint64_t{1} << 20;  // elements per read

// The element size of `t`, after checking it can be read as floating point.
uint64_t checked_element_bytes(const io::ModelTensor& t) {
  const io::TensorInfo& info = *t.info;
  if (info.quantized() || !dtype_is_convertible_float(info.dtype)) {
    fail("tensor '{}' in {}: dtype {} cannot be read as floating point", info.name,
         t.file->path().string(), dtype_name(info.dtype));
  }
  const uint64_t elem = static_cast<uint64_t>(std::max(1, dtype_bits(info.dtype) / 8));
  if (info.numel() * elem != info.nbytes) {
    fail("tensor '{}' in {}: {} bytes for {} elements", info.name, t.file->path().string(),
         info.nbytes, info.numel());
  }
  return elem;
}

// Elements [off, off + c) of `t` as f32 into dst, through `raw`.
void read_f32(const io::ModelTensor& t, uint64_t elem, uint64_t off, uint64_t c,
              std::vector<char>& raw, float* dst) {
  raw.resize(static_cast<size_t>(c * elem));
  t.file->read(*t.info, off * elem, raw.data(), c * elem);
  kernels::to_f32(t.info->dtype, raw.data(), dst, static_cast<size_t>(c));
}

}  // namespace

std::vector<float> read_tensor_f32(const io::ModelTensor& t) {
  const uint64_t elem = checked_element_bytes(t);
  const uint64_t n = t.info->numel();
  std::vector<float> out(n);
  std::vector<char> raw;
  for (uint64_t off = 0; off < n; off += kChunk) {
    read_f32(t, elem, off, std::min(kChunk, n - off), raw, out.data() + off);
  }
  return out;
}

void read_difference_f32(const io::ModelTensor& a, const io::ModelTensor& b,
                         std::vector<float>& out) {
  const uint64_t ea = checked_element_bytes(a), eb = checked_element_bytes(b);
  const uint64_t n = a.info->numel();
  if (b.info->numel() != n) {
    fail("internal: tensors '{}' and '{}' differ in size", a.info->name, b.info->name);
  }
  out.resize(n);
  std::vector<char> raw;
  std::vector<float> other(static_cast<size_t>(std::min(n, kChunk)));
  for (uint64_t off = 0; off < n; off += kChunk) {
    const uint64_t c = std::min(kChunk, n - off);
    read_f32(a, ea, off, c, raw, out.data() + off);
    read_f32(b, eb, off, c, raw, other.data());
    kernels::subtract(out.data() + off, other.data(), out.data() + off, static_cast<size_t>(c));
  }
}

}  // namespace smelt::lora
