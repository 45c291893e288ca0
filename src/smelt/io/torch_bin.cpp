// torch.save checkpoints: container detection, zip records and legacy storages mapped to tensor
// byte ranges, and gathered reads of strided views (docs/pytorch.md).
#include "smelt/io/torch_bin.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "smelt/error.h"
#include "smelt/io/torch_pickle.h"
#include "smelt/io/zip_reader.h"

namespace smelt::io {
namespace fs = std::filesystem;
namespace {

// Where the legacy head is first looked for; grown 8x while the pickles run past it.
constexpr uint64_t kFirstLegacyRead = 1ull << 20;

uint64_t element_size(DType t) { return static_cast<uint64_t>(dtype_bits(t)) / 8; }

// Reverses the bytes of each `esize`-byte element of `data`.
void swap_elements(char* data, uint64_t n, uint64_t esize) {
  if (esize <= 1) return;
  for (uint64_t i = 0; i < n; ++i) std::reverse(data + i * esize, data + (i + 1) * esize);
}

}  // namespace

bool is_torch_file_name(const fs::path& path) {
  const std::string ext = path.extension().string();
  return ext == ".bin" || ext == ".pt" || ext == ".pth";
}

TorchFile::~TorchFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::shared_ptr<TorchFile> TorchFile::open(const fs::path& path) {
  std::shared_ptr<TorchFile> f(new TorchFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) fail("{}: cannot open ({})", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(f->fd_, &st) != 0) fail("{}: cannot stat ({})", path.string(), std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file", path.string());
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  unsigned char head[8] = {};
  const uint64_t n = std::min<uint64_t>(sizeof(head), f->file_size_);
  pread_exact(f->fd_, head, n, 0, path, "");
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) {
    f->parse_zip();
  } else if (n >= 2 && head[0] == 0x80 && head[1] <= 5) {
    f->parse_legacy();
  } else {
    char tar[5] = {};
    if (f->file_size_ >= 262) pread_exact(f->fd_, tar, 5, 257, path, "");
    if (std::memcmp(tar, "ustar", 5) == 0) {
      fail(
          "{}: a tar-format PyTorch checkpoint (torch < 0.4) is not supported; re-save it with "
          "a current torch.save",
          path.string());
    }
    fail("{}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)",
         path.string());
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->by_name_.emplace(f->tensors_[i].name, i);
  return f;
}

void TorchFile::parse_zip() {
  const std::string label = path_.string();
  const auto read = [&](void* dst, uint64_t size, uint64_t pos) {
    pread_exact(fd_, dst, size, pos, path_, "");
  };
  const std::vector<ZipEntry> entries = read_zip_directory(read, file_size_, label);
  std::unordered_map<std::string_view, const ZipEntry*> by_name;
  const ZipEntry* pickle = nullptr;
  for (const ZipEntry& e : entries) {
    by_name.emplace(e.name, &e);
    // torch writes "<folder>/data.pkl"; records are found by that folder, whatever it is named.
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.substr(slash) == "/data.pkl") {
      if (pickle) {
        fail("{}: holds two state-dict pickles ({} and {}); not a torch.save file", label,
             pickle->name, e.name);
      }
      pickle = &e;
    }
  }
  if (!pickle) {
    fail("{}: is a zip archive without a <folder>/data.pkl record; not a torch.save checkpoint",
         label);
  }
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - 8);  // "<folder>/"
  if (pickle->size > kMaxPickleBytes) {
    fail("{}: {} is {} bytes, more than the limit of {}", label, pickle->name, pickle->size,
         kMaxPickleBytes);
  }
  bool swap = false;
  if (auto it = by_name.find(prefix + "byteorder"); it != by_name.end()) {
    std::string order(std::min<uint64_t>(it->second->size, 16), '\0');
    read(order.data(), order.size(), it->second->data_offset);
    if (order == "big") {
      swap = true;
    } else if (order != "little") {
      fail("{}: {} says '{}'; expected 'little' or 'big'", label, it->second->name, order);
    }
  }
  std::string text(pickle->size, '\0');
  read(text.data(), text.size(), pickle->data_offset);
  const std::vector<TorchTensorRef> refs =
      parse_state_dict_pickle(text, label + " (" + pickle->name + ")", pickle->data_offset);
  for (const TorchTensorRef& ref : refs) {
    const std::string record = prefix + "data/" + ref.storage_key;
    auto it = by_name.find(record);
    if (it == by_name.end()) {
      fail("{}: tensor '{}' uses storage '{}', but the archive has no record {}", label, ref.name,
           ref.storage_key, record);
    }
    const auto need = dtype_bytes(ref.dtype, ref.storage_numel);
    if (!need || *need > it->second->size) {
      fail(
          "{}: record {} holds {} bytes, less than its {} {} elements need; the file is "
          "truncated or corrupt",
          label, record, it->second->size, ref.storage_numel, dtype_name(ref.dtype));
    }
    add_tensor(ref, it->second->data_offset, swap);
  }
}

void TorchFile::parse_legacy() {
  const std::string label = path_.string();
  TorchLegacyHead head;
  for (uint64_t want = std::min(file_size_, kFirstLegacyRead);;) {
    std::string text(want, '\0');
    pread_exact(fd_, text.data(), want, 0, path_, "");
    try {
      head = parse_legacy_head(text, label);
      break;
    } catch (const PickleTruncated&) {
      if (want == file_size_ || want >= kMaxPickleBytes) throw;
      want = std::min({file_size_, want * 8, kMaxPickleBytes});
    }
  }
  // The storages follow in storage_order, each an 8-byte element count then its raw bytes.
  std::unordered_map<std::string, DType> dtype_of;
  for (const TorchTensorRef& ref : head.tensors) {
    auto [it, added] = dtype_of.emplace(ref.storage_key, ref.dtype);
    if (!added && it->second != ref.dtype) {
      fail("{}: storage '{}' is used as both {} and {}", label, ref.storage_key,
           dtype_name(it->second), dtype_name(ref.dtype));
    }
  }
  struct Placed {
    uint64_t start, numel;
  };
  std::unordered_map<std::string, Placed> placed;
  uint64_t pos = head.data_start;
  for (const std::string& key : head.storage_order) {
    auto dt = dtype_of.find(key);
    if (dt == dtype_of.end()) {
      fail("{}: storage '{}' at offset {} is used by no tensor, so its element size is unknown",
           label, key, pos);
    }
    if (pos > file_size_ || file_size_ - pos < 8) {
      fail(
          "{}: storage '{}' should start at offset {}, past the end of the file ({} bytes); the "
          "file is truncated",
          label, key, pos, file_size_);
    }
    unsigned char count_le[8];
    pread_exact(fd_, count_le, 8, pos, path_, "");
    uint64_t count = 0;
    for (int k = 0; k < 8; ++k) count |= static_cast<uint64_t>(count_le[k]) << (8 * k);
    const auto bytes = dtype_bytes(dt->second, count);
    if (!bytes || *bytes > file_size_ - pos - 8) {
      fail(
          "{}: storage '{}' at offset {} claims {} elements, more than the rest of the file "
          "holds; the file is truncated or corrupt",
          label, key, pos, count);
    }
    if (!placed.emplace(key, Placed{pos + 8, count}).second) {
      fail("{}: storage '{}' is listed twice", label, key);
    }
    pos += 8 + *bytes;
  }
  for (TorchTensorRef ref : head.tensors) {
    auto it = placed.find(ref.storage_key);
    if (it == placed.end()) {
      fail("{}: tensor '{}' uses storage '{}', which the file does not hold", label, ref.name,
           ref.storage_key);
    }
    if (it->second.numel < ref.storage_numel) {
      fail("{}: storage '{}' holds {} elements but the pickle says {}; the file is corrupt", label,
           ref.storage_key, it->second.numel, ref.storage_numel);
    }
    add_tensor(ref, it->second.start, false);
  }
}

void TorchFile::add_tensor(const TorchTensorRef& ref, uint64_t storage_start, bool swap) {
  const uint64_t esize = element_size(ref.dtype);
  TensorInfo t;
  t.name = ref.name;
  t.dtype = ref.dtype;
  t.shape = ref.shape;
  uint64_t numel = 1;
  bool contiguous = true;
  uint64_t expected = 1;  // C-order stride of the current dimension
  for (size_t d = ref.shape.size(); d-- > 0;) {
    const uint64_t n = ref.shape[d];
    if (n != 1 && ref.stride[d] != expected) contiguous = false;
    if (n != 0 && expected > UINT64_MAX / n)
      expected = UINT64_MAX;  // only compared below
    else
      expected *= n;
    numel = n == 0 || numel == 0 ? 0 : (numel > UINT64_MAX / n ? UINT64_MAX : numel * n);
  }
  // A view may repeat elements (stride 0); gathering it must not allocate more than the storage.
  if (numel > ref.storage_numel) {
    fail(
        "{}: tensor '{}' has {} elements over a storage of {} (an expanded view); save a "
        ".contiguous() copy instead",
        path_.string(), ref.name, numel, ref.storage_numel);
  }
  t.nbytes = numel * esize;
  t.offset = storage_start + ref.storage_offset * esize;
  t.contiguous = (contiguous || numel == 0) && !(swap && esize > 1);
  layouts_.push_back({ref.stride, swap && esize > 1});
  tensors_.push_back(std::move(t));
}

const TensorInfo* TorchFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::shared_ptr<const std::vector<char>> TorchFile::gather(size_t index) const {
  {
    std::lock_guard lock(mutex_);
    if (cached_index_ == index) return cached_;
  }
  const TensorInfo& t = tensors_[index];
  const Layout& l = layouts_[index];
  const uint64_t esize = element_size(t.dtype);
  const size_t dims = t.shape.size();
  // The storage span the view touches (checked against the storage when the file was opened).
  uint64_t last = 0;
  for (size_t d = 0; d < dims; ++d) last += (t.shape[d] - 1) * l.stride[d];
  std::vector<char> span((last + 1) * esize);
  pread_exact(fd_, span.data(), span.size(), t.offset, path_, t.name);
  auto out = std::make_shared<std::vector<char>>(t.nbytes);
  std::vector<uint64_t> idx(dims, 0);
  const uint64_t numel = t.nbytes / esize;
  uint64_t src = 0;  // element index into span
  for (uint64_t i = 0; i < numel; ++i) {
    std::memcpy(out->data() + i * esize, span.data() + src * esize, esize);
    for (size_t d = dims; d-- > 0;) {  // odometer step in C order
      src += l.stride[d];
      if (++idx[d] < t.shape[d]) break;
      src -= l.stride[d] * t.shape[d];
      idx[d] = 0;
    }
  }
  if (l.swap) swap_elements(out->data(), numel, esize);
  std::lock_guard lock(mutex_);
  cached_index_ = index;
  cached_ = out;
  return out;
}

void TorchFile::read(const TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const {
  const auto index = static_cast<size_t>(&t - tensors_.data());
  if (&t < tensors_.data() || index >= tensors_.size()) {
    fail("{}: tensor '{}' is not one of this file's tensors", path_.string(), t.name);
  }
  if (offset > t.nbytes || size > t.nbytes - offset) {
    fail("{}: tensor '{}': read of {} bytes at {} is outside its {} bytes", path_.string(), t.name,
         size, offset, t.nbytes);
  }
  if (size == 0) return;
  if (t.contiguous) {
    pread_exact(fd_, dst, size, t.offset + offset, path_, t.name);
    return;
  }
  const auto bytes = gather(index);
  std::memcpy(dst, bytes->data() + offset, size);
}

}  // namespace smelt::io
