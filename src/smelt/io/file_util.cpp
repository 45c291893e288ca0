// POSIX file helpers shared by the writers, and AtomicFile's direct-I/O write combining.
#include "smelt/io/file_util.h"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string_view>

#include "smelt/error.h"

namespace smelt::io {

std::string errno_text() { return std::strerror(errno); }

int64_t pread_full(int fd, void* dst, uint64_t size, uint64_t pos) {
  char* p = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < size) {
    const ssize_t r = ::pread(fd, p + done, std::min<uint64_t>(size - done, 1u << 30),
                              static_cast<off_t>(pos + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    done += static_cast<uint64_t>(r);
  }
  return static_cast<int64_t>(done);
}

namespace {

std::string write_error(const std::filesystem::path& path, int err) {
  return fmt::format("{}: write failed: {} (is the disk full?)", path.string(), std::strerror(err));
}

// Process-wide free list of aligned block buffers: a buffer freed by one file (or shard) is
// reused by the next instead of being faulted in again (first-touch faults are expensive on VMs).
// Holds at most kMaxPooled bytes; the rest is freed.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool pool;
    return pool;
  }
  ~BufferPool() {
    for (const Entry& e : free_) std::free(e.p);
  }
  // An uninitialized buffer of `bytes` aligned to `align`; throws std::bad_alloc.
  char* take(uint64_t bytes, uint64_t align) {
    {
      std::lock_guard lock(mu_);
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].bytes == bytes && free_[i].align == align) {
          char* p = free_[i].p;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          pooled_ -= bytes;
          return p;
        }
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, align, bytes) != 0) throw std::bad_alloc();
    return static_cast<char*>(p);
  }
  void give(char* p, uint64_t bytes, uint64_t align) {
    {
      std::lock_guard lock(mu_);
      if (pooled_ + bytes <= kMaxPooled) {
        free_.push_back({p, bytes, align});
        pooled_ += bytes;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr uint64_t kMaxPooled = uint64_t{64} << 20;
  struct Entry {
    char* p;
    uint64_t bytes, align;
  };
  std::mutex mu_;
  std::vector<Entry> free_;
  uint64_t pooled_ = 0;
};

uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

// Adds [begin, end) to sorted, merged `ranges` (writes mostly arrive in order: appends are cheap).
void add_range(Ranges& ranges, uint64_t begin, uint64_t end) {
  auto it = std::lower_bound(ranges.begin(), ranges.end(), std::make_pair(begin, end));
  if (it != ranges.begin() && std::prev(it)->second >= begin) --it;
  auto last = it;
  while (last != ranges.end() && last->first <= end) {
    begin = std::min(begin, last->first);
    end = std::max(end, last->second);
    ++last;
  }
  it = ranges.erase(it, last);
  ranges.insert(it, {begin, end});
}

// Zeroes the bytes of buffer[0, length) outside `ranges`, so gaps read as zero like the file's.
// Cheaper than zeroing whole buffers up front: most blocks are entirely written.
void zero_gaps(char* buffer, const Ranges& ranges, uint64_t length) {
  uint64_t pos = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin >= length) break;
    if (begin > pos) std::memset(buffer + pos, 0, begin - pos);
    pos = std::max(pos, end);
  }
  if (pos < length) std::memset(buffer + pos, 0, length - pos);
}

// The filesystem's direct-I/O alignment for `path`, at least `minimum`; 0 when the filesystem
// says it has no direct I/O.
uint64_t direct_io_alignment(const std::filesystem::path& path, uint64_t minimum) {
  uint64_t align = minimum;
#ifdef STATX_DIOALIGN
  struct statx stx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) != 0) {
    if (stx.stx_dio_offset_align == 0) return 0;
    align = std::max<uint64_t>({align, stx.stx_dio_mem_align, stx.stx_dio_offset_align});
  }
#else
  (void)path;
#endif
  return align;
}

}  // namespace

void pwrite_all(int fd, const void* data, uint64_t size, uint64_t offset,
                const std::filesystem::path& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t w =
        ::pwrite(fd, p, std::min<uint64_t>(size, 1u << 30), static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {} (is the disk full?)", path.string(), errno_text());
    }
    p += w;
    size -= static_cast<uint64_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

std::string read_whole_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot read: {}", path.string(), errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: cannot read: not a regular file", path.string());
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  const int64_t r = pread_full(fd, text.data(), text.size(), 0);
  const std::string why = r < 0 ? errno_text() : "";
  ::close(fd);
  if (r < 0) fail("{}: cannot read: {}", path.string(), why);
  text.resize(static_cast<size_t>(r));
  return text;
}

void fsync_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::filesystem::path temp_name_for(const std::filesystem::path& path) {
  std::random_device rd;
  return path.parent_path() / fmt::format(".{}.smelt-tmp-{:08x}", path.filename().string(), rd());
}

bool direct_io_from_environment() {
  const char* v = std::getenv("SMELT_DIRECT_IO");
  if (!v) return true;
  const std::string_view s(v);
  return !(s == "0" || s == "off" || s == "false" || s == "no" || s == "OFF" || s == "FALSE" ||
           s == "NO");
}

AtomicFile::AtomicFile(std::filesystem::path path, uint64_t size, AtomicFileOptions options)
    : path_(std::move(path)), size_(size), publish_(std::move(options.publish)) {
  // Errors name `path`, the file the user asked for, never the hidden temporary.
  temp_path_ = temp_name_for(path_);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", path_.string(), errno_text());
  // Sizing the file up front makes every byte not written (padding) zero.
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    const std::string why = errno_text();
    ::close(fd_);
    fd_ = -1;
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
    fail("{}: cannot size file to {} bytes: {} (is the disk full?)", path_.string(), size, why);
  }
  if (!options.direct_io) return;
  align_ = options.alignment != 0 ? options.alignment : direct_io_alignment(temp_path_, 4096);
  // No direct I/O on this filesystem (statx says so, or open refuses): stay buffered, silently.
  if (align_ == 0) return;
  direct_fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (direct_fd_ < 0) return;
  direct_mode_ = true;
  block_bytes_ = round_up(std::max<uint64_t>(options.block_bytes, 1), align_);
  max_in_flight_ = options.max_in_flight_bytes;
  const uint64_t n = size_ / block_bytes_ + (size_ % block_bytes_ != 0);
  blocks_.resize(n);
  for (uint64_t b = 0; b < n; ++b) blocks_[b].expected = block_length(b);
  writer_ = std::thread([this] { writer_loop(); });
}

AtomicFile::~AtomicFile() {
  stop_writer(/*abort=*/true);
  for (uint64_t b = 0; b < blocks_.size(); ++b) {
    if (blocks_[b].buffer) release(b);
  }
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
  }
}

uint64_t AtomicFile::block_length(uint64_t b) const {
  return std::min(block_bytes_, size_ - b * block_bytes_);
}

bool AtomicFile::direct_io() const {
  if (!direct_mode_) return false;
  std::lock_guard lock(mu_);
  return direct_ok_;
}

uint64_t AtomicFile::evicted_blocks() const {
  std::lock_guard lock(mu_);
  return evicted_;
}

void AtomicFile::expect(uint64_t offset, uint64_t size) {
  if (offset > size_ || size > size_ - offset) {
    fail("{}: internal: region of {} bytes at {} is outside the file's {} bytes", path_.string(),
         size, offset, size_);
  }
  if (direct_fd_ < 0 || size == 0) return;
  std::lock_guard lock(mu_);
  if (writes_started_) fail("{}: internal: expect() after a write", path_.string());
  if (!declared_) {
    // The first declaration replaces "every byte is expected".
    for (Block& blk : blocks_) blk.expected = 0;
    declared_ = true;
  }
  for (uint64_t b = offset / block_bytes_; size > 0; ++b) {
    const uint64_t in_block = offset - b * block_bytes_;
    const uint64_t n = std::min(size, block_bytes_ - in_block);
    blocks_[b].expected += n;
    offset += n;
    size -= n;
  }
}

void AtomicFile::throw_if_failed() const {
  if (!error_.empty()) throw Error(error_);
}

void AtomicFile::pwrite(const void* data, uint64_t size, uint64_t offset) {
  if (direct_fd_ < 0) {
    pwrite_all(fd_, data, size, offset, path_);
    return;
  }
  if (offset > size_ || size > size_ - offset) {
    fail("{}: internal: write of {} bytes at {} is outside the file's {} bytes", path_.string(),
         size, offset, size_);
  }
  const char* src = static_cast<const char*>(data);
  while (size > 0) {
    const uint64_t b = offset / block_bytes_;
    const uint64_t in_block = offset - b * block_bytes_;
    const uint64_t n = std::min(size, block_bytes_ - in_block);
    write_piece(b, in_block, src, n);
    src += n;
    offset += n;
    size -= n;
  }
}

void AtomicFile::write_piece(uint64_t b, uint64_t in_block, const char* src, uint64_t n) {
  std::unique_lock lock(mu_);
  writes_started_ = true;
  Block& blk = blocks_[b];
  for (;;) {
    throw_if_failed();
    if (stop_) fail("{}: internal: write after commit", path_.string());
    switch (blk.state) {
      case BlockState::kEmpty:
        if (!direct_ok_) {
          // Direct I/O was refused: no more combining, new blocks go to the page cache.
          blk.state = BlockState::kOnDisk;
          continue;
        }
        open_block(b, lock);
        continue;
      case BlockState::kOpening:
      case BlockState::kQueued:
      case BlockState::kEvicting:
        changed_.wait(lock);
        continue;
      case BlockState::kOnDisk:
        // The block's buffer is already on disk (evicted, or bytes nobody declared): write these
        // bytes where they belong, after that write, through the page cache.
        lock.unlock();
        pwrite_all(fd_, src, n, b * block_bytes_ + in_block, path_);
        return;
      case BlockState::kOpen:
        break;
    }
    break;
  }
  // Copy outside the lock; the pin keeps the buffer from being written or evicted meanwhile.
  ++blk.pins;
  char* dst = blk.buffer + in_block;
  lock.unlock();
  std::memcpy(dst, src, n);
  lock.lock();
  blk.received += n;
  add_range(blk.written, in_block, in_block + n);
  if (--blk.pins == 0) {
    if (blk.state == BlockState::kEvicting) {
      changed_.notify_all();
    } else if (blk.received >= blk.expected) {
      enqueue(b);
    }
  }
}

void AtomicFile::open_block(uint64_t b, std::unique_lock<std::mutex>& lock) {
  Block& blk = blocks_[b];
  // Respect the bound: wait for queued writes to drain first; evict partial blocks only when
  // nothing else will free memory.
  while (in_flight_ > 0 && in_flight_ + block_bytes_ > max_in_flight_) {
    if (queue_.empty() && !writing_ && busy_ == 0 && open_count_ > 0) {
      evict_oldest(lock);
    } else if (!queue_.empty() || writing_ || busy_ > 0) {
      changed_.wait(lock);
    } else {
      break;  // only pinned-free buffers remain; cannot happen, but never wait forever
    }
    throw_if_failed();
    if (blk.state != BlockState::kEmpty) return;
  }
  blk.state = BlockState::kOpening;
  in_flight_ += block_bytes_;
  ++busy_;
  lock.unlock();
  char* buffer = nullptr;
  try {
    buffer = BufferPool::instance().take(block_bytes_, align_);
  } catch (...) {
    lock.lock();
    blk.state = BlockState::kEmpty;
    in_flight_ -= block_bytes_;
    --busy_;
    changed_.notify_all();
    throw;
  }
  lock.lock();
  blk.buffer = buffer;
  blk.state = BlockState::kOpen;
  --busy_;
  ++open_count_;
  open_order_.push_back(b);
  changed_.notify_all();
}

void AtomicFile::evict_oldest(std::unique_lock<std::mutex>& lock) {
  while (blocks_[open_order_.front()].state != BlockState::kOpen) open_order_.pop_front();
  const uint64_t b = open_order_.front();
  open_order_.pop_front();
  Block& blk = blocks_[b];
  blk.state = BlockState::kEvicting;
  --open_count_;
  ++busy_;
  changed_.wait(lock, [&] { return blk.pins == 0; });
  // Writers into this block wait (kEvicting) until its bytes are in the file, so this write of
  // the whole buffer (zeros where nothing arrived yet, as in the file) never covers a later one.
  lock.unlock();
  std::string err;
  try {
    zero_gaps(blk.buffer, blk.written, block_length(b));
    pwrite_all(fd_, blk.buffer, block_length(b), b * block_bytes_, path_);
  } catch (const Error& e) {
    err = e.what();
  }
  lock.lock();
  --busy_;
  ++evicted_;
  if (!err.empty() && error_.empty()) error_ = err;
  release(b);
  changed_.notify_all();
  throw_if_failed();
}

void AtomicFile::enqueue(uint64_t b) {
  blocks_[b].state = BlockState::kQueued;
  --open_count_;
  while (!open_order_.empty() && blocks_[open_order_.front()].state != BlockState::kOpen) {
    open_order_.pop_front();
  }
  queue_.push_back(b);
  work_.notify_one();
}

void AtomicFile::release(uint64_t b) {
  Block& blk = blocks_[b];
  BufferPool::instance().give(blk.buffer, block_bytes_, align_);
  blk.buffer = nullptr;
  Ranges().swap(blk.written);
  blk.state = BlockState::kOnDisk;
  in_flight_ -= block_bytes_;
}

void AtomicFile::writer_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    work_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;
    const uint64_t b = queue_.front();
    queue_.pop_front();
    writing_ = true;
    char* buffer = blocks_[b].buffer;
    const bool write = !abort_ && error_.empty();
    lock.unlock();
    // Queued: no pwrite touches the block any more, so its ranges are read without the lock.
    if (write) zero_gaps(buffer, blocks_[b].written, round_up(block_length(b), align_));
    std::string err = write ? write_block(b, buffer) : std::string();
    lock.lock();
    writing_ = false;
    if (!err.empty() && error_.empty()) error_ = std::move(err);
    release(b);
    changed_.notify_all();
  }
}

std::string AtomicFile::write_block(uint64_t b, const char* buffer) {
  const uint64_t offset = b * block_bytes_;
  const uint64_t length = block_length(b);
  bool direct = false;
  {
    std::lock_guard lock(mu_);
    direct = direct_ok_;
  }
  if (direct) {
    // The last block is padded to the alignment; commit() truncates the file back.
    const uint64_t padded = round_up(length, align_);
    uint64_t done = 0;
    while (done < padded) {
      const ssize_t w =
          ::pwrite(direct_fd_, buffer + done, padded - done, static_cast<off_t>(offset + done));
      if (w > 0) {
        done += static_cast<uint64_t>(w);
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EINVAL) {
        // The filesystem refuses direct I/O here: buffered from now on, this block included.
        std::lock_guard lock(mu_);
        direct_ok_ = false;
        break;
      }
      return write_error(path_, w < 0 ? errno : ENOSPC);
    }
    if (done >= padded) return {};
  }
  try {
    pwrite_all(fd_, buffer, length, offset, path_);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

void AtomicFile::stop_writer(bool abort) {
  if (!writer_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    abort_ = abort_ || abort;
  }
  work_.notify_one();
  writer_.join();
}

void AtomicFile::start_writeback() {
  if (direct_fd_ >= 0) {
    std::lock_guard lock(mu_);
    // Only evicted blocks and late bytes went through the page cache; rare, left to commit().
    if (direct_ok_) return;
  }
  ::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
}

void AtomicFile::commit() {
  if (committed_) return;
  if (direct_fd_ >= 0) {
    {
      std::unique_lock lock(mu_);
      // Partial blocks are written whole: their gaps are zeros, like the file's.
      // No pwrite may run concurrently with commit(); waiting for stragglers is only a safety net.
      changed_.wait(lock, [&] {
        if (busy_ > 0) return false;
        for (uint64_t b : open_order_) {
          if (blocks_[b].state == BlockState::kOpen && blocks_[b].pins > 0) return false;
        }
        return true;
      });
      const std::vector<uint64_t> open(open_order_.begin(), open_order_.end());
      open_order_.clear();
      for (uint64_t b : open) {
        if (blocks_[b].state == BlockState::kOpen) enqueue(b);
      }
    }
    stop_writer(/*abort=*/false);
    throw_if_failed();
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
      fail("{}: cannot truncate to {} bytes: {}", path_.string(), size_, errno_text());
    }
  }
  if (::fdatasync(fd_) != 0) fail("{}: fdatasync failed: {}", path_.string(), errno_text());
  if (direct_fd_ >= 0) ::close(direct_fd_);
  direct_fd_ = -1;
  ::close(fd_);
  fd_ = -1;
  if (publish_) {
    publish_(temp_path_, path_);
  } else {
    std::error_code ec;
    std::filesystem::rename(temp_path_, path_, ec);
    if (ec) fail("{}: cannot rename into place: {}", path_.string(), ec.message());
  }
  committed_ = true;
  fsync_dir(path_.parent_path());
}

}  // namespace smelt::io
