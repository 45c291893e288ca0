// A 2-D tensor computed from rows of other 2-D tensors, row by row as it is read: the embedding of
// one merge input permuted to the output vocabulary (docs/tokenizer-merge.md, "Embedding
// alignment"). Each output row is one of: a row of the input's own tensor, a weighted sum of rows
// of any inputs (a token the input lacks, or one the config forces), zeros, or, for the padding
// rows past the real vocabulary, the mean of the real rows. A read of any byte range computes only
// the rows it touches, so a merge streams it in chunks like a stored tensor; the padding mean is
// computed once, on the first read of a padding row, in one pass over the real rows.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "smelt/io/model_ref.h"

namespace smelt::io {

// One term of a computed row: weight · row `row` of `source`.
struct RowTerm {
  ModelTensor source;
  uint64_t row = 0;
  double weight = 1.0;
};

// The rows every input of one embedding job shares: output row -> its terms (no terms: zeros).
using RowDefaults = std::map<uint64_t, std::vector<RowTerm>>;

struct RowGatherSpec {
  std::string name;         // the tensor's name (as the input model calls it)
  ModelTensor own;          // the input's stored tensor (2-D, unquantized float)
  uint64_t real_rows = 0;   // rows of the output vocabulary
  uint64_t total_rows = 0;  // real_rows rounded up to the padding multiple
  // own_row[r] >= 0: row r is that row of `own`; -1: row r is defaults->at(r) (zeros when absent).
  std::vector<int64_t> own_row;
  std::shared_ptr<const RowDefaults> defaults;
};

class RowGatherFile final : public TensorFile {
 public:
  // Checks every source: 2-D, the same column count as `own`, an unquantized float dtype, every
  // row index in range. Throws smelt::Error naming the source file and tensor.
  explicit RowGatherFile(RowGatherSpec spec);

  const std::filesystem::path& path() const override { return spec_.own.file->path(); }
  const std::vector<TensorInfo>& tensors() const override { return infos_; }
  uint64_t file_size() const override { return infos_[0].nbytes; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  const TensorInfo* find(std::string_view name) const override;
  void read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const override;

  const TensorInfo& info() const { return infos_[0]; }

 private:
  // Row r as the stored dtype would hold it, widened to f32 (cols floats).
  void compute_row(uint64_t r, float* out, std::vector<float>& scratch,
                   std::vector<char>& raw) const;
  void compute_padding() const;

  RowGatherSpec spec_;
  uint64_t cols_ = 0;
  std::vector<TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
  mutable std::once_flag padding_once_;
  mutable std::vector<float> padding_;  // the mean of the real rows, rounded to the dtype
};

}  // namespace smelt::io
