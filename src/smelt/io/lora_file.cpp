// LoRA adapters applied on read: the row-block computation of W + s·B·A (and DoRA, biases,
// replacement tensors) behind the TensorFile interface.
#include "smelt/io/lora_file.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <list>

#include "smelt/error.h"
#include "smelt/io/model_ref.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/elementwise.h"

namespace smelt::io {
namespace {

// Elements computed at once (a block of whole rows, at least one row): bounds the scratch memory
// of one read to a few MiB whatever the read's size.
constexpr uint64_t kBlockElements = uint64_t{1} << 16;
// Decoded factors kept per model: the tensor being read and the one before (workers read chunks
// of one tensor at a time; two covers a job boundary).
constexpr size_t kCachedTensors = 2;

uint64_t element_size(DType t) { return static_cast<uint64_t>(std::max(1, dtype_bits(t) / 8)); }

// Reads all of adapter tensor `t` as f32.
std::vector<float> read_f32(const TensorFile& file, const TensorInfo& t) {
  std::vector<char> raw(t.nbytes);
  file.read(t, 0, raw.data(), raw.size());
  std::vector<float> out(t.numel());
  kernels::to_f32(t.dtype, raw.data(), out.data(), out.size());
  return out;
}

// The stored base tensor as a matrix: rows = its first dimension.
uint64_t rows_of(const TensorInfo& w) { return w.shape.empty() ? 1 : w.shape[0]; }
uint64_t cols_of(const TensorInfo& w) { return w.numel() / std::max<uint64_t>(1, rows_of(w)); }

}  // namespace

// The decoded factors of one low-rank edit, laid out so that row i of the stored tensor changes
// by left[i,:]·right: left = s·B, right = A (the transposed layouts: left = s·Aᵀ, right = Bᵀ).
struct LoraFactors {
  uint64_t rows = 0, cols = 0, rank = 0;
  std::vector<float> left;           // rows × rank, scaling folded in
  std::vector<float> right;          // rank × cols
  std::vector<float> row_magnitude;  // DoRA on [out, in]: m per row
  std::vector<float> col_factor;     // DoRA on a transposed layout: m_j / ||column j of W + ΔW||
  static uint64_t bytes_for(const LoraEdit& e, const TensorInfo& w) {
    const uint64_t rows = rows_of(w), cols = cols_of(w), r = static_cast<uint64_t>(e.rank);
    return 4 * (rows * r + r * cols + (e.magnitude ? std::max(rows, cols) : 0));
  }
};

// The edits of one model and the factors of the tensors read last, shared by its files.
class LoraFactorCache {
 public:
  LoraFactorCache(std::shared_ptr<const LoraAdapter> adapter, std::vector<LoraEdit> edits)
      : adapter_(std::move(adapter)), edits_(std::move(edits)) {}
  const std::vector<LoraEdit>& edits() const { return edits_; }

  // The factors of `e` (a kLowRank edit of `w` in `base`), decoded on first use.
  std::shared_ptr<const LoraFactors> get(const LoraEdit& e, const TensorFile& base,
                                         const TensorInfo& w) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = recent_.begin(); it != recent_.end(); ++it) {
      if (it->first == &e) {
        recent_.splice(recent_.begin(), recent_, it);
        return recent_.front().second;
      }
    }
    auto f = decode(e, base, w);
    recent_.emplace_front(&e, f);
    while (recent_.size() > kCachedTensors) recent_.pop_back();
    return f;
  }

 private:
  std::shared_ptr<const LoraFactors> decode(const LoraEdit& e, const TensorFile& base,
                                            const TensorInfo& w) const;

  std::shared_ptr<const LoraAdapter> adapter_;
  std::vector<LoraEdit> edits_;
  std::mutex mu_;
  std::list<std::pair<const LoraEdit*, std::shared_ptr<const LoraFactors>>> recent_;
};

namespace {

// out[i, :] = w[i, :] + left[r0 + i, :]·right for n rows (f32), then DoRA's scaling.
void compute_rows(const LoraFactors& f, const float* w, uint64_t r0, uint64_t n, float* out,
                  const std::string& label, const std::string& tensor) {
  const uint64_t cols = f.cols;
  std::memcpy(out, w, n * cols * sizeof(float));
  for (uint64_t i = 0; i < n; ++i) {
    float* row = out + i * cols;
    const float* l = f.left.data() + (r0 + i) * f.rank;
    for (uint64_t k = 0; k < f.rank; ++k) {
      if (l[k] != 0.0f) kernels::scale_add(l[k], f.right.data() + k * cols, row, cols);
    }
    if (!f.row_magnitude.empty()) {
      // DoRA: W' = m · (W + ΔW) / ||W + ΔW||, the norm over each output row (PEFT's
      // get_weight_norm: torch.linalg.norm(W + ΔW, dim=1)).
      const double norm = std::sqrt(kernels::dot(row, row, cols));
      if (!(norm > 0)) {
        fail("{}: DoRA: row {} of '{}' plus the adapter's delta has norm 0; cannot scale it", label,
             r0 + i, tensor);
      }
      kernels::scale(static_cast<float>(f.row_magnitude[r0 + i] / norm), row, row, cols);
    }
    if (!f.col_factor.empty()) {
      for (uint64_t j = 0; j < cols; ++j) row[j] *= f.col_factor[j];
    }
  }
}

}  // namespace

std::shared_ptr<const LoraFactors> LoraFactorCache::decode(const LoraEdit& e,
                                                           const TensorFile& base,
                                                           const TensorInfo& w) const {
  auto f = std::make_shared<LoraFactors>();
  const TensorFile& file = adapter_->file();
  f->rows = rows_of(w);
  f->cols = cols_of(w);
  f->rank = static_cast<uint64_t>(e.rank);
  const uint64_t r = f->rank;
  const auto s = static_cast<float>(e.scaling);
  std::vector<float> a = read_f32(file, *e.a);  // [r, in...] (embedding: [r, vocab])
  std::vector<float> b = read_f32(file, *e.b);  // [out, r...] (embedding: [dim, r])
  if (!e.transposed) {
    f->left = std::move(b);
    for (float& v : f->left) v *= s;
    f->right = std::move(a);
  } else {
    f->left.resize(f->rows * r);
    f->right.resize(r * f->cols);
    for (uint64_t k = 0; k < r; ++k) {
      for (uint64_t i = 0; i < f->rows; ++i) f->left[i * r + k] = s * a[k * f->rows + i];
      for (uint64_t j = 0; j < f->cols; ++j) f->right[k * f->cols + j] = b[j * r + k];
    }
  }
  if (!e.magnitude) return f;
  std::vector<float> m = read_f32(file, *e.magnitude);
  if (!e.transposed) {
    f->row_magnitude = std::move(m);
    return f;
  }
  // DoRA on [in, out] (fan_in_fan_out) or [vocab, dim] (embeddings): PEFT normalises each
  // column of the stored tensor, so the norms need one pass over all of W + ΔW first.
  std::vector<double> sq(f->cols, 0.0);
  const uint64_t es = element_size(w.dtype);
  const uint64_t block_rows = std::max<uint64_t>(1, kBlockElements / f->cols);
  std::vector<char> raw;
  std::vector<float> wf, out;
  for (uint64_t r0 = 0; r0 < f->rows; r0 += block_rows) {
    const uint64_t n = std::min(block_rows, f->rows - r0);
    raw.resize(n * f->cols * es);
    wf.resize(n * f->cols);
    out.resize(n * f->cols);
    base.read(w, r0 * f->cols * es, raw.data(), raw.size());
    kernels::to_f32(w.dtype, raw.data(), wf.data(), wf.size());
    compute_rows(*f, wf.data(), r0, n, out.data(), adapter_->weights_path().string(), w.name);
    for (uint64_t i = 0; i < n; ++i) {
      for (uint64_t j = 0; j < f->cols; ++j) {
        const double v = out[i * f->cols + j];
        sq[j] += v * v;
      }
    }
  }
  f->col_factor.resize(f->cols);
  for (uint64_t j = 0; j < f->cols; ++j) {
    const double norm = std::sqrt(sq[j]);
    if (!(norm > 0)) {
      fail("{}: DoRA: column {} of '{}' plus the adapter's delta has norm 0; cannot scale it",
           adapter_->weights_path().string(), j, w.name);
    }
    f->col_factor[j] = static_cast<float>(m[j] / norm);
  }
  return f;
}

LoraTensorFile::LoraTensorFile(std::shared_ptr<TensorFile> base,
                               std::shared_ptr<const LoraAdapter> adapter,
                               const std::vector<const LoraEdit*>& edits,
                               std::shared_ptr<LoraFactorCache> cache)
    : base_(std::move(base)), adapter_(std::move(adapter)), cache_(std::move(cache)) {
  tensors_ = base_->tensors();
  base_info_.reserve(tensors_.size());
  for (const TensorInfo& t : base_->tensors()) base_info_.push_back(&t);
  edit_.assign(tensors_.size(), nullptr);
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
  for (const LoraEdit* e : edits) {
    auto it = by_name_.find(e->target);
    if (it == by_name_.end()) {
      fail("{}: has no tensor '{}' to apply the adapter to", base_->path().string(), e->target);
    }
    edit_[it->second] = e;
    // Computed bytes: readers must go through read() (TensorInfo::contiguous).
    tensors_[it->second].contiguous = false;
  }
}

LoraTensorFile::~LoraTensorFile() = default;

const TensorInfo* LoraTensorFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

size_t LoraTensorFile::index_of(const TensorInfo& t) const {
  if (!tensors_.empty() && &t >= tensors_.data() && &t < tensors_.data() + tensors_.size()) {
    return static_cast<size_t>(&t - tensors_.data());
  }
  auto it = by_name_.find(t.name);
  if (it == by_name_.end()) fail("{}: has no tensor '{}'", base_->path().string(), t.name);
  return it->second;
}

void LoraTensorFile::read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const {
  const size_t i = index_of(t);
  const LoraEdit* e = edit_[i];
  if (!e) {
    base_->read(*base_info_[i], offset, dst, size);
    return;
  }
  const TensorInfo& w = tensors_[i];
  if (offset > w.nbytes || size > w.nbytes - offset) {
    fail("{}: tensor '{}': read of {} bytes at {} is outside its {} bytes", path().string(), w.name,
         size, offset, w.nbytes);
  }
  if (size == 0) return;
  if (e->kind == LoraEdit::Kind::kLowRank) {
    read_low_rank(i, offset, static_cast<char*>(dst), size);
  } else {
    read_elementwise(i, offset, static_cast<char*>(dst), size);
  }
}

void LoraTensorFile::read_low_rank(size_t i, uint64_t offset, char* dst, uint64_t size) const {
  const LoraEdit& e = *edit_[i];
  const TensorInfo& w = *base_info_[i];
  const std::shared_ptr<const LoraFactors> f = cache_->get(e, *base_, w);
  const uint64_t es = element_size(w.dtype);
  const uint64_t row_bytes = f->cols * es;
  const uint64_t first_row = offset / row_bytes;
  const uint64_t end_row = (offset + size + row_bytes - 1) / row_bytes;
  const uint64_t block_rows = std::max<uint64_t>(1, kBlockElements / f->cols);
  std::vector<char> raw;
  std::vector<float> wf, out;
  for (uint64_t r0 = first_row; r0 < end_row; r0 += block_rows) {
    const uint64_t n = std::min(block_rows, end_row - r0);
    const uint64_t elems = n * f->cols;
    raw.resize(elems * es);
    wf.resize(elems);
    out.resize(elems);
    base_->read(w, r0 * row_bytes, raw.data(), raw.size());
    kernels::to_f32(w.dtype, raw.data(), wf.data(), elems);
    compute_rows(*f, wf.data(), r0, n, out.data(), adapter_->weights_path().string(), w.name);
    // Rounded once, to the base tensor's dtype.
    kernels::from_f32(w.dtype, out.data(), raw.data(), elems);
    const uint64_t block_begin = r0 * row_bytes, block_end = block_begin + raw.size();
    const uint64_t from = std::max(block_begin, offset);
    const uint64_t to = std::min(block_end, offset + size);
    std::memcpy(dst + (from - offset), raw.data() + (from - block_begin), to - from);
  }
}

void LoraTensorFile::read_elementwise(size_t i, uint64_t offset, char* dst, uint64_t size) const {
  const LoraEdit& e = *edit_[i];
  const TensorInfo& w = *base_info_[i];
  const TensorFile& file = adapter_->file();
  const uint64_t es = element_size(w.dtype);
  const uint64_t first = offset / es, end = (offset + size + es - 1) / es;
  const TensorInfo& src = e.kind == LoraEdit::Kind::kReplace ? *e.source : *e.b;
  const uint64_t src_es = element_size(src.dtype);
  std::vector<char> raw, src_raw;
  std::vector<float> v, add;
  for (uint64_t e0 = first; e0 < end; e0 += kBlockElements) {
    const uint64_t n = std::min(kBlockElements, end - e0);
    raw.resize(n * es);
    src_raw.resize(n * src_es);
    v.resize(n);
    file.read(src, e0 * src_es, src_raw.data(), src_raw.size());
    if (e.kind == LoraEdit::Kind::kReplace) {
      kernels::to_f32(src.dtype, src_raw.data(), v.data(), n);
    } else {
      // b' = b + s·lora_B.bias.
      add.resize(n);
      kernels::to_f32(src.dtype, src_raw.data(), add.data(), n);
      base_->read(w, e0 * es, raw.data(), raw.size());
      kernels::to_f32(w.dtype, raw.data(), v.data(), n);
      kernels::scale_add(static_cast<float>(e.scaling), add.data(), v.data(), n);
    }
    if (e.kind == LoraEdit::Kind::kReplace && src.dtype == w.dtype) {
      std::memcpy(raw.data(), src_raw.data(), raw.size());
    } else {
      kernels::from_f32(w.dtype, v.data(), raw.data(), n);
    }
    const uint64_t block_begin = e0 * es, block_end = block_begin + raw.size();
    const uint64_t from = std::max(block_begin, offset);
    const uint64_t to = std::min(block_end, offset + size);
    std::memcpy(dst + (from - offset), raw.data() + (from - block_begin), to - from);
  }
}

std::shared_ptr<Model> apply_lora(const std::shared_ptr<Model>& base,
                                  std::shared_ptr<const LoraAdapter> adapter,
                                  const ResolvedModel& resolved) {
  auto cache = std::make_shared<LoraFactorCache>(adapter, adapter->bind(*base));
  uint64_t largest = 0;
  std::vector<std::vector<const LoraEdit*>> per_file(base->files().size());
  for (const LoraEdit& e : cache->edits()) {
    const ModelTensor mt = base->find(e.target);
    for (size_t f = 0; f < base->files().size(); ++f) {
      if (base->files()[f].get() == mt.file) per_file[f].push_back(&e);
    }
    if (e.kind == LoraEdit::Kind::kLowRank) {
      largest = std::max(largest, LoraFactors::bytes_for(e, *mt.info));
    }
  }
  std::vector<std::shared_ptr<TensorFile>> files;
  for (size_t f = 0; f < base->files().size(); ++f) {
    files.push_back(
        std::make_shared<LoraTensorFile>(base->files()[f], adapter, per_file[f], cache));
  }
  return Model::from_files(resolved, std::move(files), kCachedTensors * largest);
}

}  // namespace smelt::io
