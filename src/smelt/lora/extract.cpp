// LoRA extraction: modules classified from tensor names, task vectors decomposed in parallel
// (one Δ per worker), the adapter folder built under a temporary name and published whole.
#include "smelt/lora/extract.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <regex>
#include <set>

#include "smelt/error.h"
#include "smelt/exec/output_path.h"
#include "smelt/exec/thread_pool.h"
#include "smelt/interrupt.h"
#include "smelt/io/file_util.h"
#include "smelt/io/gguf_json.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/elementwise.h"
#include "smelt/kernels/random.h"
#include "smelt/lora/gguf_adapter.h"
#include "smelt/lora/peft_config.h"
#include "smelt/lora/svd.h"
#include "smelt/lora/tensor_read.h"

namespace smelt::lora {
namespace fs = std::filesystem;
namespace {

constexpr const char* kPrefix = "base_model.model.";

std::string shape_text(const std::vector<uint64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

std::string last_component(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

// Input embedding modules (mergekit sees them as nn.Embedding): decomposed transposed.
bool is_embedding(const std::string& module) {
  static const std::set<std::string> kNames = {"embed_tokens", "wte", "word_embeddings", "embed_in",
                                               "tok_embeddings"};
  return kNames.contains(last_component(module));
}

// Output heads whose row count is the vocabulary size.
bool is_head(const std::string& module) {
  const std::string last = last_component(module);
  return last == "lm_head" || last == "embed_out" || last == "output";
}

struct Module {
  std::string name;
  io::ModelTensor weight, bias;            // of the fine-tuned model
  io::ModelTensor base_weight, base_bias;  // of the base (lora modules)
  ModuleResult result;
  size_t job = SIZE_MAX;               // index into the decomposition jobs
  std::optional<GgufLoraTarget> gguf;  // GGUF output: where the pair goes
};

// One decomposed module: A (r×in), B (out×r), optional bias delta, as PEFT stores them.
struct Factors {
  std::vector<float> a, b, bias;
  size_t rank = 0, a_cols = 0, b_rows = 0;
  double rel_error = 0;
};

struct CompiledRegex {
  std::string text;
  std::regex re;
  bool used = false;
};

std::vector<CompiledRegex> compile(const std::vector<std::string>& texts, const char* option) {
  std::vector<CompiledRegex> out;
  for (const std::string& t : texts) {
    try {
      out.push_back({t, std::regex(t), false});
    } catch (const std::regex_error& e) {
      fail("{} '{}' is not a valid regular expression ({})", option, t, e.what());
    }
  }
  return out;
}

// The module's bias difference into f.bias (nothing without a bias).
void read_bias_delta(const Module& m, Factors& f) {
  if (!m.bias.info) return;
  f.bias = read_tensor_f32(m.bias);
  const std::vector<float> bb = read_tensor_f32(m.base_bias);
  for (size_t i = 0; i < f.bias.size(); ++i) f.bias[i] -= bb[i];
}

// Decomposes Δ = ft − base of one module (see docs/lora_extract.md, "Extraction").
Factors decompose(const Module& m, const ExtractOptions& o) {
  check_interrupted();
  // Per-worker buffers, grown and reused across modules: a fresh matrix per module would pay
  // its first-touch page faults again (docs/performance.md, "Memory and file reads on this VM
  // class").
  thread_local std::vector<float> delta_buffer, copy_buffer;
  std::vector<float>& d = delta_buffer;
  read_difference_f32(m.weight, m.base_weight, d);
  const size_t rows = static_cast<size_t>(m.weight.info->shape[0]);
  const size_t cols = static_cast<size_t>(m.weight.info->shape[1]);
  const bool embedding = m.result.kind == "embedding";
  const double norm2 = kernels::dot(d.data(), d.data(), d.size());
  TruncatedSvd svd;
  if (o.randomized) {
    RandomizedSvdOptions ro;
    ro.oversample = o.oversample;
    ro.power_iters = o.power_iters;
    ro.key = kernels::stream_key(o.seed, m.name);
    svd = randomized_svd(d.data(), rows, cols, o.max_rank, ro);
  } else {
    copy_buffer.assign(d.begin(), d.end());  // the SVD destroys its input
    svd = exact_svd(copy_buffer.data(), rows, cols, o.max_rank);
  }
  size_t r = svd.k;
  if (o.sv_epsilon > 0) {
    r = static_cast<size_t>(std::count_if(svd.s.begin(), svd.s.begin() + static_cast<ptrdiff_t>(r),
                                          [&](float s) { return s > o.sv_epsilon; }));
  }
  Factors f;
  f.rank = r;
  if (r == 0) return f;
  // Stored layout Δ (rows×cols) ≈ U S Vᵀ. Linear: A = sA Vᵀ (r×cols), B = U sB (rows×r).
  // Embedding (PEFT's ΔW = (BA)ᵀ): A = sA Uᵀ (r×rows), B = V sB (cols×r).
  std::vector<float> sa(r), sb(r);
  for (size_t i = 0; i < r; ++i) {
    const float s = svd.s[i];
    sa[i] = o.distribute_scale ? std::sqrt(s) : s;
    sb[i] = o.distribute_scale ? std::sqrt(s) : 1.0f;
  }
  const size_t k = svd.k;
  if (!embedding) {
    f.a_cols = cols, f.b_rows = rows;
    f.a.resize(r * cols), f.b.resize(rows * r);
    for (size_t i = 0; i < r; ++i) {
      for (size_t j = 0; j < cols; ++j) f.a[i * cols + j] = sa[i] * svd.vt[i * cols + j];
    }
    for (size_t i = 0; i < rows; ++i) {
      for (size_t j = 0; j < r; ++j) f.b[i * r + j] = svd.u[i * k + j] * sb[j];
    }
  } else {
    f.a_cols = rows, f.b_rows = cols;
    f.a.resize(r * rows), f.b.resize(cols * r);
    for (size_t i = 0; i < r; ++i) {
      for (size_t j = 0; j < rows; ++j) f.a[i * rows + j] = sa[i] * svd.u[j * k + i];
    }
    for (size_t i = 0; i < cols; ++i) {
      for (size_t j = 0; j < r; ++j) f.b[i * r + j] = svd.vt[j * cols + i] * sb[j];
    }
  }
  // B·A = U_r S_r V_rᵀ with orthonormal U_r, V_r (the randomized U = Q·U_small is orthonormal
  // too, and u_iᵀΔv_i = s_i), so ‖Δ − BA‖² = ‖Δ‖² − Σ_{i≤r} s_i². That difference is exact enough
  // while the error is not small against ‖Δ‖ (f32 singular values carry ~1e-7 relative error);
  // below kClosedFormMin the error is measured from the factors as written, rounding included.
  constexpr double kClosedFormMin = 1e-2;  // of (‖Δ − BA‖ / ‖Δ‖)²
  double kept2 = 0;
  for (size_t i = 0; i < r; ++i) kept2 += double(svd.s[i]) * svd.s[i];
  if (norm2 > 0 && (norm2 - kept2) / norm2 >= kClosedFormMin) {
    f.rel_error = std::sqrt((norm2 - kept2) / norm2);
    read_bias_delta(m, f);
    return f;
  }
  // ‖Δ − BA‖_F from the factors as written, in blocks of rows of the stored layout: L·R with
  // L = B, R = A (linear) or L = Aᵀ, R = Bᵀ (embedding).
  std::vector<float> left(rows * r), right(r * cols);
  if (!embedding) {
    left = f.b, right = f.a;
  } else {
    for (size_t i = 0; i < r; ++i) {
      for (size_t j = 0; j < rows; ++j) left[j * r + i] = f.a[i * rows + j];
      for (size_t j = 0; j < cols; ++j) right[i * cols + j] = f.b[j * r + i];
    }
  }
  constexpr size_t kBlock = 64;
  std::vector<float> rec(kBlock * cols);
  double err2 = 0;
  for (size_t i0 = 0; i0 < rows; i0 += kBlock) {
    const size_t n = std::min(kBlock, rows - i0);
    gemm(&left[i0 * r], right.data(), rec.data(), n, r, cols);
    for (size_t e = 0; e < n * cols; ++e) {
      const double diff = double(d[i0 * cols + e]) - rec[e];
      err2 += diff * diff;
    }
  }
  f.rel_error = norm2 > 0 ? std::sqrt(err2 / norm2) : 0.0;
  read_bias_delta(m, f);
  return f;
}

// Classifies every module of `ft` (docs/lora_extract.md, "Which modules"), checking shapes
// against the base. Throws for the errors extract_lora documents.
std::vector<Module> plan_modules(const io::Model& ft, const io::Model& base,
                                 const ExtractOptions& o) {
  std::vector<CompiledRegex> include = compile(o.include_regex, "--include-regex");
  std::vector<CompiledRegex> exclude = compile(o.exclude_regex, "--exclude-regex");
  std::map<std::string, bool> save_used;
  for (const std::string& s : o.save_modules) save_used[s] = false;

  std::vector<Module> modules;
  std::map<std::string, size_t> index;
  for (const io::ModelTensor& t : ft.tensors()) {
    const std::string& name = t.info->name;
    const bool w = name.ends_with(".weight"), b = name.ends_with(".bias");
    if (!w && !b) continue;
    const std::string module = name.substr(0, name.size() - (w ? 7 : 5));
    auto [it, fresh] = index.try_emplace(module, modules.size());
    if (fresh) {
      modules.emplace_back();
      modules.back().name = module;
    }
    (w ? modules[it->second].weight : modules[it->second].bias) = t;
  }
  const std::string example =
      modules.empty() ? std::string("model.layers.0.self_attn.q_proj") : modules[0].name;
  std::vector<Module> out;
  for (Module& m : modules) {
    if (!m.weight.info) continue;  // a lone bias belongs to no module smelt knows
    m.result.module = m.name;
    m.result.shape = m.weight.info->shape;
    const std::string last = last_component(m.name);
    bool save = false;
    for (auto& [s, used] : save_used) {
      if (s == m.name || s == last) save = used = true;
    }
    if (save) {
      m.result.kind = "full";
      m.result.note = "--save-module";
      out.push_back(std::move(m));
      continue;
    }
    bool keep = include.empty();
    for (CompiledRegex& r : include) {
      if (std::regex_search(m.name, r.re)) keep = r.used = true;
    }
    for (CompiledRegex& r : exclude) {
      if (std::regex_search(m.name, r.re)) keep = false, r.used = true;
    }
    if (!keep) continue;
    const std::string wname = m.name + ".weight";
    m.base_weight = base.find(wname);
    if (!m.base_weight.info) {
      fail(
          "tensor '{}' is in the fine-tuned model but not in the base model {}: is the base "
          "the model this one was fine-tuned from?",
          wname, base.resolved().ref);
    }
    const auto& fs_ = m.weight.info->shape;
    const auto& bs_ = m.base_weight.info->shape;
    if (fs_.size() != 2) {
      if (fs_ != bs_) {
        fail("tensor '{}': shape {} in the fine-tuned model, {} in the base", wname,
             shape_text(fs_), shape_text(bs_));
      }
      m.result.kind = o.skip_undecomposable ? "skipped" : "full";
      m.result.note = fmt::format("{}-D weight, not decomposable", fs_.size());
      out.push_back(std::move(m));
      continue;
    }
    const bool vocab_changed =
        bs_.size() == 2 && fs_ != bs_ &&
        ((is_embedding(m.name) && fs_[1] == bs_[1]) || (is_head(m.name) && fs_[1] == bs_[1]));
    if (vocab_changed) {
      m.result.kind = "full";
      m.result.note =
          fmt::format("vocabulary size changed ({} in the base, {} fine-tuned)", bs_[0], fs_[0]);
      out.push_back(std::move(m));
      continue;
    }
    if (fs_ != bs_) {
      fail("tensor '{}': shape {} in the fine-tuned model, {} in the base", wname, shape_text(fs_),
           shape_text(bs_));
    }
    if (is_embedding(m.name) && !o.embed_lora) {
      m.result.kind = "full";
      m.result.note = "embedding (--embed-lora decomposes it)";
      out.push_back(std::move(m));
      continue;
    }
    m.result.kind = is_embedding(m.name) ? "embedding" : "lora";
    if (m.bias.info && m.result.kind == "lora") {
      m.base_bias = base.find(m.name + ".bias");
      if (!m.base_bias.info) {
        fail("tensor '{}.bias' is in the fine-tuned model but not in the base model {}", m.name,
             base.resolved().ref);
      }
      if (m.bias.info->shape != m.base_bias.info->shape) {
        fail("tensor '{}.bias': shape {} in the fine-tuned model, {} in the base", m.name,
             shape_text(m.bias.info->shape), shape_text(m.base_bias.info->shape));
      }
    } else if (m.result.kind == "embedding") {
      m.bias = {};
    }
    out.push_back(std::move(m));
  }
  for (const auto* list : {&include, &exclude}) {
    for (const CompiledRegex& r : *list) {
      if (!r.used) {
        fail("{} '{}' matches no module of the fine-tuned model (modules are named like '{}')",
             list == &include ? "--include-regex" : "--exclude-regex", r.text, example);
      }
    }
  }
  for (const auto& [s, used] : save_used) {
    if (!used) fail("--save-module '{}' names no module of the fine-tuned model", s);
  }
  return out;
}

// Writes tensor `index` from f32 values.
void write_f32(io::SafetensorsWriter& w, size_t index, const std::vector<float>& v) {
  w.write(index, 0, v.data(), v.size() * sizeof(float));
}

// Copies the bytes of `t` into tensor `index`.
void copy_tensor(io::SafetensorsWriter& w, size_t index, const io::ModelTensor& t) {
  constexpr uint64_t kChunk = 16ull << 20;
  std::vector<char> buf;
  for (uint64_t off = 0; off < t.info->nbytes; off += kChunk) {
    check_interrupted();
    const uint64_t n = std::min(kChunk, t.info->nbytes - off);
    buf.resize(n);
    t.file->read(*t.info, off, buf.data(), n);
    w.write(index, off, buf.data(), n);
  }
}

// GGUF output: the base's GGUF names for every module, decided before any decomposition; what
// a llama.cpp adapter cannot hold is refused (a changed vocabulary) or marked skipped (1-D
// weights, tensors llama.cpp drops).
// Returns the GGUF architecture.
std::string assign_gguf_targets(std::vector<Module>& modules, const io::Model& base) {
  const fs::path& config_path = base.resolved().config_json;
  if (config_path.empty()) {
    fail(
        "--format gguf: the base model {} has no config.json, which names the GGUF "
        "architecture and tensors the adapter applies to",
        base.resolved().ref);
  }
  const GgufLoraLayout layout(io::gguf_json::read_json(config_path));
  for (Module& m : modules) {
    ModuleResult& r = m.result;
    if (r.kind == "full") {
      if (r.note.starts_with("vocabulary size changed")) {
        fail(
            "--format gguf: '{}': {}; a llama.cpp adapter cannot change the vocabulary "
            "(extract a PEFT adapter instead)",
            m.name, r.note);
      }
      if (r.shape.size() == 2) {
        fail("internal: module '{}' would be saved full rank in a GGUF adapter", m.name);
      }
      r.kind = "skipped";
      r.note = fmt::format("{}-D weight: llama.cpp adapters hold only LoRA pairs", r.shape.size());
    } else if (r.kind == "lora" || r.kind == "embedding") {
      m.gguf = layout.target(m.name + ".weight", r.shape[0], r.kind == "embedding");
      if (m.gguf && m.gguf->embedding && !base.find("lm_head.weight").info) {
        fail(
            "--format gguf: '{}' is tied to the output head in {} (no lm_head.weight); llama.cpp "
            "would apply its LoRA pair to the head as well. Leave it out with "
            "--exclude-regex '{}'",
            m.name, base.resolved().ref, last_component(m.name));
      }
      if (!m.gguf) {
        r.kind = "skipped";
        r.note = "not in llama.cpp's GGUF of this architecture";
      }
    }
  }
  return layout.arch();
}

// GGUF output: a note naming what the adapter leaves out although the fine-tune changed it (1-D
// weights, bias deltas), so the user knows llama.cpp with the adapter is not the fine-tune.
void note_left_out(const std::vector<Module>& modules, const std::vector<Factors>& factors,
                   const ExtractOptions& o) {
  if (!o.on_note) return;
  std::vector<std::string> changed;
  for (const Module& m : modules) {
    if (m.job != SIZE_MAX && m.gguf) {
      const std::vector<float>& bias = factors[m.job].bias;
      if (std::any_of(bias.begin(), bias.end(), [](float x) { return x != 0.0f; })) {
        changed.push_back(m.name + ".bias");
      }
      continue;
    }
    if (m.result.kind != "skipped" || m.result.shape.size() == 2) continue;
    const io::ModelTensor base = m.base_weight;
    if (!base.info) continue;
    if (read_tensor_f32(m.weight) != read_tensor_f32(base)) changed.push_back(m.name + ".weight");
  }
  if (changed.empty()) return;
  o.on_note(fmt::format(
      "the fine-tune changed {} tensor{} a llama.cpp adapter cannot hold (1-D weights and "
      "biases), left out: {}{}",
      changed.size(), changed.size() == 1 ? "" : "s",
      fmt::join(changed.begin(), changed.begin() + std::min<ptrdiff_t>(5, ssize(changed)), ", "),
      changed.size() > 5 ? ", ..." : ""));
}

}  // namespace

ExtractResult extract_lora(const io::Model& ft, const io::Model& base, const fs::path& out,
                           const ExtractOptions& options) {
  ExtractOptions o = options;
  const bool gguf = o.format == "gguf";
  if (!gguf && o.format != "peft") fail("--format '{}': use peft or gguf", o.format);
  if (o.max_rank == 0) fail("--max-rank must be at least 1");
  for (const io::Model* m : {&ft, &base}) {
    if (m->resolved().gguf) {
      fail(
          "model '{}': LoRA extraction reads safetensors and PyTorch .bin models; GGUF "
          "inputs are not supported yet",
          m->resolved().ref);
    }
  }
  if (gguf) {
    if (!o.save_modules.empty()) {
      fail(
          "--save-module with --format gguf: a llama.cpp adapter holds only LoRA pairs, not "
          "full-rank modules (extract a PEFT adapter to save modules)");
    }
    o.embed_lora = true;  // token_embd is adapted as a pair or not at all
  }
  std::vector<Module> modules = plan_modules(ft, base, o);
  std::string gguf_arch;
  if (gguf) gguf_arch = assign_gguf_targets(modules, base);
  std::vector<size_t> jobs;
  for (size_t i = 0; i < modules.size(); ++i) {
    if (modules[i].result.kind == "lora" || modules[i].result.kind == "embedding") {
      modules[i].job = jobs.size();
      jobs.push_back(i);
    }
  }
  bool any_output = !jobs.empty();
  for (const Module& m : modules) any_output |= m.result.kind == "full";
  if (!any_output) {
    fail("nothing to extract: no module of '{}' passes the filters", ft.resolved().ref);
  }

  auto check_output = [&] {
    exec::check_no_overlap(out, ft.resolved(), ft.resolved().ref);
    exec::check_no_overlap(out, base.resolved(), base.resolved().ref);
    exec::check_existing_output(out, gguf, o.overwrite);
  };
  check_output();
  const fs::path target = exec::output_location(out);
  InterruptibleScope interruptible;
  io::OutputClaim claim(target);
  if (o.on_note) {
    if (!claim.removed().empty()) {
      o.on_note(fmt::format("removed {} temporaries left beside {} by an interrupted run",
                            claim.removed().size(), target.string()));
    }
  }
  check_output();  // again under the lock
  exec::InputStamps stamps;
  stamps.add(ft.resolved());
  stamps.add(base.resolved());

  // Decompose: each worker holds one module's Δ (and its copy) at a time.
  std::vector<Factors> factors(jobs.size());
  {
    exec::ThreadPool pool(std::max<size_t>(1, o.threads));
    std::mutex progress_mutex;
    size_t done = 0;
    pool.parallel_for(jobs.size(), [&](size_t j, size_t) {
      factors[j] = decompose(modules[jobs[j]], o);
      if (o.on_progress) {
        std::lock_guard lock(progress_mutex);
        o.on_progress(++done, jobs.size());
      }
    });
  }

  ExtractResult result;
  for (Module& m : modules) {
    if (m.job == SIZE_MAX) continue;
    const Factors& f = factors[m.job];
    m.result.rank = f.rank;
    m.result.rel_error = f.rel_error;
    if (f.rank == 0) {
      m.result.kind = "skipped";
      m.result.note = "no singular value above --sv-epsilon";
    } else {
      result.rank = std::max(result.rank, f.rank);
    }
  }

  if (gguf) {
    std::vector<GgufLoraPair> pairs;
    for (const Module& m : modules) {
      result.modules.push_back(m.result);
      if (m.job == SIZE_MAX || !m.gguf || factors[m.job].rank == 0) continue;
      const Factors& f = factors[m.job];
      pairs.push_back({*m.gguf, f.rank, f.a_cols, f.b_rows, &f.a, &f.b});
    }
    if (pairs.empty()) fail("nothing to extract: no module has a LoRA pair for llama.cpp");
    note_left_out(modules, factors, o);
    io::AtomicFileOptions file_options;
    const bool overwrite = o.overwrite;
    file_options.publish = [&](const fs::path& temp, const fs::path& path) {
      check_interrupted();
      stamps.check("LoRA extraction");
      io::publish_file(temp, path, overwrite);
    };
    result.adapter_bytes = write_gguf_lora(target, gguf_arch, ft.resolved().ref + " LoRA", pairs,
                                           std::move(file_options));
    return result;
  }

  PeftConfig config;
  config.base_model_name_or_path = base.resolved().ref;
  std::set<std::string> targets;
  std::vector<io::TensorSpec> specs;
  struct Source {
    const Factors* f = nullptr;
    int part = 0;  // 0 A, 1 B, 2 bias
    io::ModelTensor full;
  };
  std::vector<Source> sources;
  for (Module& m : modules) {
    ModuleResult& r = m.result;
    if (m.job != SIZE_MAX) {
      const Factors& f = factors[m.job];
      if (f.rank != 0) {
        const bool emb = r.kind == "embedding";
        const std::string p = kPrefix + m.name;
        specs.push_back(
            {p + (emb ? ".lora_embedding_A" : ".lora_A.weight"), DType::kF32, {f.rank, f.a_cols}});
        sources.push_back({&f, 0, {}});
        specs.push_back(
            {p + (emb ? ".lora_embedding_B" : ".lora_B.weight"), DType::kF32, {f.b_rows, f.rank}});
        sources.push_back({&f, 1, {}});
        if (!f.bias.empty()) {
          specs.push_back({p + ".lora_B.bias", DType::kF32, {f.bias.size()}});
          sources.push_back({&f, 2, {}});
          config.lora_bias = true;
        }
        targets.insert(last_component(m.name));
      }
    } else if (r.kind == "full") {
      for (const io::ModelTensor& t : {m.weight, m.bias}) {
        if (!t.info) continue;
        const std::string suffix = t.info->name.substr(m.name.size());
        specs.push_back({kPrefix + m.name + suffix, t.info->dtype, t.info->shape});
        sources.push_back({nullptr, 0, t});
      }
      config.modules_to_save.push_back(m.name);
    }
    result.modules.push_back(r);
  }
  if (specs.empty()) fail("nothing to extract: every module was skipped");
  config.r = std::max<size_t>(result.rank, 1);
  config.lora_alpha = static_cast<double>(config.r);
  for (const ModuleResult& r : result.modules) {
    if ((r.kind == "lora" || r.kind == "embedding") && r.rank != config.r) {
      config.rank_pattern.emplace_back(r.module, r.rank);
      config.alpha_pattern.emplace_back(r.module, static_cast<double>(r.rank));
    }
  }
  config.target_modules.assign(targets.begin(), targets.end());

  exec::TempFolder temp(io::temp_name_for(target));
  {
    io::SafetensorsWriter writer(temp.path() / "adapter_model.safetensors", specs,
                                 {{"format", "pt"}});
    for (size_t i = 0; i < specs.size(); ++i) {
      const Source& s = sources[i];
      if (s.f) {
        write_f32(writer, i, s.part == 0 ? s.f->a : s.part == 1 ? s.f->b : s.f->bias);
      } else {
        copy_tensor(writer, i, s.full);
      }
      result.adapter_bytes += specs[i].nbytes();
    }
    writer.finish();
  }
  io::write_file_atomic(temp.path() / "adapter_config.json", peft_config_json(config));
  io::write_file_atomic(temp.path() / "README.md",
                        extract_readme(result, o, ft.resolved().ref, base.resolved().ref));
  io::fsync_dir(temp.path());
  check_interrupted();
  stamps.check("LoRA extraction");
  const std::string left = io::publish_folder(temp.path(), target, o.overwrite);
  temp.release();
  if (!left.empty() && o.on_note) o.on_note(left);
  return result;
}

std::string extract_readme(const ExtractResult& result, const ExtractOptions& o,
                           const std::string& ft_ref, const std::string& base_ref) {
  std::string s =
      "---\nbase_model: " + base_ref + "\nlibrary_name: peft\ntags:\n- smelt\n- lora\n---\n";
  s += fmt::format("# LoRA extracted from {}\n\n", ft_ref);
  s += fmt::format(
      "A PEFT LoRA adapter (rank {}, lora_alpha = r, so scaling 1) approximating the difference "
      "between `{}` and its base `{}`, extracted by smelt with {} SVD.\n\n",
      result.rank, ft_ref, base_ref, o.randomized ? "a randomized" : "an exact");
  if (!o.invocation.empty()) s += fmt::format("```sh\n{}\n```\n\n", o.invocation);
  for (const ModuleResult& m : result.modules) {
    if (m.note.starts_with("vocabulary size changed")) {
      s += fmt::format("**Warning:** `{}`: {}; it is saved full rank.\n\n", m.module, m.note);
    }
  }
  s += "Relative reconstruction error ‖Δ − BA‖_F / ‖Δ‖_F per module (Δ = fine-tuned − base):\n\n";
  s += "| module | shape | kind | rank | relative error |\n|---|---|---|---|---|\n";
  for (const ModuleResult& m : result.modules) {
    const bool lora = m.kind == "lora" || m.kind == "embedding";
    s += fmt::format("| {} | {} | {} | {} | {} |\n", m.module, shape_text(m.shape),
                     m.kind + (m.note.empty() ? "" : " (" + m.note + ")"),
                     lora ? std::to_string(m.rank) : "",
                     lora ? fmt::format("{:.3e}", m.rel_error) : "");
  }
  return s;
}

}  // namespace smelt::lora
