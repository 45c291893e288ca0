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
//
// A selection can start with a sample (sample_first): pass kSample sees only some chunks (any
// subset, e.g. every 16th) and estimates in which high bins the k-th largest falls. Pass kHigh
// then also records, per chunk, the low 16 bits of the elements in a window of up to
// kMaxWindowBins high bins around that estimate; when the k-th largest lands inside the window,
// those records are what pass kLow would have gathered, and the selection ends after kHigh
// (docs/performance.md, "One-pass top-k"). When it lands outside, or the records exceed
// max_tie_entries, pass kLow runs as without a sample. The window only decides how many passes
// run, never what is selected.
//
// Use: while (pass() != Pass::kDone) { add() every chunk; end_pass(); } then keep_top() chunks
// (in pass kSample, add() may see only some of the chunks). Histogram counts are integers, so
// the result does not depend on the order of add() calls. add() may run concurrently for
// different chunks; end_pass() must run alone. Every full pass and keep_top() must see the same
// chunking (a chunk is identified by its offset).
class TopKMagnitude {
 public:
  enum class Pass { kSample, kHigh, kLow, kTies, kDone };
  struct Slot;  // a private histogram of one concurrent add() (defined in topk.cpp)
  static constexpr uint64_t kDefaultMaxTieEntries = uint64_t{1} << 19;
  // The widest window of high bins pass kHigh records after a sample.
  static constexpr uint32_t kMaxWindowBins = 8;

  // Selects k of numel elements. k == 0 and k >= numel are decided without any pass.
  TopKMagnitude(uint64_t numel, uint64_t k, uint64_t max_tie_entries = kDefaultMaxTieEntries);
  // A selection whose k is known only after pass kHigh (which does not depend on k): starts in
  // kHigh; set_k must be called before that pass ends.
  static std::unique_ptr<TopKMagnitude> with_k_later(
      uint64_t numel, uint64_t max_tie_entries = kDefaultMaxTieEntries);
  // Sets k during pass kHigh of a with_k_later selection. k == 0 or k >= numel ends the passes
  // at once (pass() becomes kDone; what was added is not needed).
  void set_k(uint64_t k);
  // Starts with pass kSample. Call before anything is added; no effect on a selection that
  // needs no pass (k == 0 or k >= numel).
  void sample_first();
  // For a with_k_later selection that samples: an estimate of k, given during pass kSample (k
  // itself is set during kHigh as usual). Without it, the sample chooses no window.
  void estimate_k(uint64_t k) { k_estimate_ = k; }
  ~TopKMagnitude();
  TopKMagnitude(const TopKMagnitude&) = delete;
  TopKMagnitude& operator=(const TopKMagnitude&) = delete;

  // The pass that add() feeds next.
  Pass pass() const { return pass_; }
  // Feeds elements [offset, offset + n) of the vector, stored at x, to the current pass.
  void add(uint64_t offset, const float* x, size_t n);
  // The same for the vector a − b (elements a[j] − b[j], computed in f32), without storing it.
  // `also`: a second selection over the same vector, in the same pass, that takes this one's
  // histogram (end_pass_from) instead of counting; in pass kHigh it receives its own window
  // records from this call.
  void add_difference(uint64_t offset, const float* a, const float* b, size_t n,
                      TopKMagnitude* also = nullptr);
  // add_difference for a and b given as bf16 values (their exact f32 values), in passes kSample
  // and kHigh only (pass kLow throws std::logic_error): a statistics pass can then read bf16
  // inputs without converting them first (docs/performance.md, "Round 6").
  static bool takes_bf16(Pass pass) { return pass == Pass::kSample || pass == Pass::kHigh; }
  void add_difference_bf16(uint64_t offset, const uint16_t* a, const uint16_t* b, size_t n,
                           TopKMagnitude* also = nullptr);
  // Finishes the current pass and moves to the next one needed (possibly kDone).
  void end_pass();
  // Passes kSample and kHigh count a histogram that depends only on the vector, so a second
  // selection over the same vector can take it instead of counting: ends this selection's pass
  // (to which nothing was added, except through `also`) with the histogram of `other`, whose
  // pass saw the same chunks and has not ended yet. Both must be in the same pass, kSample or
  // kHigh, with the same numel.
  void end_pass_from(TopKMagnitude& other);

  // After the passes: zeroes in place the elements of chunk [offset, offset + n) that are not
  // among the k kept. x must hold the values the passes saw.
  void keep_top(uint64_t offset, float* x, size_t n) const;
  // The same for the vector a − b: x = a − b with the elements not kept zeroed (x may be a).
  void keep_top_difference(uint64_t offset, const float* a, const float* b, float* x,
                           size_t n) const;

  // After the passes: whether chunk [offset, ...) keeps exactly its elements with
  // magnitude_bits >= *cut (no tie with the threshold split inside it); then *cut is set
  // (UINT32_MAX when nothing is kept).
  bool pure_cut(uint64_t offset, uint32_t* cut) const;

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
  // Pass kLow's record of one chunk: (low 16 bits, count) of its elements in the high bin; after
  // a sample, pass kHigh's record of one chunk: (bits − window_first_, count) of its elements in
  // the window.
  struct ChunkLows {
    uint64_t offset;
    std::vector<std::pair<uint32_t, uint32_t>> entries;
  };

  // a, b: f32 values (b may be null); or a16, b16: bf16 values (then a and b are null).
  void add_bits(uint64_t offset, const float* a, const float* b, const uint16_t* a16,
                const uint16_t* b16, size_t n, TopKMagnitude* also);
  void count_high(const uint32_t* bits, size_t n, Slot* slot);
  void flush(Slot& slot);
  // Index of the bin in which the k-th largest falls, given `above` elements already counted
  // above the histogram's range; adds the counts of higher bins to `above`.
  uint32_t find_bin(uint64_t& above) const;
  // After the passes: how many of chunk [offset, ...)'s elements equal to the threshold are
  // kept, UINT64_MAX for all of them (always, unless the threshold's ties are split).
  uint64_t kept_ties(uint64_t offset) const;
  // End of pass kSample: chooses the window from the sample's histogram.
  void choose_window();
  // Stores one chunk's record (pass kLow or the window) unless the records overflowed.
  void keep_record(ChunkLows record);
  // Turns one chunk's keys (values below kMaxWindowBins << 16) into its record.
  void record_keys(uint64_t offset, const uint32_t* keys, size_t n);
  // End of pass kLow, or of kHigh when the k-th largest fell in the window: the low bin (from
  // the records' entries whose key >> 16 is `part`, the high bin's place in the window, when
  // from_records; else from kLow's histogram), then the threshold and the ties.
  void finish_low(uint32_t part, bool from_records);

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
  bool lows_overflow_ = false;        // lows_ grew past max_tie_entries_ and was dropped
  uint64_t k_estimate_ = UINT64_MAX;  // with_k_later + sample: estimate_k's value
  // After pass kSample: pass kHigh records elements whose magnitude bits lie in
  // [window_first_, window_first_ + window_span_) (window_span_ == 0: no window).
  uint32_t window_first_ = 0;
  uint32_t window_span_ = 0;
  uint32_t high_bin_ = 0;      // selected high 16 bits after kHigh
  uint64_t greater_high_ = 0;  // elements in higher high bins
  uint32_t threshold_ = 0;
  uint64_t greater_ = 0;
  uint64_t tied_to_keep_ = 0;    // elements equal to the threshold that are kept
  bool split_ties_ = false;      // some elements equal to the threshold are dropped
  std::vector<TieCount> ties_;   // sorted by offset after the ties are placed
  std::vector<TieCount> zeros_;  // pass kHigh: each chunk's count of zeros (in `equal`)
};

// x = a − b where lo <= magnitude_bits(a − b) and (magnitude_bits(a − b) < hi or a − b is ±0),
// else +0: a band of magnitudes, the kept elements of one cut (TopKMagnitude::pure_cut) minus
// the nonzero kept elements of another. x may be a.
void keep_band_difference(uint32_t lo, uint32_t hi, const float* a, const float* b, float* x,
                          size_t n);

}  // namespace smelt::kernels
