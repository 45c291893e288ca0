#include "smelt/exec/output_path.h"

#include <algorithm>

#include "smelt/error.h"
#include "smelt/io/output_claim.h"

namespace smelt::exec {
namespace fs = std::filesystem;

fs::path normalized_path(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

fs::path output_location(const fs::path& out) {
  const fs::path a = fs::absolute(out).lexically_normal();
  fs::path name = a.filename();
  fs::path parent = a.parent_path();
  if (name.empty()) {  // "out/" names the folder out
    name = parent.filename();
    parent = parent.parent_path();
  }
  return normalized_path(parent) / name;
}

bool path_within(const fs::path& inner, const fs::path& outer) {
  auto [a, b] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return a == outer.end();
}

void check_no_overlap(const fs::path& out, const io::ResolvedModel& r, const std::string& ref) {
  const fs::path o = output_location(out);
  const fs::path resolved = normalized_path(out);  // where a link at OUT points
  std::vector<fs::path> protect;
  if (r.single_file) {
    for (const auto& f : r.weight_files) protect.push_back(normalized_path(f));
  } else {
    protect.push_back(normalized_path(r.root));
  }
  if (!r.lora_dir.empty()) protect.push_back(normalized_path(r.lora_dir));
  for (const fs::path& root : protect) {
    if (path_within(o, root) || path_within(resolved, root)) {
      fail(
          "output {} is {} input model {} ({}); choose another path — smelt never writes into "
          "an input model",
          out.string(), o == root ? "the same path as" : "inside", ref, root.string());
    }
    if (path_within(root, o) || path_within(root, resolved)) {
      fail("output {} contains input model {} ({}); choose another path", out.string(), ref,
           root.string());
    }
  }
}

void check_existing_output(const fs::path& out, bool single_file, bool overwrite) {
  const fs::path o = output_location(out);
  const std::string kind = io::describe_file_type(o);
  if (single_file) {
    if (kind == "a folder") {
      fail("output {} is a folder; this output is one file (a .gguf or .safetensors file)",
           out.string());
    }
    if (kind != "missing" && kind != "a file") {
      fail("output {} is {}; smelt only replaces a regular file. Choose another output path",
           out.string(), kind);
    }
    if (kind == "a file" && !overwrite) {
      fail("output file {} exists; pass --overwrite to replace it", out.string());
    }
    return;
  }
  if (kind == "missing") return;
  if (kind != "a folder") {
    fail("output path {} exists and is {}, not a folder; choose another OUT", out.string(), kind);
  }
  std::error_code ec;
  if (fs::is_empty(o, ec) || ec) return;
  if (!overwrite) {
    fail("output folder {} exists and is not empty; pass --overwrite to replace it", out.string());
  }
  if (const std::string foreign = io::foreign_entries(o); !foreign.empty()) {
    fail(
        "output folder {}: --overwrite replaces only a model folder (weights, config, tokenizer, "
        "model card), and this folder also holds {}; move them away or choose another OUT",
        out.string(), foreign);
  }
}

void InputStamps::add(const io::ResolvedModel& model) {
  for (const fs::path& f : model.weight_files) {
    Stamp s{f};
    if (::stat(f.c_str(), &s.st) == 0) stamps_.push_back(s);
  }
}

namespace {
bool same_time(const timespec& a, const timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}
}  // namespace

void InputStamps::check(const std::string& work) const {
  for (const Stamp& s : stamps_) {
    struct stat now {};
    if (::stat(s.path.c_str(), &now) != 0) {
      fail("input {} disappeared during the {}; the output was not kept", s.path.string(), work);
    }
    if (now.st_ino != s.st.st_ino || now.st_dev != s.st.st_dev || now.st_size != s.st.st_size ||
        !same_time(now.st_mtim, s.st.st_mtim) || !same_time(now.st_ctim, s.st.st_ctim)) {
      fail(
          "input {} was modified during the {}, so the output could mix old and new weights; "
          "it was not kept. Run it again once the file is final",
          s.path.string(), work);
    }
  }
}

TempFolder::TempFolder(fs::path p) : path_(std::move(p)) {
  std::error_code ec;
  fs::create_directory(path_, ec);
  if (ec) fail("{}: cannot create a folder: {}", path_.string(), ec.message());
}

TempFolder::~TempFolder() {
  if (!path_.empty()) {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
}

}  // namespace smelt::exec
