// Weights copied tensor by tensor into safetensors through the atomic writers and the OUT claim.
#include "smelt/exec/convert.h"

#include <algorithm>
#include <vector>

#include "smelt/error.h"
#include "smelt/exec/output_path.h"
#include "smelt/interrupt.h"
#include "smelt/io/file_util.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"

namespace smelt::exec {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kCopyChunk = 16ull << 20;

// Refuses an OUT that overlaps the input, or that exists where it may not be replaced (the rules
// of a merge's OUT: docs/reliability.md).
void check_output(const io::Model& model, const fs::path& out, bool overwrite) {
  check_no_overlap(out, model.resolved(), model.resolved().ref);
  check_existing_output(out, model.resolved().single_file, overwrite);
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
  InputStamps stamps;
  stamps.add(r);
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
      stamps.check("conversion");
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
  stamps.check("conversion");
  const std::string left = io::publish_folder(temp.path(), target, options.overwrite);
  temp.release();
  if (!left.empty() && options.on_note) options.on_note(left);
}

}  // namespace smelt::exec
