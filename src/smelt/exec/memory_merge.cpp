#include "smelt/exec/memory_merge.h"

#include <cstring>

#include "smelt/error.h"
#include "smelt/exec/finalize.h"

namespace smelt::exec {
namespace {

// Each job's bytes land at their offset in the job's buffer; workers write disjoint ranges.
class MemorySink : public TensorSink {
 public:
  explicit MemorySink(std::vector<MemoryTensor>& tensors) : tensors_(tensors) {}
  void write(size_t job, uint64_t offset, const void* data, uint64_t size) override {
    auto& bytes = tensors_[job].bytes;
    if (offset > bytes.size() || size > bytes.size() - offset) {
      fail("internal error: a merge wrote past the end of tensor {}", tensors_[job].name);
    }
    std::memcpy(bytes.data() + offset, data, size);
  }

 private:
  std::vector<MemoryTensor>& tensors_;
};

}  // namespace

MemoryModel merge_into_memory(const plan::Plan& plan, const ExecOptions& options) {
  if (plan.gguf_output) {
    fail(
        "a merge that writes GGUF cannot be evaluated in memory; evaluate it as safetensors "
        "(inputs in Hugging Face format), or write it with `smelt merge` and evaluate the file");
  }
  MemoryModel m;
  m.config_json = output_config_json(plan);
  m.tokenizer_folder = plan.models[plan.donor].model->resolved().root;
  m.tensors.resize(plan.jobs.size());
  std::vector<size_t> jobs;
  for (size_t i = 0; i < plan.jobs.size(); ++i) {
    const plan::TensorJob& job = plan.jobs[i];
    MemoryTensor& t = m.tensors[i];
    t.name = job.name;
    t.dtype = job.dtype;
    t.shape = job.shape;
    t.bytes.resize(job.output_bytes());
    if (job.duplicate_of < 0) jobs.push_back(i);
  }
  MemorySink sink(m.tensors);
  execute_jobs(plan, jobs, sink, options);
  for (size_t i = 0; i < plan.jobs.size(); ++i) {
    const int original = plan.jobs[i].duplicate_of;
    if (original >= 0) m.tensors[i].bytes = m.tensors[static_cast<size_t>(original)].bytes;
  }
  return m;
}

}  // namespace smelt::exec
