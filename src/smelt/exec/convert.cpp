// Weights copied tensor by tensor into safetensors through the atomic writers and the OUT claim.
#include "smelt/exec/convert.h"

#include <sys/stat.h>

#include <algorithm>
#include <vector>

#include "smelt/error.h"
#include "smelt/interrupt.h"
#include "smelt/io/file_util.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"

namespace smelt::exec {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kCopyChunk = 16ull << 20;

fs::path normalized(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

// OUT with its folder resolved and its last component as given (a link at OUT is not followed).
fs::path output_location(const fs::path& out) {
  const fs::path a = fs::absolute(out).lexically_normal();
  fs::path name = a.filename(), parent = a.parent_path();
  if (name.empty()) {
    name = parent.filename();
    parent = parent.parent_path();
  }
  return normalized(parent) / name;
}

bool within(const fs::path& inner, const fs::path& outer) {
  auto [a, b] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return a == outer.end();
}

// Refuses an OUT that overlaps the input, or that exists where it may not be replaced (the rules
// of a merge's OUT: docs/reliability.md).
void check_output(const io::Model& model, const fs::path& out, bool overwrite) {
  const io::ResolvedModel& r = model.resolved();
  const fs::path o = output_location(out), resolved = normalized(out);
  std::vector<fs::path> protect;
  if (r.single_file) {
    for (const auto& f : r.weight_files) protect.push_back(normalized(f));
  } else {
    protect.push_back(normalized(r.root));
  }
  for (const fs::path& p : protect) {
    if (within(o, p) || within(resolved, p) || within(p, o) || within(p, resolved)) {
      fail(
          "output {} overlaps the input model {} ({}); choose another path — smelt never "
          "writes into or over an input",
          out.string(), r.ref, p.string());
    }
  }
  const std::string kind = io::describe_file_type(o);
  if (kind == "missing") return;
  if (r.single_file) {
    if (kind != "a file") {
      fail("output {} is {}; a single-file model converts to one .safetensors file", out.string(),
           kind);
    }
    if (!overwrite) fail("output file {} exists; pass --overwrite to replace it", out.string());
    return;
  }
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
        "output folder {}: --overwrite replaces only a model folder, and this folder also holds "
        "{}; move them away or choose another OUT",
        out.string(), foreign);
  }
}

struct Stamp {
  fs::path path;
  struct stat st {};
};

void check_unchanged(const std::vector<Stamp>& stamps) {
  for (const Stamp& s : stamps) {
    struct stat now {};
    if (::stat(s.path.c_str(), &now) != 0 || now.st_size != s.st.st_size ||
        now.st_ino != s.st.st_ino || now.st_mtim.tv_sec != s.st.st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != s.st.st_mtim.tv_nsec) {
      fail(
          "input {} changed during the conversion; the output was not kept. Run it again once "
          "the file is final",
          s.path.string());
    }
  }
}

// Copies every tensor of `model` through `write(index, offset, data, size)`.
template <typename Write>
void copy_tensors(const io::Model& model, Write&& write) {
  std::vector<char> buf;
  for (size_t i = 0; i < model.tensors().size(); ++i) {
    const io::ModelTensor& t = model.tensors()[i];
    for (uint64_t off = 0; off < t.info->nbytes; off += kCopyChunk) {
      check_interrupted();
      const uint64_t n = std::min(kCopyChunk, t.info->nbytes - off);
      buf.resize(n);
      t.file->read(*t.info, off, buf.data(), n);
      write(i, off, buf.data(), n);
    }
  }
}

// Config, tokenizer and other non-weight model files of the source folder.
bool is_copied_file(const std::string& name) {
  if (!io::is_model_file_name(name)) return false;
  for (const char* s : {".safetensors", ".gguf", ".bin", ".pt", ".pth", ".index.json"}) {
    if (name.ends_with(s)) return false;
  }
  return name[0] != '.' || name == ".gitattributes";
}

// Removes a folder on scope exit unless released.
class TempFolder {
 public:
  explicit TempFolder(fs::path p) : path_(std::move(p)) {
    std::error_code ec;
    fs::create_directory(path_, ec);
    if (ec) fail("{}: cannot create a folder: {}", path_.string(), ec.message());
  }
  ~TempFolder() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  void release() { path_.clear(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

void convert_to_safetensors(const io::Model& model, const fs::path& out,
                            const ConvertOptions& options) {
  const io::ResolvedModel& r = model.resolved();
  if (r.gguf) {
    fail(
        "model '{}': converting GGUF to safetensors is not supported; `smelt convert` reads "
        "PyTorch .bin and safetensors models",
        r.ref);
  }
  check_output(model, out, options.overwrite);
  const fs::path target = output_location(out);
  InterruptibleScope interruptible;
  io::OutputClaim claim(target);
  if (options.on_note) {
    if (!claim.removed().empty()) {
      options.on_note(fmt::format("removed {} temporaries left beside {} by an interrupted run",
                                  claim.removed().size(), target.string()));
    }
    for (const fs::path& k : claim.kept()) {
      options.on_note(
          fmt::format("left {} alone: it is named like a smelt temporary but holds "
                      "other files",
                      k.string()));
    }
  }
  check_output(model, out, options.overwrite);  // again under the lock
  std::vector<Stamp> stamps;
  for (const fs::path& f : r.weight_files) {
    Stamp s{f};
    if (::stat(f.c_str(), &s.st) == 0) stamps.push_back(s);
  }
  std::vector<io::TensorSpec> specs;
  for (const io::ModelTensor& t : model.tensors()) {
    specs.push_back({t.info->name, t.info->dtype, t.info->shape});
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (r.single_file) {
    io::AtomicFileOptions file_options;
    const bool overwrite = options.overwrite;
    file_options.publish = [&](const fs::path& temp, const fs::path& path) {
      check_interrupted();
      check_unchanged(stamps);
      io::publish_file(temp, path, overwrite);
    };
    io::SafetensorsWriter writer(target, specs, metadata, file_options);
    copy_tensors(model, [&](size_t i, uint64_t off, const void* data, uint64_t n) {
      writer.write(i, off, data, n);
    });
    writer.finish();
    return;
  }
  TempFolder temp(io::temp_name_for(target));
  {
    io::ShardedWriter writer(temp.path(), specs, options.shard_size, {});
    copy_tensors(model, [&](size_t i, uint64_t off, const void* data, uint64_t n) {
      writer.write(i, off, data, n);
    });
    writer.finish();
  }
  std::error_code ec;
  std::vector<fs::path> extras;
  for (const auto& e : fs::directory_iterator(r.root, ec)) {
    std::error_code sec;
    if (e.is_regular_file(sec) && is_copied_file(e.path().filename().string())) {
      extras.push_back(e.path());
    }
  }
  for (const fs::path& f : extras) {
    io::write_file_atomic(temp.path() / f.filename(), io::read_whole_file(f));
  }
  io::fsync_dir(temp.path());
  check_interrupted();
  check_unchanged(stamps);
  const std::string left = io::publish_folder(temp.path(), target, options.overwrite);
  temp.release();
  if (!left.empty() && options.on_note) options.on_note(left);
}

}  // namespace smelt::exec
