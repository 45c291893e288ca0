// What every writer of a model at a user's OUT shares (docs/reliability.md): where OUT really is,
// whether it overlaps an input, what may stand there already, stamps that tell whether an input
// changed while the output was made, and the temporary folder an output is built in.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "smelt/io/model_ref.h"

namespace smelt::exec {

// `p` absolute with links resolved where they exist (lexically normal where they do not).
std::filesystem::path normalized_path(const std::filesystem::path& p);

// OUT as written to: its folder resolved, its last component kept as given, so that a symbolic
// link at OUT is seen (and refused), never followed to whatever it points at.
std::filesystem::path output_location(const std::filesystem::path& out);

// True when `inner` is `outer` or lies inside it.
bool path_within(const std::filesystem::path& inner, const std::filesystem::path& outer);

// Refuses an OUT that is, lies inside, or contains the input model `ref` (a folder model as a
// whole, a single-file model as its files). Throws smelt::Error saying what to do.
void check_no_overlap(const std::filesystem::path& out, const io::ResolvedModel& input,
                      const std::string& ref);

// What may stand at OUT: nothing, an empty folder, or (with `overwrite`) a folder of model files
// only; for a single-file output nothing or (with `overwrite`) a regular file.
void check_existing_output(const std::filesystem::path& out, bool single_file, bool overwrite);

// The identity of input files (size, inode, mtime, ctime) when work began.
class InputStamps {
 public:
  void add(const io::ResolvedModel& model);
  // Throws smelt::Error when a file changed or disappeared since add(): an output mixing old and
  // new weights is never published. `work` names it in the message ("merge", "conversion").
  void check(const std::string& work) const;

 private:
  struct Stamp {
    std::filesystem::path path;
    struct stat st {};
  };
  std::vector<Stamp> stamps_;
};

// A folder created now and removed with everything in it on scope exit, unless released.
class TempFolder {
 public:
  explicit TempFolder(std::filesystem::path p);
  ~TempFolder();
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  void release() { path_.clear(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace smelt::exec
