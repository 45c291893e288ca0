// Rows gathered from other tensors (row_gather.h).
#include "smelt/io/row_gather.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>

#include "smelt/error.h"
#include "smelt/kernels/convert.h"

namespace smelt::io {
namespace {

size_t element_bytes(DType t) { return static_cast<size_t>(std::max(1, dtype_bits(t) / 8)); }

void check_source(const ModelTensor& s, uint64_t cols, const std::string& what) {
  if (!s.info || !s.file) fail("internal: {} has no source tensor", what);
  const TensorInfo& t = *s.info;
  if (t.shape.size() != 2 || t.shape[1] != cols) {
    fail(
        "{}: tensor '{}' has shape [{}] but the embedding rows it gives have {} columns; the "
        "inputs of a vocabulary merge must share their hidden size",
        s.file->path().string(), t.name, fmt::join(t.shape, ", "), cols);
  }
  if (t.quantized() || !dtype_is_convertible_float(t.dtype)) {
    fail(
        "{}: tensor '{}' is stored as {}; a vocabulary merge (tokenizer_source / tokenizer) "
        "needs float embeddings",
        s.file->path().string(), t.name, t.quantized() ? "GGUF blocks" : dtype_name(t.dtype));
  }
}

}  // namespace

RowGatherFile::RowGatherFile(RowGatherSpec spec) : spec_(std::move(spec)) {
  if (!spec_.own.info) fail("internal: row gather '{}' has no own tensor", spec_.name);
  if (spec_.own.info->shape.size() != 2) {
    fail("{}: tensor '{}' is not 2-D", spec_.own.file->path().string(), spec_.own.info->name);
  }
  cols_ = spec_.own.info->shape[1];
  check_source(spec_.own, cols_, spec_.name);
  if (spec_.own_row.size() != spec_.real_rows || spec_.total_rows < spec_.real_rows) {
    fail("internal: row gather '{}': {} row entries for {} rows", spec_.name, spec_.own_row.size(),
         spec_.real_rows);
  }
  const uint64_t own_rows = spec_.own.info->shape[0];
  for (int64_t r : spec_.own_row) {
    if (r >= 0 && static_cast<uint64_t>(r) >= own_rows) {
      fail(
          "{}: tensor '{}' has {} rows but the tokenizer maps a token to row {}; its config's "
          "vocabulary size exceeds the tensor",
          spec_.own.file->path().string(), spec_.own.info->name, own_rows, r);
    }
  }
  if (spec_.defaults) {
    for (const auto& [row, terms] : *spec_.defaults) {
      for (const RowTerm& t : terms) {
        check_source(t.source, cols_, spec_.name);
        if (t.row >= t.source.info->shape[0]) {
          fail("{}: tensor '{}' has {} rows; row {} does not exist", t.source.file->path().string(),
               t.source.info->name, t.source.info->shape[0], t.row);
        }
      }
    }
  }
  TensorInfo info;
  info.name = spec_.name;
  info.dtype = spec_.own.info->dtype;
  info.shape = {spec_.total_rows, cols_};
  info.offset = 0;
  info.nbytes = spec_.total_rows * cols_ * element_bytes(info.dtype);
  infos_.push_back(std::move(info));
}

const TensorInfo* RowGatherFile::find(std::string_view name) const {
  return name == infos_[0].name ? &infos_[0] : nullptr;
}

void RowGatherFile::compute_row(uint64_t r, float* out, std::vector<float>& scratch,
                                std::vector<char>& raw) const {
  const DType dt = infos_[0].dtype;
  auto read_row = [&](const ModelTensor& src, uint64_t row, float* dst) {
    const size_t es = element_bytes(src.info->dtype);
    raw.resize(cols_ * es);
    src.file->read(*src.info, row * cols_ * es, raw.data(), cols_ * es);
    kernels::to_f32(src.info->dtype, raw.data(), dst, cols_);
  };
  if (r >= spec_.real_rows) {
    compute_padding();
    std::memcpy(out, padding_.data(), cols_ * sizeof(float));
    return;
  }
  if (spec_.own_row[r] >= 0) {
    read_row(spec_.own, static_cast<uint64_t>(spec_.own_row[r]), out);
    return;
  }
  std::fill(out, out + cols_, 0.0f);
  if (!spec_.defaults) return;
  const auto it = spec_.defaults->find(r);
  if (it == spec_.defaults->end()) return;
  // A weighted sum in f32 in the terms' order (the mean of present models: sum, then / count as
  // the weights say), rounded to the stored dtype as a stored row would be.
  scratch.resize(cols_);
  std::vector<double> acc(cols_, 0.0);
  for (const RowTerm& t : it->second) {
    read_row(t.source, t.row, scratch.data());
    for (uint64_t c = 0; c < cols_; ++c) acc[c] += t.weight * scratch[c];
  }
  for (uint64_t c = 0; c < cols_; ++c) out[c] = static_cast<float>(acc[c]);
  raw.resize(cols_ * element_bytes(dt));
  kernels::from_f32(dt, out, raw.data(), cols_);
  kernels::to_f32(dt, raw.data(), out, cols_);
}

void RowGatherFile::compute_padding() const {
  std::call_once(padding_once_, [&] {
    std::vector<double> sum(cols_, 0.0);
    std::vector<float> row(cols_), scratch;
    std::vector<char> raw;
    for (uint64_t r = 0; r < spec_.real_rows; ++r) {
      compute_row(r, row.data(), scratch, raw);
      for (uint64_t c = 0; c < cols_; ++c) sum[c] += row[c];
    }
    std::vector<float> mean(cols_);
    const double n = static_cast<double>(std::max<uint64_t>(spec_.real_rows, 1));
    for (uint64_t c = 0; c < cols_; ++c) mean[c] = static_cast<float>(sum[c] / n);
    const DType dt = infos_[0].dtype;
    raw.resize(cols_ * element_bytes(dt));
    kernels::from_f32(dt, mean.data(), raw.data(), cols_);
    kernels::to_f32(dt, raw.data(), mean.data(), cols_);
    padding_ = std::move(mean);
  });
}

void RowGatherFile::read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const {
  if (&t != &infos_[0] || offset > t.nbytes || size > t.nbytes - offset) {
    fail("internal: read of {} bytes at {} outside computed tensor '{}' ({} bytes)", size, offset,
         t.name, t.nbytes);
  }
  const DType dt = t.dtype;
  const uint64_t es = element_bytes(dt), row_bytes = cols_ * es;
  std::vector<float> row(cols_), scratch;
  std::vector<char> raw, packed(row_bytes);
  char* out = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < size) {
    const uint64_t at = offset + done, r = at / row_bytes, in_row = at % row_bytes;
    const uint64_t take = std::min(row_bytes - in_row, size - done);
    compute_row(r, row.data(), scratch, raw);
    kernels::from_f32(dt, row.data(), packed.data(), cols_);
    std::memcpy(out + done, packed.data() + in_row, take);
    done += take;
  }
}

}  // namespace smelt::io
