// Runs a merge plan: streams every job's inputs in fixed-size chunks (pread into reused per-worker
// buffers), merges them on a thread pool and writes each chunk at its place in its shard. Memory
// is bounded by --max-memory, whatever the model, tensor size or thread count (exec_layout).
#pragma once

#include <cstdint>
#include <functional>

#include "smelt/io/safetensors.h"
#include "smelt/plan/plan.h"

namespace smelt::exec {

struct Progress {
  uint64_t bytes_done = 0;  // output bytes written
  uint64_t bytes_total = 0;
  size_t tensors_done = 0;
  size_t tensors_total = 0;
};

struct ExecOptions {
  size_t threads = 1;
  uint64_t seed = 0;
  // Bound on the process's memory (exec_layout counts what goes in it). It limits the chunk size
  // and then the number of workers, never the other way round.
  uint64_t max_memory = uint64_t{512} << 20;
  // Largest chunk (elements; rounded down to the method's alignment). The chunk size depends only
  // on this, max_memory and the plan, never on the thread count, so whole-tensor statistics and
  // the output are identical for any thread count.
  // 32768 (128 KiB per f32 array) keeps a chunk's inputs and intermediates in L2: measured 1.4–1.7x
  // less CPU than 262144 for linear, ties, slerp and model_stock (docs/performance.md).
  uint64_t chunk_elements = uint64_t{1} << 15;
  // Largest output shard (--out-shard-size), for counting the writer's in-flight blocks: one
  // file when the output fits one shard, else two at a shard boundary. 0: assume two.
  uint64_t shard_size = 0;
  std::function<void(const Progress&)> on_progress;  // called from the coordinating thread
};

// Where executed jobs' bytes go: job index, byte offset into its tensor, data.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void write(size_t job, uint64_t offset, const void* data, uint64_t size) = 0;
};

// How execute() will run `plan`: elements per chunk, concurrent workers, and the memory they use
// (for estimates and --max-memory). The budget holds for any thread count: workers are capped by
// what fits. Throws smelt::Error when max_memory cannot hold even one worker with a small chunk.
struct ExecLayout {
  uint64_t chunk_elements = 0;
  size_t workers = 1;
  // Parts of the budget (executor.cpp says what each counts).
  // The process itself (code, headers, the plan, allocator slack) and the decoded factors of
  // models read through LoRA adapters (io::Model::read_memory_bytes).
  uint64_t reserve_bytes = 0;
  uint64_t worker_bytes = 0;  // one worker: its chunk buffers as mapped, scratch, thread
  uint64_t state_bytes = 0;   // the largest job's method state (task masks)
  uint64_t writer_bytes = 0;  // the output writer's in-flight blocks
  // Of the budget, what may cache a job's inputs across statistics passes (jobs that fit).
  uint64_t cache_bytes = 0;
  // reserve + workers x worker + state + writer + cache: at most max_memory.
  uint64_t working_bytes = 0;
};
ExecLayout exec_layout(const plan::Plan& plan, const ExecOptions& options);

// The output writer's bound on buffered blocks per file (io::AtomicFileOptions::
// max_in_flight_bytes) for a --max-memory budget: an eighth of it, between 8 and 64 MiB, so that
// small budgets still leave room for workers.
uint64_t writer_bytes_per_file(uint64_t max_memory);

// An estimate of the peak memory of executing `plan` with `options`: exec_layout's parts, with
// the statistics cache only as large as the largest job that uses it (jobs with statistics
// passes whose inputs fit), and the state of the job that needs the most.
struct MemoryEstimate {
  ExecLayout layout;
  uint64_t cache_bytes = 0;  // statistics cache actually used
  uint64_t total_bytes = 0;  // reserve + workers x worker + state + writer + cache
};
MemoryEstimate estimate_memory(const plan::Plan& plan, const ExecOptions& options);

// Executes every job of `plan`, writing job i as tensor i of `writer` (whose tensor list must be
// the jobs' names, dtypes and shapes in job order). Throws smelt::Error on read/write failures.
void execute(const plan::Plan& plan, io::ShardedWriter& writer, const ExecOptions& options);

// Executes the listed jobs (in order) into `sink`; a job with duplicate_of set is skipped (its
// original writes it). Progress counts only the listed jobs.
void execute_jobs(const plan::Plan& plan, const std::vector<size_t>& jobs, TensorSink& sink,
                  const ExecOptions& options);

}  // namespace smelt::exec
