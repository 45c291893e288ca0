// Chunked, multithreaded execution of a merge plan.
#include "smelt/exec/executor.h"

#include <algorithm>
#include <vector>

#include "smelt/error.h"
#include "smelt/exec/buffer.h"
#include "smelt/exec/thread_pool.h"
#include "smelt/io/file_util.h"
#include "smelt/io/gguf_export.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/quant.h"
#include "smelt/test_hooks.h"

namespace smelt::exec {
namespace {

// Buffers owned by one worker, grown to the largest need and then reused (fresh allocations per
// chunk would pay first-touch page faults again: docs/performance.md, "Memory and file reads on
// this VM class").
struct WorkerBuffers {
  std::vector<ScratchBuffer> inputs;
  ScratchBuffer raw;
  ScratchBuffer out;
  ScratchBuffer out_raw;
  std::vector<const float*> pointers;
  std::vector<const uint16_t*> bf16;  // a bf16 pass's input pointers (Chunk::bf16)
};

// What --max-memory counts (exec_layout), measured as resident memory:
// - kReserveBytes: the process itself (code, libraries, model headers, the plan, the per-chunk
//   partials of statistics passes) and allocator slack; `smelt plan` of a small model stays
//   under 8 MB.
// - per worker: its WorkerBuffers at their mapped size (ScratchBuffer rounds each up to 2 MiB:
//   buffer.h), the methods' thread-local scratch (about k + 2 floats per element), and
//   kThreadBytes for its thread (stack pages, malloc arena).
// - the largest job's method state (Method::state_bytes: the task masks of mask_pool.h).
// - the output writer's in-flight blocks: writer_bytes_per_file() for each
//   file written at once (two at a shard boundary), at most the output's size.
// - the statistics cache: what is left (execute() uses it only for jobs that fit).
constexpr uint64_t kReserveBytes = uint64_t{32} << 20;
constexpr uint64_t kThreadBytes = uint64_t{1} << 20;
constexpr uint64_t kMinChunk = uint64_t{1} << 14;
// Chunk sizes are multiples of this, so GGUF blocks (32 or 256 elements) never straddle chunks.
constexpr uint64_t kChunkQuantum = 256;
// Largest stored element (f64/i64): raw input and output buffers are sized for it.
constexpr uint64_t kMaxElementBytes = 8;

// Resident bytes of one worker for chunks of c elements with k inputs.
uint64_t worker_bytes(uint64_t c, size_t k) {
  const auto mapped = [](uint64_t bytes) { return ScratchBuffer::mapped_size(bytes); };
  return k * mapped(c * 4) + mapped(c * kMaxElementBytes) + mapped(c * 4) +
         mapped(c * kMaxElementBytes) + c * 4 * (k + 2) + kThreadBytes;
}

// The chunk for a method's alignment (e.g. a row): a multiple of it, and of kChunkQuantum when
// that is possible, so quantized blocks stay whole.
uint64_t chunk_size_for(uint64_t requested, uint64_t alignment) {
  alignment = std::max<uint64_t>(alignment, 1);
  if (alignment % 256 != 0 && 256 % alignment == 0) alignment = 256;
  return std::max(alignment, requested / alignment * alignment);
}

size_t element_bytes(DType t) { return static_cast<size_t>(std::max(1, dtype_bits(t) / 8)); }

// Reads elements [offset, offset + n) of the job's (row-major) output shape from `src`, whose
// shape may be larger in each dimension (embeddings cropped to a common block): then each row
// piece is read from its place in the larger matrix.
void read_elements(const io::ModelTensor& src, const std::vector<uint64_t>& shape, uint64_t offset,
                   size_t n, char* dst) {
  const size_t es = element_bytes(src.info->dtype);
  const auto& full = src.info->shape;
  if (full == shape || shape.size() != 2) {
    src.file->read(*src.info, offset * es, dst, n * es);
    return;
  }
  const uint64_t cols = shape[1], full_cols = full[1];
  uint64_t done = 0;
  while (done < n) {
    const uint64_t e = offset + done;
    const uint64_t row = e / cols, col = e % cols;
    const uint64_t take = std::min<uint64_t>(cols - col, n - done);
    src.file->read(*src.info, (row * full_cols + col) * es, dst + done * es, take * es);
    done += take;
  }
}

// Bytes of input `in`'s stored form for elements [0, n) of the job's output layout (whole
// blocks for GGUF-quantized inputs; chunk offsets and sizes are block multiples).
uint64_t raw_bytes(const plan::JobInput& in, uint64_t n) {
  const io::TensorInfo& t = *in.source.info;
  if (t.quantized()) {
    const kernels::GgmlTypeTraits* tr =
        kernels::ggml_type_traits(static_cast<kernels::GgmlType>(t.ggml_type));
    if (tr && tr->block_elems > 0) {
      return (n + tr->block_elems - 1) / tr->block_elems * tr->block_bytes;
    }
  }
  return n * element_bytes(t.dtype);
}

// Reads elements [offset, offset + n) of input `in` in the job's output layout, still in its
// stored form (dtype or GGUF blocks), into dst (raw_bytes(in, n) bytes), applying the Q/K row
// permutation where the plan asks for it.
void read_raw(const plan::JobInput& in, const std::vector<uint64_t>& shape, uint64_t offset,
              size_t n, char* dst) {
  const io::TensorInfo& t = *in.source.info;
  if (t.quantized()) {
    const auto type = static_cast<kernels::GgmlType>(t.ggml_type);
    const kernels::GgmlTypeTraits* tr = kernels::ggml_type_traits(type);
    const bool rows_only =
        shape.size() == t.shape.size() && (shape.size() < 2 || shape[1] == t.shape[1]);
    if (!tr || offset % tr->block_elems != 0 || n % tr->block_elems != 0 || !rows_only) {
      fail("{}: tensor '{}': cannot read a part of {} blocks that is not whole blocks",
           in.source.file->path().string(), t.name, kernels::ggml_type_name(type));
    }
    const uint64_t bytes = n / tr->block_elems * tr->block_bytes;
    in.source.file->read(t, offset / tr->block_elems * tr->block_bytes, dst, bytes);
    return;
  }
  const size_t es = element_bytes(t.dtype);
  if (in.permute_heads > 0 && shape.size() >= 1) {
    const uint64_t rows = shape[0], cols = t.numel() / std::max<uint64_t>(1, t.shape[0]);
    uint64_t done = 0;
    while (done < n) {
      const uint64_t e = offset + done, row = e / cols, col = e % cols;
      const uint64_t take = std::min<uint64_t>(cols - col, n - done);
      const uint64_t src_row = io::gguf_qk_source_row(row, rows, in.permute_heads);
      in.source.file->read(t, (src_row * cols + col) * es, dst + done * es, take * es);
      done += take;
    }
  } else {
    read_elements(in.source, shape, offset, n, dst);
  }
}

// Converts n elements of input `in`'s stored form (from read_raw) to f32.
void raw_to_f32(const plan::JobInput& in, const char* raw, float* dst, size_t n) {
  const io::TensorInfo& t = *in.source.info;
  if (t.quantized()) {
    kernels::dequantize(static_cast<kernels::GgmlType>(t.ggml_type), raw, dst, n);
  } else {
    kernels::to_f32(t.dtype, raw, dst, n);
  }
}

}  // namespace

ExecLayout exec_layout(const plan::Plan& plan, const ExecOptions& options) {
  size_t k = 1;
  uint64_t largest = 1;
  ExecLayout layout;
  for (const auto& j : plan.jobs) {
    k = std::max(k, j.inputs.size());
    largest = std::max(largest, j.numel());
    if (j.method && !j.copy && !j.constant && j.duplicate_of < 0) {
      layout.state_bytes = std::max(layout.state_bytes, j.method->state_bytes(j.context(0)));
    }
  }
  // The writer's files: one GGUF file or one shard, else two shards written at once at a
  // boundary; each holds at most per_file bytes of blocks, and never more than the output.
  const uint64_t per_file = writer_bytes_per_file(options.max_memory);
  const uint64_t output = plan.output_bytes();
  const bool one_file =
      plan.gguf_output || (options.shard_size > 0 && output <= options.shard_size);
  layout.writer_bytes = std::min(output, (one_file ? 1 : 2) * per_file);
  // Reading a model through a LoRA adapter holds the adapter's decoded factors (lora_file.h).
  layout.reserve_bytes = kReserveBytes;
  for (const auto& m : plan.models) {
    if (m.model) layout.reserve_bytes += m.model->read_memory_bytes();
  }
  const uint64_t fixed = layout.reserve_bytes + layout.state_bytes + layout.writer_bytes;
  const uint64_t smallest_worker = worker_bytes(std::min(kMinChunk, largest), k);
  if (options.max_memory < fixed + smallest_worker) {
    fail(
        "--max-memory {} MiB is too small: this merge needs at least {} MiB ({} inputs per "
        "tensor); raise it",
        options.max_memory >> 20, (fixed + smallest_worker + (1 << 20) - 1) >> 20, k);
  }
  const uint64_t budget = options.max_memory - fixed;
  // The largest chunk (up to options.chunk_elements) whose worker fits the budget.
  uint64_t chunk = std::max(kMinChunk, options.chunk_elements / kChunkQuantum * kChunkQuantum);
  while (chunk > kMinChunk && worker_bytes(std::min(chunk, largest), k) > budget) {
    chunk = std::max(kMinChunk, chunk / 2 / kChunkQuantum * kChunkQuantum);
  }
  layout.chunk_elements = chunk;
  // Workers never need more than the largest tensor's chunks.
  layout.worker_bytes = worker_bytes(std::min(chunk, largest), k);
  layout.workers = static_cast<size_t>(
      std::clamp<uint64_t>(budget / layout.worker_bytes, 1, std::max<size_t>(1, options.threads)));
  const uint64_t used = fixed + layout.workers * layout.worker_bytes;
  // What is left of the budget caches small jobs' inputs across statistics passes.
  layout.cache_bytes = options.max_memory > used ? options.max_memory - used : 0;
  layout.working_bytes = used + layout.cache_bytes;
  return layout;
}

uint64_t writer_bytes_per_file(uint64_t max_memory) {
  const uint64_t most = io::AtomicFileOptions{}.max_in_flight_bytes;  // 64 MiB
  return std::clamp<uint64_t>(max_memory / 8, uint64_t{8} << 20, most);
}

MemoryEstimate estimate_memory(const plan::Plan& plan, const ExecOptions& options) {
  MemoryEstimate e;
  e.layout = exec_layout(plan, options);
  for (const auto& job : plan.jobs) {
    if (job.copy || job.constant || job.duplicate_of >= 0 || !job.method) continue;
    uint64_t need = 0;
    for (const plan::JobInput& in : job.inputs) need += (raw_bytes(in, job.numel()) + 63) / 64 * 64;
    if (ScratchBuffer::mapped_size(need) > e.layout.cache_bytes || need <= e.cache_bytes) continue;
    // Only mergers with statistics passes use the cache (execute_jobs).
    if (job.method->begin(job.context(options.seed))->stat_passes() > 0) e.cache_bytes = need;
  }
  e.cache_bytes = ScratchBuffer::mapped_size(e.cache_bytes);
  const ExecLayout& l = e.layout;
  e.total_bytes =
      l.reserve_bytes + l.workers * l.worker_bytes + l.state_bytes + l.writer_bytes + e.cache_bytes;
  return e;
}

namespace {

class WriterSink : public TensorSink {
 public:
  explicit WriterSink(io::ShardedWriter& w) : w_(w) {}
  void write(size_t job, uint64_t offset, const void* data, uint64_t size) override {
    w_.write(job, offset, data, size);
  }

 private:
  io::ShardedWriter& w_;
};

}  // namespace

void execute(const plan::Plan& plan, io::ShardedWriter& writer, const ExecOptions& options) {
  std::vector<size_t> all(plan.jobs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  WriterSink sink(writer);
  execute_jobs(plan, all, sink, options);
}

void execute_jobs(const plan::Plan& plan, const std::vector<size_t>& jobs, TensorSink& writer,
                  const ExecOptions& options) {
  const ExecLayout layout = exec_layout(plan, options);
  ThreadPool pool(layout.workers);
  std::vector<WorkerBuffers> buffers(pool.size());
  // The cache is sized once for the largest job it can hold: growing it job by job would pay
  // first-touch page faults again at every size (slow on VMs: docs/performance.md, "Memory and file
  // reads on this VM class"). A job's inputs in their stored form, each padded to 64 bytes as the
  // cache holds them.
  auto job_raw_bytes = [](const plan::TensorJob& job) {
    uint64_t total = 0;
    for (const plan::JobInput& in : job.inputs)
      total += (raw_bytes(in, job.numel()) + 63) / 64 * 64;
    return total;
  };
  // Whether the cache, at its mapped size, stays within its share of the budget.
  auto fits_cache = [&](uint64_t need) {
    return need > 0 && ScratchBuffer::mapped_size(need) <= layout.cache_bytes;
  };
  uint64_t cache_need = 0;  // bytes of the largest job inputs' stored form that fit
  for (size_t j : jobs) {
    const uint64_t need = job_raw_bytes(plan.jobs[j]);
    if (fits_cache(need)) cache_need = std::max(cache_need, need);
  }
  ScratchBuffer cache;  // a job's inputs in their stored form, when they fit layout.cache_bytes
  Progress progress;
  progress.tensors_total = jobs.size();
  for (size_t j : jobs) progress.bytes_total += plan.jobs[j].output_bytes();

  for (size_t job_index : jobs) {
    const plan::TensorJob& job = plan.jobs[job_index];
    const uint64_t numel = job.numel();
    // Writes bytes of this job's result to its tensor and to every identical job's tensor.
    auto write_out = [&](uint64_t offset, const void* data, uint64_t size) {
      writer.write(job_index, offset, data, size);
      for (size_t d : job.duplicates) writer.write(d, offset, data, size);
      test_hooks::reached("first-chunk");
    };
    if (job.duplicate_of >= 0) {
      // Written together with the job it duplicates.
    } else if (job.constant) {
      std::vector<char> bytes(job.output_bytes());
      kernels::from_f32(job.dtype, job.constant->data(), bytes.data(), job.constant->size());
      write_out(0, bytes.data(), bytes.size());
    } else if (job.copy) {
      // Non-float tensors: bytes copied unchanged, in pieces.
      const io::ModelTensor& src = job.inputs[0].source;
      const uint64_t piece = layout.chunk_elements * 4;
      const uint64_t pieces = (src.info->nbytes + piece - 1) / piece;
      pool.parallel_for(pieces, [&](size_t c, size_t w) {
        const uint64_t off = c * piece;
        const uint64_t n = std::min(piece, src.info->nbytes - off);
        auto& raw = buffers[w].raw;
        raw.reserve(n);
        src.file->read(*src.info, off, raw.data(), n);
        write_out(off, raw.data(), n);
      });
    } else {
      const methods::TensorContext ctx = job.context(options.seed);
      std::unique_ptr<methods::TensorMerger> merger = job.method->begin(ctx);
      const uint64_t chunk =
          chunk_size_for(layout.chunk_elements, job.method->chunk_alignment(ctx));
      const uint64_t chunks = std::max<uint64_t>(1, (numel + chunk - 1) / chunk);
      const size_t k = job.inputs.size();
      const size_t out_esize = element_bytes(job.dtype);
      const kernels::GgmlTypeTraits* quant =
          job.ggml_type >= 0
              ? kernels::ggml_type_traits(static_cast<kernels::GgmlType>(job.ggml_type))
              : nullptr;
      if (quant && !quant->quantized) quant = nullptr;

      // Methods with statistics passes read every chunk several times; when the job's inputs fit
      // the cache budget they are read once, in the first pass, and kept in their stored form
      // (bf16 stays 2 bytes: later passes convert chunks in cache-sized pieces, which costs less
      // memory traffic than keeping f32 copies).
      const bool cached = merger->stat_passes() > 0 && fits_cache(job_raw_bytes(job));
      std::vector<uint64_t> cache_start(k + 1, 0);  // input i's bytes at cache_start[i]
      if (cached) {
        for (size_t i = 0; i < k; ++i) {
          cache_start[i + 1] = cache_start[i] + (raw_bytes(job.inputs[i], numel) + 63) / 64 * 64;
        }
        cache.reserve(std::max(cache_need, cache_start[k]));
      }
      bool cache_filled = false;

      // Whether every input is stored as bf16 (a pass for which bf16_pass is true then reads
      // them unconverted).
      const bool all_bf16 = std::all_of(job.inputs.begin(), job.inputs.end(), [](const auto& in) {
        return !in.source.info->quantized() && in.source.info->dtype == DType::kBF16;
      });

      // Reads chunk c of every input as f32 (into worker w's buffers, through the cache); with
      // `bf16`, as the stored bf16 values (into the f32 buffers' memory, or in the cache).
      auto load = [&](size_t c, size_t w, bool bf16 = false) -> methods::Chunk {
        WorkerBuffers& b = buffers[w];
        const uint64_t offset = c * chunk;
        const size_t n = static_cast<size_t>(std::min(chunk, numel - std::min(numel, offset)));
        if (b.inputs.size() < k) b.inputs.resize(k);
        b.pointers.resize(k);
        b.bf16.resize(k);
        for (size_t i = 0; i < k; ++i) {
          const plan::JobInput& in = job.inputs[i];
          char* raw;
          b.inputs[i].reserve(n * sizeof(float));
          if (cached) {
            raw = cache.as<char>() + cache_start[i] + raw_bytes(in, offset);
          } else if (bf16) {
            raw = b.inputs[i].as<char>();  // 2 of the buffer's 4 bytes per element
          } else {
            b.raw.reserve(raw_bytes(in, n));
            raw = b.raw.as<char>();
          }
          if (!cached || !cache_filled) read_raw(in, job.shape, offset, n, raw);
          if (bf16) {
            b.bf16[i] = reinterpret_cast<const uint16_t*>(raw);
          } else {
            raw_to_f32(in, raw, b.inputs[i].as<float>(), n);
            b.pointers[i] = b.inputs[i].as<float>();
          }
        }
        methods::Chunk ch;
        ch.index = c;
        ch.offset = offset;
        ch.n = n;
        if (bf16) {
          ch.bf16 = b.bf16.data();
        } else {
          ch.inputs = b.pointers.data();
        }
        return ch;
      };

      for (int pass = 0; pass < merger->stat_passes(); ++pass) {
        // A sample pass reads every stride-th chunk (methods.h); the cache is filled by the
        // first full pass.
        const uint64_t stride = merger->sample_pass(pass) ? methods::sample_stride(chunks) : 1;
        const bool bf16 = all_bf16 && merger->bf16_pass(pass);
        pool.parallel_for((chunks + stride - 1) / stride, [&](size_t c, size_t w) {
          merger->gather(pass, load(c * stride, w, bf16));
        });
        merger->end_pass(pass);
        if (stride == 1) cache_filled = cached;
      }
      pool.parallel_for(chunks, [&](size_t c, size_t w) {
        const methods::Chunk ch = load(c, w);
        WorkerBuffers& b = buffers[w];
        b.out.reserve(ch.n * sizeof(float));
        merger->merge(ch, b.out.as<float>());
        if (job.value_offset != 0.0f) {
          float* out = b.out.as<float>();
          for (size_t e = 0; e < ch.n; ++e) out[e] += job.value_offset;
        }
        if (quant) {
          // Chunks are whole blocks: chunk sizes are multiples of kChunkQuantum.
          const uint64_t bytes = ch.n / quant->block_elems * quant->block_bytes;
          b.out_raw.reserve(bytes);
          kernels::quantize(static_cast<kernels::GgmlType>(job.ggml_type), b.out.as<float>(),
                            b.out_raw.data(), ch.n);
          write_out(ch.offset / quant->block_elems * quant->block_bytes, b.out_raw.data(), bytes);
        } else {
          b.out_raw.reserve(ch.n * out_esize);
          kernels::from_f32(job.dtype, b.out.as<float>(), b.out_raw.data(), ch.n);
          write_out(ch.offset * out_esize, b.out_raw.data(), ch.n * out_esize);
        }
      });
    }
    progress.tensors_done++;
    progress.bytes_done += job.output_bytes();
    if (options.on_progress) options.on_progress(progress);
  }
}

}  // namespace smelt::exec
