// The merge-method interface: a method is a per-output-tensor computation over f32 inputs, run
// over chunks of the tensor so memory never depends on tensor size. Whole-tensor statistics
// (norms, dot products, top-k thresholds) are gathered in earlier passes over the same chunks.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::methods {

// Whether a method uses the config's base_model.
enum class BaseUse {
  kNone,      // the base (if configured) is an ordinary input, like any model
  kOptional,  // used as the base when given
  kRequired,  // error without one
};

// A parameter a method declares. default_value == nullopt means required.
struct ParamSpec {
  std::string name;
  std::optional<double> default_value;
  std::string help;
};

// Parameter values resolved for one output tensor (mergekit precedence already applied).
struct ResolvedParams {
  std::map<std::string, double> global;
  std::vector<std::map<std::string, double>> per_model;  // one map per input, input order

  // The global value; throws if absent (the planner guarantees declared ones are present).
  double global_value(const std::string& name) const;
  // Input i's value, or nullopt (e.g. the base's weight, which mergekit does not require).
  std::optional<double> model_value(size_t input, const std::string& name) const;
};

// What a method knows about the output tensor it is merging.
struct TensorContext {
  std::string name;             // output tensor name (keys randomness, names errors)
  std::vector<uint64_t> shape;  // output shape (inputs have the same shape)
  uint64_t numel = 0;
  size_t num_inputs = 0;
  int base = -1;  // index of the base input, or -1
  bool is_embedding = false;
  uint64_t seed = 0;  // --random-seed
  const ResolvedParams* params = nullptr;
};

// A contiguous run of elements [offset, offset + n) of every input, converted to f32.
struct Chunk {
  size_t index = 0;  // chunk number; chunking is fixed by tensor shape, never by thread count
  uint64_t offset = 0;
  size_t n = 0;
  const float* const* inputs = nullptr;  // num_inputs pointers, each to n values
  // In a pass for which TensorMerger::bf16_pass is true, when every input is stored as bf16:
  // num_inputs pointers, each to the n bf16 values, and `inputs` is null (no f32 conversion).
  const uint16_t* const* bf16 = nullptr;
};

// Per-output-tensor state. The executor calls, in order: for each statistics pass p
// (while p < stat_passes(), re-read after every end_pass): gather(p, chunk) for every chunk, then
// end_pass(p); finally merge(chunk, out) for every chunk. gather and merge may run concurrently
// for different chunks, so they must only write chunk-indexed or atomic state; end_pass runs
// alone and must combine per-chunk partial results in chunk order (bit-identical output for any
// thread count).
//
// A pass for which sample_pass(p) is true reads only a sample: every sample_stride(chunks)-th
// chunk, from chunk 0 (an estimate that saves a later full pass: docs/performance.md, "One-pass
// top-k"). What a merger computes from a sample must decide only how many passes run, never
// the output.
class TensorMerger {
 public:
  virtual ~TensorMerger() = default;
  virtual int stat_passes() const { return 0; }
  virtual bool sample_pass(int /*pass*/) const { return false; }
  // Whether gather(p, chunk) can read chunk.bf16 instead of chunk.inputs (the executor then
  // passes bf16 inputs unconverted: docs/performance.md, "Round 6"). Read after every end_pass.
  virtual bool bf16_pass(int /*pass*/) const { return false; }
  virtual void gather(int /*pass*/, const Chunk& /*chunk*/) {}
  virtual void end_pass(int /*pass*/) {}
  virtual void merge(const Chunk& chunk, float* out) = 0;
};

// The stride of a sample pass over `chunks` chunks: 8 to 15 chunks (256 Ki to 480 Ki elements
// in the executor's chunks), an eighth when there are fewer than 64.
inline uint64_t sample_stride(uint64_t chunks) { return chunks < 64 ? 8 : chunks / 8; }

// Tensors smaller than this are not sampled: a sample of them would cost more than the pass it
// may save (docs/performance.md, "One-pass top-k").
inline constexpr uint64_t kSampleMinElements = uint64_t{1} << 22;

// A merge method (mergekit name, parameters, and how to merge one tensor).
class Method {
 public:
  virtual ~Method() = default;
  virtual std::string_view name() const = 0;
  virtual std::string_view pretty_name() const = 0;
  virtual std::string_view reference_url() const = 0;
  // Parameters resolved once per tensor, ignoring per-model settings ("G" in docs/methods.md).
  virtual std::vector<ParamSpec> global_params() const { return {}; }
  // Parameters resolved for each input model ("M" in docs/methods.md).
  virtual std::vector<ParamSpec> model_params() const { return {}; }
  virtual BaseUse base_use() const { return BaseUse::kNone; }
  // Whether the model card says the merge used the base model "as a base". False where the base
  // is an end of an interpolation rather than a model the others are merged onto (slerp:
  // docs/methods.md).
  virtual bool card_names_base() const { return true; }
  // Chunks hold whole runs of this many elements (e.g. a row for row-wise methods).
  virtual uint64_t chunk_alignment(const TensorContext& /*ctx*/) const { return 1; }
  // Checks what can be known before reading data (input count, parameter ranges, weight sums).
  // Throws smelt::Error naming the tensor and, where it applies, the parameter.
  virtual void validate(const TensorContext& /*ctx*/) const {}
  // Problems that do not stop the merge (e.g. a density that keeps no element), known before
  // reading data; the planner reports them once.
  virtual std::vector<std::string> warnings(const TensorContext& /*ctx*/) const { return {}; }
  // Bytes a merger of ctx's tensor may hold besides the executor's chunk buffers (e.g. task-vector
  // masks, mask_pool.h), an upper bound; the executor counts the largest job's against
  // --max-memory. Small fixed state (per-chunk partials) is covered by the executor's reserve.
  virtual uint64_t state_bytes(const TensorContext& /*ctx*/) const { return 0; }
  // Starts merging one tensor.
  virtual std::unique_ptr<TensorMerger> begin(const TensorContext& ctx) const = 0;
};

// The registered method called `name`, or nullptr.
const Method* find_method(std::string_view name);
// Every registered method name, in registry order.
std::vector<std::string> method_names();

}  // namespace smelt::methods
