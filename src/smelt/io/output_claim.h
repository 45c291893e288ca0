// The rules by which smelt writes at a user's output path OUT without ever losing a file it did
// not create (docs/reliability.md, "never replaces what it did not create"):
// - one run at a time per OUT: a lock file beside OUT, held with flock for the whole run;
// - temporaries of runs that died (kill -9, power loss) are found by name and removed by the next
//   run that holds the lock;
// - the finished output is renamed into place without replacing anything, except with
//   --overwrite, where only a model folder holding nothing but model files, or a regular file,
//   is replaced.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::io {

// Whether a file named `name` is one a model folder holds (weights, index, config, tokenizer,
// model card, smelt's own temporaries): the only files --overwrite deletes.
bool is_model_file_name(std::string_view name);

// Why `out` may not be replaced by --overwrite, or "" when it may: names up to three entries
// that are not model files (other files, sub-folders, links, devices).
std::string foreign_entries(const std::filesystem::path& folder);

// What lies at a path, for messages: "a folder", "a symbolic link", "a device", ...
std::string describe_file_type(const std::filesystem::path& path);

// An exclusive claim on OUT for the length of one run.
class OutputClaim {
 public:
  // Creates OUT's parent folder if needed, takes the lock ".<name>.smelt-lock" beside OUT, and
  // removes temporaries that dead runs left beside OUT. Throws smelt::Error when another smelt
  // holds OUT, or when the folder cannot be written (naming OUT and the cause).
  explicit OutputClaim(const std::filesystem::path& out);
  ~OutputClaim();
  OutputClaim(const OutputClaim&) = delete;
  OutputClaim& operator=(const OutputClaim&) = delete;

  const std::filesystem::path& out() const { return out_; }
  // Temporaries of dead runs removed by the constructor, and their total size in bytes.
  const std::vector<std::filesystem::path>& removed() const { return removed_; }
  uint64_t removed_bytes() const { return removed_bytes_; }
  // Entries that looked like stale temporaries but held files smelt does not write; left alone.
  const std::vector<std::filesystem::path>& kept() const { return kept_; }

 private:
  std::filesystem::path out_;
  std::filesystem::path lock_path_;
  int fd_ = -1;
  std::vector<std::filesystem::path> removed_;
  std::vector<std::filesystem::path> kept_;
  uint64_t removed_bytes_ = 0;
};

// Whether `name` is a temporary that a run writing OUT named `out_name` creates beside it.
bool is_temporary_of(std::string_view name, std::string_view out_name);

// Removes the model files and smelt temporaries inside `folder`, then the folder if it is then
// empty. Returns false (leaving the rest) when it holds anything else. Adds the bytes removed.
bool remove_model_folder(const std::filesystem::path& folder, uint64_t* bytes = nullptr);

// Puts the finished folder `temp` at `out`: when nothing is there (without replacing anything
// that appeared meanwhile), or in place of an empty folder; with `overwrite`, also in place of a
// folder holding only model files, swapped atomically, the old files deleted afterwards. Throws
// smelt::Error in every other case (`temp` is then left for the caller to remove).
// Returns a note for the user when the old folder could not be deleted entirely.
std::string publish_folder(const std::filesystem::path& temp, const std::filesystem::path& out,
                           bool overwrite);

// Same for a finished single file (GGUF output): replaces only a regular file, and only with
// `overwrite`.
void publish_file(const std::filesystem::path& temp, const std::filesystem::path& out,
                  bool overwrite);

}  // namespace smelt::io
