// Exact streaming top-k selection by magnitude (TopKMagnitude): the k elements of largest |x| of
// a vector seen only in chunks, kept without storing the vector.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace smelt::kernels {

// |x| as an integer that orders exactly like |x|: the IEEE-754 bits without the sign bit. -0 and
// +0 are equal; every NaN ranks above +inf.
inline uint32_t magnitude_bits(float x) { return std::bit_cast<uint32_t>(x) & 0x7FFFFFFFu; }

// Keeps exactly the k elements of largest |x| of a vector of numel elements that is only ever
// seen in chunks, without storing it. Pass kHigh histograms the high 16 bits of |x|; pass kLow
// histograms the low 16 bits inside the high bin that holds the k-th largest, which gives the
// exact k-th largest magnitude T and the number of elements strictly above it. Elements equal to
// T are kept in element-index order until k are kept (mergekit breaks such ties arbitrarily), so
// each chunk must know how many tied elements precede it: pass kLow records, per chunk, how many
// of its elements share each low-bit pattern inside the high bin (usually a few hundred
// entries); only when those lists would exceed max_tie_entries does a third pass, kTies, count
// the tied elements per chunk. Pass kHigh also counts each chunk's zeros: when the k-th largest
// is 0 (density at least the nonzero fraction of a sparse task vector), that is all pass kLow
// would find, and the selection needs one pass.
//
// Use: while (pass() != Pass::kDone) { add() every chunk; end_pass(); } then keep_top() chunks.
// Histogram counts are integers, so the result does not depend on the order of add() calls.
// add() may run concurrently for different chunks; end_pass() must run alone. Every pass and
// keep_top() must see the same chunking (a chunk is identified by its offset).
class TopKMagnitude {
 public:
  enum class Pass { kHigh, kLow, kTies, kDone };
  struct Slot;  // a private histogram of one concurrent add() (defined in topk.cpp)
  static constexpr uint64_t kDefaultMaxTieEntries = uint64_t{1} << 19;

  // Selects k of numel elements. k == 0 and k >= numel are decided without any pass.
  TopKMagnitude(uint64_t numel, uint64_t k, uint64_t max_tie_entries = kDefaultMaxTieEntries);
  // A selection whose k is known only after pass kHigh (which does not depend on k): starts in
  // kHigh; set_k must be called before that pass ends.
  static std::unique_ptr<TopKMagnitude> with_k_later(
      uint64_t numel, uint64_t max_tie_entries = kDefaultMaxTieEntries);
  // Sets k during pass kHigh of a with_k_later selection. k == 0 or k >= numel ends the passes
  // at once (pass() becomes kDone; what was added is not needed).
  void set_k(uint64_t k);
  ~TopKMagnitude();
  TopKMagnitude(const TopKMagnitude&) = delete;
  TopKMagnitude& operator=(const TopKMagnitude&) = delete;

  // The pass that add() feeds next.
  Pass pass() const { return pass_; }
  // Feeds elements [offset, offset + n) of the vector, stored at x, to the current pass.
  void add(uint64_t offset, const float* x, size_t n);
  // The same for the vector a − b (elements a[j] − b[j], computed in f32), without storing it.
  void add_difference(uint64_t offset, const float* a, const float* b, size_t n);
  // Finishes the current pass and moves to the next one needed (possibly kDone).
  void end_pass();
  // Pass kHigh's histogram depends only on the vector, so a second selection over the same vector
  // can take it instead of counting: ends this selection's kHigh pass (to which nothing was
  // added) with the histogram of `other`, whose kHigh pass saw every chunk and has not ended yet.
  // Both must be in pass kHigh with the same numel.
  void end_high_pass_from(TopKMagnitude& other);

  // After the passes: zeroes in place the elements of chunk [offset, offset + n) that are not
  // among the k kept. x must hold the values the passes saw.
  void keep_top(uint64_t offset, float* x, size_t n) const;
  // The same for the vector a − b: x = a − b with the elements not kept zeroed (x may be a).
  void keep_top_difference(uint64_t offset, const float* a, const float* b, float* x,
                           size_t n) const;

  // After pass kLow: magnitude_bits of the k-th largest element (0 when k == 0 or k >= numel),
  // and how many elements have a strictly larger magnitude.
  uint32_t threshold_bits() const { return threshold_; }
  uint64_t count_greater() const { return greater_; }

 private:
  struct TieCount {
    uint64_t offset;
    uint64_t equal;         // elements equal to the threshold in this chunk
    uint64_t equal_before;  // elements equal to the threshold in all earlier chunks
  };
  // Pass kLow's record of one chunk: (low 16 bits, count) of its elements in the high bin.
  struct ChunkLows {
    uint64_t offset;
    std::vector<std::pair<uint16_t, uint32_t>> entries;
  };

  void add_bits(uint64_t offset, const float* a, const float* b, size_t n);
  void count_high(const uint32_t* bits, size_t n, Slot* slot);
  void flush(Slot& slot);
  // Index of the bin in which the k-th largest falls, given `above` elements already counted
  // above the histogram's range; adds the counts of higher bins to `above`.
  uint32_t find_bin(uint64_t& above) const;

  uint64_t numel_;
  uint64_t k_;
  uint64_t max_tie_entries_;
  Pass pass_ = Pass::kDone;
  std::unique_ptr<std::atomic<uint64_t>[]> histogram_;  // 65536 bins, kHigh and kLow only
  std::mutex mutex_;                                    // guards slots_, lows_, ties_
  std::vector<Slot*> slots_;                            // kHigh: free private histograms
  std::vector<Slot*> all_slots_;
  std::vector<ChunkLows> lows_;
  uint64_t low_entries_ = 0;
  bool lows_overflow_ = false;  // lows_ grew past max_tie_entries_ and was dropped
  uint32_t high_bin_ = 0;       // selected high 16 bits after kHigh
  uint64_t greater_high_ = 0;   // elements in higher high bins
  uint32_t threshold_ = 0;
  uint64_t greater_ = 0;
  uint64_t tied_to_keep_ = 0;    // elements equal to the threshold that are kept
  bool split_ties_ = false;      // some elements equal to the threshold are dropped
  std::vector<TieCount> ties_;   // sorted by offset after the ties are placed
  std::vector<TieCount> zeros_;  // pass kHigh: each chunk's count of zeros (in `equal`)
};

}  // namespace smelt::kernels
