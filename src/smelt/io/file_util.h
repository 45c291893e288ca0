// Small POSIX file helpers shared by the writers: full pwrite, directory fsync, temporary names,
// and AtomicFile, the durable, write-combining output file.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace smelt::io {

// strerror(errno) as a string.
std::string errno_text();
// Reads `size` bytes at `pos` of `fd` into `dst`, retrying short reads and EINTR (the one read
// loop every reader shares). Returns the bytes read: fewer than `size` only at the end of the
// file. Returns -1 with errno set on a read error.
int64_t pread_full(int fd, void* dst, uint64_t size, uint64_t pos);
// Writes all `size` bytes at `offset` (retrying short writes); throws smelt::Error naming `path`.
void pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset,
                const std::filesystem::path& path);
// The whole content of a (small) file; throws smelt::Error naming `path` and the cause.
std::string read_whole_file(const std::filesystem::path& path);
// fsyncs a directory so a rename inside it is durable (best effort).
void fsync_dir(const std::filesystem::path& dir);
// A hidden, unique temporary name beside `path` (".<name>.smelt-tmp-XXXXXXXX").
std::filesystem::path temp_name_for(const std::filesystem::path& path);

// Whether output files use direct I/O by default: true unless the environment variable
// SMELT_DIRECT_IO is "0", "off", "false" or "no". Read here and nowhere else.
bool direct_io_from_environment();

// How an AtomicFile writes.
struct AtomicFileOptions {
  // Write through O_DIRECT in aligned blocks (falls back to buffered writes where the filesystem
  // refuses direct I/O). Off: every pwrite goes straight through the page cache.
  bool direct_io = direct_io_from_environment();
  // Size of a write-combining block; rounded up to a multiple of the alignment.
  uint64_t block_bytes = uint64_t{4} << 20;
  // At most this many bytes of block buffers (partial and queued) exist at once; at least one
  // block is always allowed.
  uint64_t max_in_flight_bytes = uint64_t{64} << 20;
  // Direct I/O alignment; 0 queries the filesystem (statx) and uses at least 4096. Other values
  // are for tests (a too-small alignment makes the kernel refuse direct writes).
  uint64_t alignment = 0;
  // How commit() puts the finished temporary at `path`. Empty: rename(2), which replaces any
  // file there; right inside smelt's own temporary folder. Outputs at a user's path pass
  // publish_file() (io/output_claim.h), which never replaces what smelt did not create.
  std::function<void(const std::filesystem::path& temp, const std::filesystem::path& path)> publish;
};

// A file of known size written under a hidden temporary name beside `path` (from any thread, at
// any offset, regions never overlapping) and renamed into place by commit() after fdatasync, so a
// partial file never appears under `path`. Destroyed uncommitted, it removes the temporary file.
//
// With direct I/O, pwrite copies bytes into aligned blocks of the file; a block whose expected
// bytes (see expect()) have all arrived is written with O_DIRECT by a background thread, so
// callers do not wait for the disk nor pay the page-cache copy. Bytes never written read as zero.
class AtomicFile {
 public:
  AtomicFile(std::filesystem::path path, uint64_t size, AtomicFileOptions options = {});
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Declares that the `size` bytes at `offset` will be written (once). Call for every region
  // before the first pwrite; a block is flushed once its declared bytes have arrived. If expect()
  // is never called, every byte of the file is expected. Undeclared writes are still correct,
  // only slower. Throws smelt::Error for a region outside the file or a call after a pwrite.
  void expect(uint64_t offset, uint64_t size);
  // Writes `size` bytes at `offset`. Thread-safe. Throws smelt::Error naming the temporary file
  // if this or an earlier background write failed.
  void pwrite(const void* data, uint64_t size, uint64_t offset);
  // Starts writeback of the dirty pages written so far (asynchronous), so that commit() has
  // little left to flush and disk writes overlap computing. Nothing to do for direct writes.
  void start_writeback();
  // Writes every pending block (partial ones whole), fdatasync, rename into place, fsync the
  // folder. Throws smelt::Error if any write failed; the file is then never renamed. Idempotent.
  void commit();
  bool committed() const { return committed_; }
  const std::filesystem::path& path() const { return path_; }
  // Whether blocks are written with O_DIRECT (false in buffered mode and after a fallback).
  bool direct_io() const;
  // How many partial blocks were evicted through the page cache to respect the memory bound.
  uint64_t evicted_blocks() const;

 private:
  // Implementation detail: life of one block of the file in direct mode.
  enum class BlockState : uint8_t {
    kEmpty,     // no buffer yet, nothing written
    kOpening,   // a buffer is being taken for it (others wait)
    kOpen,      // collecting bytes in its buffer
    kQueued,    // complete: queued for or being written by the writer thread
    kEvicting,  // being written whole through the page cache
    kOnDisk,    // written; later bytes go straight to the buffered fd
  };
  struct Block {
    char* buffer = nullptr;
    uint64_t expected = 0;  // bytes declared for it
    uint64_t received = 0;  // bytes copied into its buffer
    uint32_t pins = 0;      // copies into the buffer in progress (outside the lock)
    // Byte ranges [begin, end) copied into the buffer, sorted and merged; the rest is zeroed just
    // before the buffer is written (a reused buffer holds stale bytes).
    std::vector<std::pair<uint64_t, uint64_t>> written;
    BlockState state = BlockState::kEmpty;
  };

  void write_piece(uint64_t b, uint64_t in_block, const char* src, uint64_t n);
  // Gives block `b` (kEmpty) a buffer within the memory bound. Called with `lock` held;
  // may release it, so the caller re-reads the block's state afterwards.
  void open_block(uint64_t b, std::unique_lock<std::mutex>& lock);
  void evict_oldest(std::unique_lock<std::mutex>& lock);
  void enqueue(uint64_t b);
  void release(uint64_t b);
  void writer_loop();
  // Writes block `b`'s buffer (direct, or buffered after a fallback); returns an error text.
  std::string write_block(uint64_t b, const char* buffer);
  uint64_t block_length(uint64_t b) const;
  void throw_if_failed() const;
  void stop_writer(bool abort);

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  uint64_t size_ = 0;
  int fd_ = -1;         // buffered
  int direct_fd_ = -1;  // O_DIRECT; -1 in buffered mode
  bool committed_ = false;
  bool direct_mode_ = false;  // blocks are combined (direct_fd_ was open)
  std::function<void(const std::filesystem::path&, const std::filesystem::path&)> publish_;

  // Direct mode only.
  uint64_t align_ = 4096;
  uint64_t block_bytes_ = 0;
  uint64_t max_in_flight_ = 0;
  mutable std::mutex mu_;
  std::condition_variable changed_;  // a block changed state or was unpinned
  std::condition_variable work_;     // the writer thread has work (or must stop)
  std::vector<Block> blocks_;
  std::deque<uint64_t> open_order_;  // blocks in opening order; stale entries skipped
  std::deque<uint64_t> queue_;       // complete blocks for the writer thread
  uint64_t open_count_ = 0;
  uint64_t in_flight_ = 0;  // bytes of buffers owned by blocks
  uint64_t busy_ = 0;       // blocks being opened or evicted
  bool writing_ = false;    // the writer thread is writing a block
  uint64_t evicted_ = 0;
  bool writes_started_ = false;
  bool declared_ = false;
  bool direct_ok_ = true;  // cleared for good when the kernel refuses a direct write
  bool stop_ = false;
  bool abort_ = false;
  std::string error_;  // first failed write
  std::thread writer_;
};

}  // namespace smelt::io
