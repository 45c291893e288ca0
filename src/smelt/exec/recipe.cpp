// Multi-stage recipe planning and the on-demand tensor files that stand in for stage outputs.
#include "smelt/exec/recipe.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <set>

#include "smelt/error.h"
#include "smelt/exec/finalize.h"

namespace smelt::exec {
namespace {

// The output of a recipe stage as a TensorFile: tensor bytes are computed by running the stage's
// job when first read, and the last few are cached (a consumer reads each input tensor chunk by
// chunk, over several passes).
class StageTensorFile : public io::TensorFile {
 public:
  StageTensorFile(std::shared_ptr<const plan::Plan> plan, const std::string& name,
                  const ExecOptions& exec)
      : plan_(std::move(plan)), path_(name), exec_(exec) {
    exec_.threads = 1;  // runs on the reading thread: no nested pool
    exec_.on_progress = nullptr;
    uint64_t offset = 0;
    for (const auto& job : plan_->jobs) {
      io::TensorInfo t;
      t.name = job.name;
      t.dtype = job.dtype;
      t.shape = job.shape;
      t.offset = offset;
      t.nbytes = job.output_bytes();
      offset += t.nbytes;
      tensors_.push_back(std::move(t));
    }
    for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
    size_ = offset;
  }

  const std::filesystem::path& path() const override { return path_; }
  const std::vector<io::TensorInfo>& tensors() const override { return tensors_; }
  uint64_t file_size() const override { return size_; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  const io::TensorInfo* find(std::string_view name) const override {
    auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
  }

  void read(const io::TensorInfo& t, uint64_t offset, void* dst, uint64_t size) const override {
    const size_t index = static_cast<size_t>(&t - tensors_.data());
    if (index >= tensors_.size() || offset > t.nbytes || size > t.nbytes - offset) {
      fail("stage '{}': tensor '{}': read outside the tensor", path_.string(), t.name);
    }
    std::shared_ptr<const std::vector<char>> bytes = compute(index);
    std::memcpy(dst, bytes->data() + offset, size);
  }

 private:
  // Captures one tensor's bytes from the executor.
  class BufferSink : public TensorSink {
   public:
    BufferSink(size_t job, std::vector<char>* out) : job_(job), out_(out) {}
    void write(size_t job, uint64_t offset, const void* data, uint64_t size) override {
      if (job == job_) std::memcpy(out_->data() + offset, data, size);
    }

   private:
    size_t job_;
    std::vector<char>* out_;
  };

  std::shared_ptr<const std::vector<char>> compute(size_t index) const {
    std::lock_guard lock(mutex_);
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->first == index) {
        cache_.splice(cache_.begin(), cache_, it);
        return cache_.front().second;
      }
    }
    const plan::TensorJob& job = plan_->jobs[index];
    // A duplicate is written by the job it duplicates; capture that job's output under our index.
    const size_t source = job.duplicate_of >= 0 ? static_cast<size_t>(job.duplicate_of) : index;
    auto bytes = std::make_shared<std::vector<char>>(job.output_bytes());
    BufferSink sink(source, bytes.get());
    execute_jobs(*plan_, {source}, sink, exec_);
    cache_.emplace_front(index, bytes);
    if (cache_.size() > kCacheTensors) cache_.pop_back();
    return bytes;
  }

  static constexpr size_t kCacheTensors = 4;
  std::shared_ptr<const plan::Plan> plan_;
  std::filesystem::path path_;
  ExecOptions exec_;
  std::vector<io::TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
  uint64_t size_ = 0;
  mutable std::mutex mutex_;
  mutable std::list<std::pair<size_t, std::shared_ptr<const std::vector<char>>>> cache_;
};

// The stage names a document refers to.
std::set<std::string> references(const config::MergeConfig& doc,
                                 const std::set<std::string>& names) {
  std::set<std::string> out;
  doc.for_each_model_reference([&](const config::ModelReference& r) {
    const std::string key = r.str();
    if (names.count(key)) out.insert(key);
  });
  return out;
}

}  // namespace

Recipe build_recipe(const std::vector<config::MergeConfig>& documents,
                    const plan::PlanOptions& options, const ExecOptions& exec) {
  if (documents.empty()) fail("the config holds no merge");
  if (documents.size() == 1) {
    Recipe r;
    r.names.push_back(documents[0].name.value_or(""));
    r.plans.push_back(std::make_shared<const plan::Plan>(plan::build_plan(documents[0], options)));
    return r;
  }
  const std::string& file = documents[0].filename;
  std::set<std::string> names;
  size_t unnamed = 0;
  for (size_t i = 0; i < documents.size(); ++i) {
    const auto& d = documents[i];
    if (!d.name) {
      ++unnamed;
      continue;
    }
    if (!names.insert(*d.name).second) {
      fail("{}: document {}: name '{}' is used by another document; stage names must be unique",
           file, i + 1, *d.name);
    }
  }
  if (unnamed > 1) {
    fail("{}: {} documents have no name; only the final merge may be unnamed", file, unnamed);
  }
  // Dependency order (Kahn), keeping document order among ready stages.
  std::vector<std::set<std::string>> deps;
  for (const auto& d : documents) deps.push_back(references(d, names));
  for (size_t i = 0; i < documents.size(); ++i) {
    if (documents[i].name && deps[i].count(*documents[i].name)) {
      fail("{}: stage '{}' uses itself as a model", file, *documents[i].name);
    }
  }
  std::vector<size_t> order;
  std::set<std::string> done;
  std::vector<bool> placed(documents.size(), false);
  while (order.size() < documents.size()) {
    bool progressed = false;
    for (size_t i = 0; i < documents.size(); ++i) {
      if (placed[i]) continue;
      bool ready = true;
      for (const auto& dep : deps[i]) ready = ready && done.count(dep);
      if (!ready) continue;
      placed[i] = true;
      order.push_back(i);
      if (documents[i].name) done.insert(*documents[i].name);
      progressed = true;
    }
    if (!progressed) {
      std::vector<std::string> stuck;
      for (size_t i = 0; i < documents.size(); ++i) {
        if (!placed[i]) stuck.push_back(documents[i].name.value_or("(unnamed)"));
      }
      fail("{}: the stages {} depend on each other in a cycle", file, fmt::join(stuck, ", "));
    }
  }
  // The final stage: the unnamed document, else the only stage no other stage uses.
  std::set<std::string> used;
  for (const auto& d : deps) used.insert(d.begin(), d.end());
  std::vector<size_t> finals;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (!documents[i].name || !used.count(*documents[i].name)) finals.push_back(i);
  }
  if (unnamed == 1) {
    finals.clear();
    for (size_t i = 0; i < documents.size(); ++i) {
      if (!documents[i].name) finals.push_back(i);
    }
  }
  if (finals.size() != 1) {
    std::vector<std::string> n;
    for (size_t i : finals) n.push_back(documents[i].name.value_or("(unnamed)"));
    fail(
        "{}: several stages ({}) are used by no other stage; leave the final merge unnamed to "
        "say which is the result",
        file, fmt::join(n, ", "));
  }
  // Move the final stage last (it depends on nothing that comes after it in `order`).
  order.erase(std::find(order.begin(), order.end(), finals[0]));
  order.push_back(finals[0]);

  Recipe recipe;
  plan::PlanOptions opts = options;
  for (size_t i : order) {
    auto p = std::make_shared<const plan::Plan>(plan::build_plan(documents[i], opts));
    const std::string name = documents[i].name.value_or("");
    recipe.names.push_back(name);
    recipe.plans.push_back(p);
    if (name.empty()) continue;
    io::ResolvedModel resolved;
    resolved.ref = name;
    resolved.root = p->models[p->donor].model->resolved().root;
    auto file_ptr = std::make_shared<StageTensorFile>(p, name, exec);
    plan::NamedModel named;
    named.model = io::Model::from_files(resolved, {file_ptr});
    named.config_text = output_config_json(*p);
    opts.named_models[name] = named;
  }
  return recipe;
}

}  // namespace smelt::exec
