// The pickle of a PyTorch state dict (docs/pytorch.md), read by an allow-list machine that never
// imports or calls anything: it understands the opcodes and the few torch globals a state dict
// uses and turns the pickle into tensor descriptors (which storage, offset, shape, strides).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/dtype.h"
#include "smelt/error.h"

namespace smelt::io {

// Limits of the pickle machine (a real state dict of 100k tensors stays far below them).
inline constexpr uint64_t kMaxPickleBytes = 256ull << 20;
inline constexpr uint64_t kMaxPickleObjects = 1ull << 22;
inline constexpr uint64_t kMaxPickleStack = 1ull << 20;
inline constexpr uint64_t kMaxPickleMemo = 1ull << 22;
inline constexpr size_t kMaxTensorDims = 16;

// One tensor of a state dict as the pickle describes it. Element (i0..ik) lives at element
// `storage_offset + sum(i_d * stride_d)` of the storage.
struct TorchTensorRef {
  std::string name;
  std::string storage_key;      // zip: record data/<key>; legacy: the storage's root key
  DType dtype = DType::kF32;    // from the storage class (torch.BFloat16Storage -> BF16)
  uint64_t storage_numel = 0;   // elements of the (root) storage
  uint64_t storage_offset = 0;  // elements; includes a legacy storage view's offset
  std::vector<uint64_t> shape;
  std::vector<uint64_t> stride;  // elements
};

// Thrown when the pickle stops before STOP: the caller may retry with more bytes of the file.
class PickleTruncated : public Error {
 public:
  using Error::Error;
};

// Reads the state-dict pickle `data` (a zip archive's data.pkl) and returns its tensors in
// pickle order. Every tensor's storage extent is checked to fit the storage's element count.
// Throws smelt::Error naming `label`, the byte offset (plus `base_offset`) and the cause: a
// global outside the allow-list (named), an unsupported opcode, a limit exceeded, a top-level
// object that is not a dict of tensors; PickleTruncated when the bytes end early.
std::vector<TorchTensorRef> parse_state_dict_pickle(std::string_view data, const std::string& label,
                                                    uint64_t base_offset = 0);

// The pickles at the head of a legacy (non-zip) torch.save file: the tensors, then the storages
// in the order their raw bytes follow `data_start`.
struct TorchLegacyHead {
  std::vector<TorchTensorRef> tensors;
  std::vector<std::string> storage_order;
  uint64_t data_start = 0;  // offset of the first storage's 8-byte element count
};

// Parses the magic number, protocol version, system info, state dict and storage key list of a
// legacy file whose first bytes are `data` (the persistent ids carry a 6th item, the view).
// Throws like parse_state_dict_pickle; PickleTruncated when `data` ends inside a pickle.
TorchLegacyHead parse_legacy_head(std::string_view data, const std::string& label);

}  // namespace smelt::io
