// Claiming, cleaning and publishing an output path: see output_claim.h and docs/reliability.md.
#include "smelt/io/output_claim.h"

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "smelt/error.h"
#include "smelt/io/file_util.h"
#include "smelt/test_hooks.h"

namespace smelt::io {
namespace fs = std::filesystem;

namespace {

constexpr std::array<std::string_view, 23> kModelFileNames = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "README.md",
    "mergekit_config.yml",
    "mergekit_moe_config.yml",
    ".gitattributes",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "trainer_state.json",
};
constexpr std::array<std::string_view, 5> kModelFileSuffixes = {".safetensors", ".gguf", ".bin",
                                                                ".pt", ".pth"};

bool is_hex8(std::string_view s) {
  if (s.size() != 8) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// A temporary smelt names after some file: ".<name>.smelt-tmp-XXXXXXXX" (temp_name_for).
bool is_any_smelt_temporary(std::string_view name) {
  const size_t at = name.rfind(".smelt-tmp-");
  return name.size() > 1 && name[0] == '.' && at != std::string_view::npos &&
         is_hex8(name.substr(at + 11));
}

// renameat2(RENAME_NOREPLACE), falling back to a checked rename(2) on filesystems without it
// (the OUT lock keeps other smelt runs out of that window). Returns 0 or -1 with errno.
int rename_noreplace(const fs::path& from, const fs::path& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return -1;
  struct stat st {};
  if (::lstat(to.c_str(), &st) == 0) {
    errno = EEXIST;
    return -1;
  }
  return ::rename(from.c_str(), to.c_str());
}

uint64_t file_bytes(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

bool folder_is_empty(const fs::path& dir) {
  std::error_code ec;
  return fs::is_empty(dir, ec) && !ec;
}

}  // namespace

bool is_model_file_name(std::string_view name) {
  for (std::string_view n : kModelFileNames) {
    if (name == n) return true;
  }
  for (std::string_view s : kModelFileSuffixes) {
    if (name.size() > s.size() && name.ends_with(s)) return true;
  }
  return is_any_smelt_temporary(name);
}

std::string describe_file_type(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return "missing";
  if (S_ISREG(st.st_mode)) return "a file";
  if (S_ISDIR(st.st_mode)) return "a folder";
  if (S_ISLNK(st.st_mode)) return "a symbolic link";
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) return "a device";
  if (S_ISFIFO(st.st_mode)) return "a pipe";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  return "not a regular file";
}

std::string foreign_entries(const fs::path& folder) {
  std::vector<std::string> found;
  size_t total = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    const std::string name = e.path().filename().string();
    std::error_code sec;
    const bool regular = e.symlink_status(sec).type() == fs::file_type::regular;
    if (regular && is_model_file_name(name)) continue;
    ++total;
    if (found.size() < 3) {
      found.push_back(regular ? name : fmt::format("{} ({})", name, describe_file_type(e.path())));
    }
  }
  if (ec) return fmt::format("entries that cannot be listed ({})", ec.message());
  if (total == 0) return "";
  std::string s;
  for (size_t i = 0; i < found.size(); ++i) s += (i ? ", " : "") + found[i];
  if (total > found.size()) s += fmt::format(" and {} more", total - found.size());
  return s;
}

bool is_temporary_of(std::string_view name, std::string_view out_name) {
  for (std::string_view kind : {".smelt-tmp-", ".smelt-old-"}) {
    const std::string prefix = fmt::format(".{}{}", out_name, kind);
    if (name.size() == prefix.size() + 8 && name.starts_with(prefix) &&
        is_hex8(name.substr(prefix.size()))) {
      return true;
    }
  }
  return false;
}

bool remove_model_folder(const fs::path& folder, uint64_t* bytes) {
  std::error_code ec;
  bool all = true;
  std::vector<fs::path> doomed;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    std::error_code sec;
    const auto type = e.symlink_status(sec).type();
    if (type == fs::file_type::regular && is_model_file_name(e.path().filename().string())) {
      doomed.push_back(e.path());
    } else {
      all = false;
    }
  }
  if (ec) return false;
  for (const fs::path& p : doomed) {
    const uint64_t b = file_bytes(p);
    if (::unlink(p.c_str()) == 0) {
      if (bytes) *bytes += b;
    } else {
      all = false;
    }
  }
  if (all && ::rmdir(folder.c_str()) != 0) all = false;
  return all;
}

OutputClaim::OutputClaim(const fs::path& out) : out_(out) {
  const std::string name = out_.filename().string();
  if (name.empty() || name == "." || name == "..") {
    fail("output path '{}' does not name a folder or file; give a path such as ./merged",
         out_.string());
  }
  const fs::path parent = out_.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) fail("{}: cannot create the folder for the output: {}", parent.string(), ec.message());
  lock_path_ = parent / fmt::format(".{}.smelt-lock", name);
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) {
      fail("{}: cannot write beside the output (lock file {}): {}", out_.string(),
           lock_path_.filename().string(), errno_text());
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char buf[32] = {};
      const int64_t n = pread_full(fd_, buf, sizeof buf - 1, 0);
      ::close(fd_);
      fd_ = -1;
      if (err == EWOULDBLOCK) {
        const std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
        fail(
            "{}: another smelt (pid {}) is writing this output right now; wait for it to finish "
            "or choose another OUT",
            out_.string(), pid.substr(0, pid.find('\n')));
      }
      fail("{}: cannot lock {}: {}", out_.string(), lock_path_.string(), std::strerror(err));
    }
    // The holder before us may have unlinked the lock file after we opened it: then our lock is
    // on a dead inode, and we take the lock again on the file now at the path.
    struct stat mine {
    }, now{};
    if (::fstat(fd_, &mine) == 0 && ::lstat(lock_path_.c_str(), &now) == 0 &&
        mine.st_ino == now.st_ino && mine.st_dev == now.st_dev) {
      break;
    }
    ::close(fd_);
    fd_ = -1;
    if (attempt > 100) fail("{}: cannot take the lock {}", out_.string(), lock_path_.string());
  }
  const std::string pid = fmt::format("{}\n", ::getpid());
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The pid is only shown to a second run; the lock itself is what counts.
  }

  // Holding the lock, every temporary named after OUT belongs to a run that died.
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string entry = e.path().filename().string();
    if (!is_temporary_of(entry, name)) continue;
    std::error_code sec;
    const auto type = e.symlink_status(sec).type();
    uint64_t bytes = 0;
    bool gone = false;
    if (type == fs::file_type::regular) {
      bytes = file_bytes(e.path());
      gone = ::unlink(e.path().c_str()) == 0;
    } else if (type == fs::file_type::directory) {
      gone = remove_model_folder(e.path(), &bytes);
    }
    removed_bytes_ += bytes;
    (gone ? removed_ : kept_).push_back(e.path());
  }
}

OutputClaim::~OutputClaim() {
  if (fd_ < 0) return;
  // Unlinked while still locked, so a waiting run notices (see the constructor).
  ::unlink(lock_path_.c_str());
  ::close(fd_);
}

std::string publish_folder(const fs::path& temp, const fs::path& out, bool overwrite) {
  struct stat st {};
  if (::lstat(out.c_str(), &st) != 0) {
    if (errno != ENOENT) fail("{}: cannot check the output path: {}", out.string(), errno_text());
    if (rename_noreplace(temp, out) == 0) {
      fsync_dir(out.parent_path());
      return "";
    }
    if (errno == EEXIST || errno == ENOTEMPTY) {
      fail(
          "{}: something was created at this path during the merge; smelt did not replace it "
          "and did not keep the merge. Remove it or choose another OUT, then run again",
          out.string());
    }
    fail("{}: cannot rename the finished merge into place: {}", out.string(), errno_text());
  }
  if (!S_ISDIR(st.st_mode)) {
    fail("{}: is {}; smelt only writes a model folder there. Choose another OUT", out.string(),
         describe_file_type(out));
  }
  if (folder_is_empty(out)) {
    // rename(2) replaces an empty folder only: anything written into it meanwhile makes it fail.
    if (::rename(temp.c_str(), out.c_str()) == 0) {
      fsync_dir(out.parent_path());
      return "";
    }
    if (errno != EEXIST && errno != ENOTEMPTY) {
      fail("{}: cannot rename the finished merge into place: {}", out.string(), errno_text());
    }
  }
  if (!overwrite) {
    fail(
        "{}: the folder is not empty (files were written there during the merge); smelt did not "
        "replace it and did not keep the merge. Pass --overwrite or choose another OUT",
        out.string());
  }
  if (const std::string foreign = foreign_entries(out); !foreign.empty()) {
    fail(
        "{}: --overwrite replaces only a model folder, and this folder also holds {}; move them "
        "away or choose another OUT",
        out.string(), foreign);
  }
  fs::path old = temp;
  if (::renameat2(AT_FDCWD, temp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) != 0) {
    if (errno != EINVAL && errno != ENOSYS) {
      fail("{}: cannot swap the finished merge into place: {}", out.string(), errno_text());
    }
    // No atomic exchange on this filesystem: move the old folder aside, then the new one in.
    old = temp_name_for(out);
    if (::rename(out.c_str(), old.c_str()) != 0) {
      fail("{}: cannot move the existing folder aside: {}", out.string(), errno_text());
    }
    if (::rename(temp.c_str(), out.c_str()) != 0) {
      const std::string why = errno_text();
      ::rename(old.c_str(), out.c_str());
      fail("{}: cannot rename the finished merge into place: {}", out.string(), why);
    }
  }
  fsync_dir(out.parent_path());
  test_hooks::reached("after-swap");
  if (!remove_model_folder(old)) {
    return fmt::format(
        "the previous {} held files smelt does not delete (added during the merge); they are "
        "kept in {}",
        out.string(), old.string());
  }
  return "";
}

void publish_file(const fs::path& temp, const fs::path& out, bool overwrite) {
  struct stat st {};
  if (::lstat(out.c_str(), &st) != 0) {
    if (errno != ENOENT) fail("{}: cannot check the output path: {}", out.string(), errno_text());
    if (rename_noreplace(temp, out) == 0) return;
    if (errno == EEXIST || errno == ENOTEMPTY) {
      fail(
          "{}: something was created at this path during the merge; smelt did not replace it "
          "and did not keep the merge. Remove it or choose another OUT, then run again",
          out.string());
    }
    fail("{}: cannot rename the finished file into place: {}", out.string(), errno_text());
  }
  if (!S_ISREG(st.st_mode)) {
    fail("{}: is {}; smelt only replaces a regular file. Choose another output path", out.string(),
         describe_file_type(out));
  }
  if (!overwrite) {
    fail(
        "{}: a file was created at this path during the merge; smelt did not replace it and did "
        "not keep the merge. Pass --overwrite or choose another output path",
        out.string());
  }
  if (::rename(temp.c_str(), out.c_str()) != 0) {
    fail("{}: cannot rename the finished file into place: {}", out.string(), errno_text());
  }
}

}  // namespace smelt::io
