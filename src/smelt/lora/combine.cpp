// Adapter combination: per module, the factors or deltas of every input read, combined by the
// type's formula, decomposed again for the svd types, and written as one PEFT adapter.
#include "smelt/lora/combine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "smelt/error.h"
#include "smelt/exec/output_path.h"
#include "smelt/exec/thread_pool.h"
#include "smelt/interrupt.h"
#include "smelt/io/file_util.h"
#include "smelt/io/output_claim.h"
#include "smelt/io/safetensors.h"
#include "smelt/lora/peft_config.h"
#include "smelt/lora/svd.h"
#include "smelt/lora/tensor_read.h"

namespace smelt::lora {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kPrefix = "base_model.model.";

struct Factor {
  io::ModelTensor a, b;
  bool embedding = false;
};

struct Adapter {
  fs::path dir;
  PeftConfig config;
  std::shared_ptr<io::SafetensorsFile> file;
  std::map<std::string, Factor> modules;
  std::vector<std::string> order;
  io::ResolvedModel resolved;  // for the output checks
};

Adapter open_adapter(const fs::path& dir) {
  Adapter a;
  a.dir = dir;
  const fs::path config = dir / "adapter_config.json";
  const fs::path weights = dir / "adapter_model.safetensors";
  std::error_code ec;
  if (!fs::is_regular_file(config, ec)) {
    fail(
        "adapter '{}': no adapter_config.json (an adapter is a PEFT folder with "
        "adapter_config.json and adapter_model.safetensors)",
        dir.string());
  }
  if (!fs::is_regular_file(weights, ec)) {
    fail(
        "adapter '{}': no adapter_model.safetensors (legacy adapter_model.bin adapters are not "
        "supported; convert them with `smelt convert`)",
        dir.string());
  }
  a.config = parse_peft_config(io::read_whole_file(config), config.string());
  a.file = io::SafetensorsFile::open(weights);
  for (const io::TensorInfo& t : a.file->tensors()) {
    const std::string& n = t.name;
    if (!n.starts_with(kPrefix)) {
      fail("adapter '{}': tensor '{}' does not start with '{}' (not a PEFT adapter file)",
           dir.string(), n, kPrefix);
    }
    struct Suffix {
      const char* text;
      bool a, embedding;
    };
    static constexpr Suffix kSuffixes[] = {{".lora_A.weight", true, false},
                                           {".lora_B.weight", false, false},
                                           {".lora_embedding_A", true, true},
                                           {".lora_embedding_B", false, true}};
    const Suffix* s = nullptr;
    for (const Suffix& x : kSuffixes) {
      if (n.ends_with(x.text)) s = &x;
    }
    if (!s) {
      fail(
          "adapter '{}': tensor '{}' is not a LoRA factor; combine handles lora_A/lora_B "
          "(and lora_embedding_A/B) only, not modules_to_save, lora_B.bias or DoRA tensors",
          dir.string(), n);
    }
    if (t.shape.size() != 2) fail("adapter '{}': tensor '{}' is not 2-D", dir.string(), n);
    const std::string module =
        n.substr(kPrefix.size(), n.size() - kPrefix.size() - std::string_view(s->text).size());
    auto [it, fresh] = a.modules.try_emplace(module);
    if (fresh) a.order.push_back(module);
    io::ModelTensor mt{&t, a.file.get()};
    (s->a ? it->second.a : it->second.b) = mt;
    it->second.embedding = s->embedding;
  }
  for (const auto& [m, f] : a.modules) {
    if (!f.a.info || !f.b.info) {
      fail("adapter '{}': module '{}' has only one of its two LoRA factors", dir.string(), m);
    }
    const size_t r = static_cast<size_t>(f.a.info->shape[0]);
    if (f.b.info->shape[1] != r) {
      fail("adapter '{}': module '{}': lora_A has {} rows but lora_B {} columns", dir.string(), m,
           r, f.b.info->shape[1]);
    }
    if (module_rank(a.config, m) != r) {
      fail("adapter '{}': module '{}' has rank {} in the weights but {} in adapter_config.json",
           dir.string(), m, r, module_rank(a.config, m));
    }
  }
  if (a.modules.empty()) fail("adapter '{}' holds no LoRA factors", dir.string());
  a.resolved.ref = dir.string();
  a.resolved.root = dir;
  a.resolved.weight_files = {weights, config};
  return a;
}

// The largest rank an adapter's config gives any module (PEFT: max(r, rank_pattern values)).
size_t config_rank(const PeftConfig& c) {
  size_t r = c.r;
  for (const auto& [k, v] : c.rank_pattern) r = std::max(r, v);
  return r;
}

struct Output {
  std::vector<float> a, b;  // A: rank×in, B: out×rank
  size_t rank = 0, in = 0, out = 0;
  bool embedding = false;
};

// torch.quantile (linear interpolation) of the values.
float quantile(std::vector<float> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return static_cast<float>(v[lo] + frac * (double(v[hi]) - v[lo]));
}

Output combine_module(const std::string& module, const std::vector<const Adapter*>& inputs,
                      const std::vector<double>& weights, const CombineOptions& o,
                      CombinationType type, size_t svd_rank) {
  check_interrupted();
  const Factor& f0 = inputs[0]->modules.at(module);
  Output out;
  out.embedding = f0.embedding;
  out.in = static_cast<size_t>(f0.a.info->shape[1]);
  out.out = static_cast<size_t>(f0.b.info->shape[0]);
  std::vector<std::vector<float>> as, bs;
  std::vector<double> s;
  std::vector<size_t> ranks;
  for (const Adapter* a : inputs) {
    const Factor& f = a->modules.at(module);
    if (f.embedding != out.embedding || f.a.info->shape[1] != out.in ||
        f.b.info->shape[0] != out.out) {
      fail(
          "module '{}': adapter '{}' has lora_A {} and lora_B {}, adapter '{}' lora_A {} and "
          "lora_B {}",
          module, inputs[0]->dir.string(), fmt::join(f0.a.info->shape, "×"),
          fmt::join(f0.b.info->shape, "×"), a->dir.string(), fmt::join(f.a.info->shape, "×"),
          fmt::join(f.b.info->shape, "×"));
    }
    as.push_back(read_tensor_f32(f.a));
    bs.push_back(read_tensor_f32(f.b));
    s.push_back(module_scaling(a->config, module));
    ranks.push_back(static_cast<size_t>(f.a.info->shape[0]));
  }
  const size_t n = inputs.size();
  const double density = o.density.value_or(1.0);
  if (type == CombinationType::kCat) {
    for (size_t r : ranks) out.rank += r;
    out.a.reserve(out.rank * out.in);
    for (size_t i = 0; i < n; ++i) {
      for (float x : as[i]) out.a.push_back(static_cast<float>(weights[i] * s[i] * x));
    }
    out.b.resize(out.out * out.rank);
    size_t col = 0;
    for (size_t i = 0; i < n; ++i) {
      for (size_t row = 0; row < out.out; ++row) {
        for (size_t c = 0; c < ranks[i]; ++c) {
          out.b[row * out.rank + col + c] = bs[i][row * ranks[i] + c];
        }
      }
      col += ranks[i];
    }
    return out;
  }
  if (!is_svd_type(type)) {
    for (size_t i = 1; i < n; ++i) {
      if (ranks[i] != ranks[0]) {
        fail(
            "module '{}': combination type {} needs adapters of equal rank, but '{}' has rank "
            "{} and '{}' rank {} (use cat or an svd type)",
            module, combination_name(type), inputs[0]->dir.string(), ranks[0],
            inputs[i]->dir.string(), ranks[i]);
      }
    }
    std::vector<double> wa(n), wb(n);
    for (size_t i = 0; i < n; ++i) {
      const double ws = weights[i] * s[i];
      wb[i] = std::sqrt(std::fabs(ws));
      wa[i] = ws < 0 ? -wb[i] : wb[i];
    }
    out.rank = ranks[0];
    out.a = combine_tensors(type, std::move(as), wa, density, o.majority_sign, o.seed,
                            module + ".lora_A");
    out.b = combine_tensors(type, std::move(bs), wb, density, o.majority_sign, o.seed,
                            module + ".lora_B");
    return out;
  }
  // svd types: ΔW_i = s_i B_i A_i (out×in), combined, then decomposed.
  std::vector<std::vector<float>> deltas(n);
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) {
    deltas[i].resize(out.out * out.in);
    gemm(bs[i].data(), as[i].data(), deltas[i].data(), out.out, ranks[i], out.in);
    for (float& x : deltas[i]) x = static_cast<float>(x * s[i]);
    std::vector<float>().swap(as[i]);
    std::vector<float>().swap(bs[i]);
    w[i] = o.peft_svd_scaling ? weights[i] * s[i] : weights[i];
  }
  std::vector<float> m = combine_tensors(type, std::move(deltas), w, density, o.majority_sign,
                                         o.seed, module + ".delta");
  TruncatedSvd svd = exact_svd(m.data(), out.out, out.in, svd_rank);
  out.rank = svd.k;
  out.b.resize(out.out * out.rank);
  for (size_t row = 0; row < out.out; ++row) {
    for (size_t c = 0; c < out.rank; ++c)
      out.b[row * out.rank + c] = svd.u[row * svd.k + c] * svd.s[c];
  }
  out.a = std::move(svd.vt);
  if (o.svd_clamp) {
    std::vector<float> all(out.b);
    all.insert(all.end(), out.a.begin(), out.a.end());
    const float hi = quantile(std::move(all), *o.svd_clamp);
    for (auto* v : {&out.a, &out.b}) {
      for (float& x : *v) x = std::clamp(x, -hi, hi);
    }
  }
  return out;
}

std::string last_component(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

}  // namespace

CombineResult combine_lora(const std::vector<fs::path>& paths, const fs::path& out,
                           const CombineOptions& o) {
  if (paths.empty()) fail("combine needs at least one adapter");
  if (o.weights.size() != paths.size()) {
    fail("--weights has {} values for {} adapters: give one weight per adapter", o.weights.size(),
         paths.size());
  }
  CombinationType type = paths.size() == 1 ? CombinationType::kLinear : o.type;
  if (needs_density(o.type) && !o.density) {
    fail("combination type {} needs --density (the fraction of entries kept)",
         combination_name(o.type));
  }
  if (o.density && (*o.density < 0 || !std::isfinite(*o.density))) {
    fail("--density must be a number >= 0 (got {})", *o.density);
  }
  if (o.svd_clamp && !(*o.svd_clamp >= 0 && *o.svd_clamp <= 1)) {
    fail("--svd-clamp must be a quantile in [0, 1] (got {})", *o.svd_clamp);
  }
  if (o.svd_rank && *o.svd_rank == 0) fail("--svd-rank must be at least 1");
  std::vector<Adapter> adapters;
  for (const fs::path& p : paths) adapters.push_back(open_adapter(p));
  size_t svd_rank = 0;
  for (const Adapter& a : adapters) svd_rank = std::max(svd_rank, config_rank(a.config));
  if (o.svd_rank) svd_rank = *o.svd_rank;

  std::vector<std::string> modules;
  std::set<std::string> seen;
  for (const Adapter& a : adapters) {
    for (const std::string& m : a.order) {
      if (seen.insert(m).second) modules.push_back(m);
    }
  }

  auto check_output = [&] {
    for (const Adapter& a : adapters) exec::check_no_overlap(out, a.resolved, a.resolved.ref);
    exec::check_existing_output(out, false, o.overwrite);
  };
  check_output();
  const fs::path target = exec::output_location(out);
  InterruptibleScope interruptible;
  io::OutputClaim claim(target);
  check_output();
  exec::InputStamps stamps;
  for (const Adapter& a : adapters) stamps.add(a.resolved);

  std::vector<Output> outputs(modules.size());
  std::vector<size_t> counts(modules.size());
  {
    exec::ThreadPool pool(std::max<size_t>(1, o.threads));
    pool.parallel_for(modules.size(), [&](size_t i, size_t) {
      std::vector<const Adapter*> inputs;
      std::vector<double> w;
      for (size_t k = 0; k < adapters.size(); ++k) {
        if (adapters[k].modules.contains(modules[i])) {
          inputs.push_back(&adapters[k]);
          w.push_back(o.weights[k]);
        }
      }
      counts[i] = inputs.size();
      outputs[i] = combine_module(modules[i], inputs, w, o, type, svd_rank);
    });
  }

  CombineResult result;
  result.type = type;
  PeftConfig config = adapters[0].config;
  config.rank_pattern.clear();
  config.alpha_pattern.clear();
  config.modules_to_save.clear();
  config.use_rslora = false;
  config.lora_bias = false;
  std::set<std::string> targets;
  std::vector<io::TensorSpec> specs;
  for (size_t i = 0; i < modules.size(); ++i) {
    const Output& x = outputs[i];
    result.modules.push_back({modules[i], x.rank, counts[i]});
    result.rank = std::max(result.rank, x.rank);
    targets.insert(last_component(modules[i]));
    const std::string p = std::string(kPrefix) + modules[i];
    specs.push_back(
        {p + (x.embedding ? ".lora_embedding_A" : ".lora_A.weight"), DType::kF32, {x.rank, x.in}});
    specs.push_back(
        {p + (x.embedding ? ".lora_embedding_B" : ".lora_B.weight"), DType::kF32, {x.out, x.rank}});
  }
  config.r = result.rank;
  config.lora_alpha = static_cast<double>(result.rank);
  for (const CombinedModule& m : result.modules) {
    if (m.rank != config.r) {
      config.rank_pattern.emplace_back(m.module, m.rank);
      config.alpha_pattern.emplace_back(m.module, static_cast<double>(m.rank));
    }
  }
  config.target_modules.assign(targets.begin(), targets.end());

  exec::TempFolder temp(io::temp_name_for(target));
  {
    io::SafetensorsWriter writer(temp.path() / "adapter_model.safetensors", specs,
                                 {{"format", "pt"}});
    for (size_t i = 0; i < outputs.size(); ++i) {
      writer.write(2 * i, 0, outputs[i].a.data(), outputs[i].a.size() * sizeof(float));
      writer.write(2 * i + 1, 0, outputs[i].b.data(), outputs[i].b.size() * sizeof(float));
    }
    writer.finish();
  }
  io::write_file_atomic(temp.path() / "adapter_config.json", peft_config_json(config));
  std::string readme = fmt::format(
      "---\nlibrary_name: peft\ntags:\n- smelt\n- lora\n---\n# Combined LoRA adapter\n\n"
      "{} adapters combined by smelt with type `{}` (PEFT add_weighted_adapter semantics), "
      "weights {}.\n\n",
      adapters.size(), combination_name(type), fmt::join(o.weights, ", "));
  for (const Adapter& a : adapters) readme += fmt::format("- `{}`\n", a.dir.string());
  io::write_file_atomic(temp.path() / "README.md", readme);
  io::fsync_dir(temp.path());
  check_interrupted();
  stamps.check("LoRA combination");
  const std::string left = io::publish_folder(temp.path(), target, o.overwrite);
  temp.release();
  if (!left.empty() && o.on_note) o.on_note(left);
  return result;
}

}  // namespace smelt::lora
