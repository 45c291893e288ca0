// Kohya / A1111 LoRA names mapped to LDM checkpoint names (the rules of A1111's
// convert_diffusers_name_to_compvis over sd-scripts' diffusers module names), and the bake.
#include "smelt/lora/kohya.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <thread>
#include <unordered_map>

#include "smelt/error.h"
#include "smelt/exec/output_path.h"
#include "smelt/exec/thread_pool.h"
#include "smelt/io/safetensors.h"
#include "smelt/io/torch_bin.h"
#include "smelt/kernels/convert.h"
#include "smelt/kernels/elementwise.h"

namespace smelt::lora {
namespace fs = std::filesystem;
namespace {

// Rows computed at once by the bake (at least one row).
constexpr uint64_t kBlockElements = uint64_t{1} << 16;

std::string shape_str(const std::vector<uint64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

uint64_t element_size(DType t) { return static_cast<uint64_t>(std::max(1, dtype_bits(t) / 8)); }

std::shared_ptr<io::TensorFile> open_tensors(const fs::path& p) {
  const std::string ext = p.extension().string();
  if (io::is_torch_file_name(p) || ext == ".ckpt") return io::TorchFile::open(p);
  return io::SafetensorsFile::open(p);
}

std::vector<float> read_f32(const io::TensorFile& file, const io::TensorInfo& t) {
  std::vector<char> raw(t.nbytes);
  file.read(t, 0, raw.data(), raw.size());
  std::vector<float> out(t.numel());
  kernels::to_f32(t.dtype, raw.data(), out.data(), out.size());
  return out;
}

// ResnetBlock2D children: diffusers name -> LDM name.
std::string resnet_part(const std::string& s) {
  static const std::map<std::string, std::string> kParts = {
      {"conv1", "in_layers_2"},          {"conv2", "out_layers_3"},
      {"norm1", "in_layers_0"},          {"norm2", "out_layers_0"},
      {"time_emb_proj", "emb_layers_1"}, {"conv_shortcut", "skip_connection"}};
  auto it = kParts.find(s);
  return it == kParts.end() ? s : it->second;
}

// The text encoder checkpoint prefixes ('_' form) a Kohya prefix can address, HF CLIP layout.
struct TextEncoder {
  const char* kohya;            // "lora_te_"
  std::vector<const char*> hf;  // checkpoint prefixes of an HF CLIPTextModel
  const char* open_clip;        // checkpoint prefix of an OpenCLIP text model (dotted), or null
};

const std::vector<TextEncoder>& text_encoders() {
  static const std::vector<TextEncoder> kEncoders = {
      {"lora_te_", {"cond_stage_model_transformer_"}, "cond_stage_model.model.transformer."},
      {"lora_te1_", {"conditioner_embedders_0_transformer_"}, nullptr},
      {"lora_te2_", {}, "conditioner.embedders.1.model.transformer."},
  };
  return kEncoders;
}

// A Kohya module of an OpenCLIP text encoder, in checkpoint terms.
struct OpenClipTarget {
  std::string tensor;  // dotted name
  int third = -1;      // 0, 1, 2: the q, k, v rows of in_proj_weight; -1: the whole tensor
};

std::optional<OpenClipTarget> open_clip_target(const std::string& rest, const char* prefix) {
  static const std::regex re(
      R"(text_model_encoder_layers_(\d+)_(self_attn_([qkv])_proj|self_attn_out_proj|mlp_fc1|mlp_fc2))");
  std::smatch m;
  if (!prefix || !std::regex_match(rest, m, re)) return std::nullopt;
  const std::string block = std::string(prefix) + "resblocks." + m[1].str() + ".";
  const std::string part = m[2].str();
  if (m[3].matched) {
    return OpenClipTarget{block + "attn.in_proj_weight", m[3] == "q" ? 0 : m[3] == "k" ? 1 : 2};
  }
  if (part == "self_attn_out_proj") return OpenClipTarget{block + "attn.out_proj.weight", -1};
  return OpenClipTarget{block + (part == "mlp_fc1" ? "mlp.c_fc.weight" : "mlp.c_proj.weight"), -1};
}

}  // namespace

std::vector<std::string> kohya_ldm_candidates(const std::string& name) {
  std::smatch m;
  auto num = [&](size_t i) { return std::stoi(m[i].str()); };
  if (name.starts_with("lora_unet_")) {
    const std::string k = name.substr(10);
    static const std::regex conv_in(R"(conv_in(.*))"), conv_out(R"(conv_out(.*))"),
        time(R"(time_embedding_linear_(\d+)(.*))"),
        down(R"(down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+))"),
        mid(R"(mid_block_(attentions|resnets)_(\d+)_(.+))"),
        up(R"(up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+))"),
        downsample(R"(down_blocks_(\d+)_downsamplers_0_conv)"),
        upsample(R"(up_blocks_(\d+)_upsamplers_0_conv)");
    if (std::regex_match(k, m, conv_in)) return {"input_blocks_0_0" + m[1].str()};
    if (std::regex_match(k, m, conv_out)) return {"out_2" + m[1].str()};
    if (std::regex_match(k, m, time))
      return {fmt::format("time_embed_{}{}", num(1) * 2 - 2, m[2].str())};
    if (std::regex_match(k, m, downsample))
      return {fmt::format("input_blocks_{}_0_op", 3 + 3 * num(1))};
    // The upsampler follows the resnet, and the attention where the block has one (SD1.x/2.x's
    // up_blocks.0 has none, SDXL's has).
    if (std::regex_match(k, m, upsample)) {
      return {fmt::format("output_blocks_{}_2_conv", 2 + 3 * num(1)),
              fmt::format("output_blocks_{}_1_conv", 2 + 3 * num(1))};
    }
    auto suffix = [&](const std::string& kind, const std::string& s) {
      return kind == "resnets" ? resnet_part(s) : s;
    };
    if (std::regex_match(k, m, down)) {
      return {fmt::format("input_blocks_{}_{}_{}", 1 + 3 * num(1) + num(3),
                          m[2] == "attentions" ? 1 : 0, suffix(m[2], m[4]))};
    }
    if (std::regex_match(k, m, mid)) {
      return {fmt::format("middle_block_{}_{}", m[1] == "attentions" ? 1 : 2 * num(2),
                          suffix(m[1], m[3]))};
    }
    if (std::regex_match(k, m, up)) {
      return {fmt::format("output_blocks_{}_{}_{}", 3 * num(1) + num(3),
                          m[2] == "attentions" ? 1 : 0, suffix(m[2], m[4]))};
    }
    return {};
  }
  for (const TextEncoder& te : text_encoders()) {
    if (!name.starts_with(te.kohya)) continue;
    const std::string rest = name.substr(std::string(te.kohya).size());
    std::vector<std::string> out;
    for (const char* p : te.hf) {
      out.push_back(p + rest);
      // Checkpoints saved with transformers < 4.22 lack the "text_model." level.
      if (rest.starts_with("text_model_")) out.push_back(p + rest.substr(11));
    }
    return out;
  }
  return {};
}

std::vector<KohyaModule> map_kohya_lora(const io::TensorFile& lora,
                                        const io::TensorFile& checkpoint) {
  const std::string label = lora.path().string();
  // The checkpoint's ".weight" tensors by their '_' form: the names Kohya's are made of.
  std::unordered_map<std::string, const io::TensorInfo*> by_flat;
  std::set<std::string> ambiguous;
  for (const io::TensorInfo& t : checkpoint.tensors()) {
    if (!t.name.ends_with(".weight")) continue;
    std::string flat = t.name.substr(0, t.name.size() - 7);
    std::replace(flat.begin(), flat.end(), '.', '_');
    if (!by_flat.emplace(flat, &t).second) ambiguous.insert(flat);
  }
  struct Parts {
    const io::TensorInfo *down = nullptr, *up = nullptr, *alpha = nullptr;
  };
  std::map<std::string, Parts> modules;
  for (const io::TensorInfo& t : lora.tensors()) {
    const std::string& n = t.name;
    const size_t dot = n.find('.');
    const std::string suffix = dot == std::string::npos ? "" : n.substr(dot);
    const io::TensorInfo** slot = nullptr;
    if (suffix == ".lora_down.weight") slot = &modules[n.substr(0, dot)].down;
    if (suffix == ".lora_up.weight") slot = &modules[n.substr(0, dot)].up;
    if (suffix == ".alpha") slot = &modules[n.substr(0, dot)].alpha;
    if (slot) {
      *slot = &t;
      continue;
    }
    static const std::vector<std::pair<const char*, const char*>> kOther = {
        {"hada_w1_a", "a LyCORIS LoHa"},
        {"lokr_w1", "a LyCORIS LoKr"},
        {".lora_A.", "a diffusers/PEFT-style LoRA (lora_A/lora_B)"},
        {".lora.down.", "a diffusers-style LoRA (lora.down/lora.up)"},
        {"dora_scale", "a DoRA"},
        {".diff", "a full-difference (LyCORIS diff)"},
        {".oft_", "an OFT"},
    };
    for (const auto& [needle, kind] : kOther) {
      if (n.find(needle) != std::string::npos) {
        fail(
            "{}: tensor '{}' makes this {} file; smelt bakes Kohya LoRA (lora_down/lora_up/alpha) "
            "only",
            label, n, kind);
      }
    }
    fail(
        "{}: tensor '{}' is not a Kohya LoRA tensor (<module>.lora_down.weight, "
        ".lora_up.weight, .alpha)",
        label, n);
  }
  std::vector<KohyaModule> out;
  std::map<std::string, std::string> rows_taken;  // "target:third" -> module
  for (const auto& [name, p] : modules) {
    if (!p.down || !p.up) {
      fail("{}: module '{}' has {} but no {}", label, name,
           p.down ? "lora_down.weight"
           : p.up ? "lora_up.weight"
                  : "an alpha",
           p.down ? "lora_up.weight" : "lora_down.weight");
    }
    for (const io::TensorInfo* t : {p.down, p.up}) {
      if (!dtype_is_convertible_float(t->dtype) || t->shape.size() < 2) {
        fail("{}: tensor '{}' is {} {}; LoRA factors are floating-point matrices", label, t->name,
             dtype_name(t->dtype), shape_str(t->shape));
      }
    }
    KohyaModule km;
    km.name = name;
    km.down = p.down;
    km.up = p.up;
    const uint64_t r = p.down->shape[0];
    if (r == 0)
      fail("{}: module '{}' has rank 0 (lora_down is {})", label, name, shape_str(p.down->shape));
    double alpha = static_cast<double>(r);
    if (p.alpha) {
      if (p.alpha->numel() != 1 || !dtype_is_convertible_float(p.alpha->dtype)) {
        fail("{}: '{}' must be one floating-point number, not {} {}", label, p.alpha->name,
             dtype_name(p.alpha->dtype), shape_str(p.alpha->shape));
      }
      const double a = read_f32(lora, *p.alpha)[0];
      if (!std::isfinite(a)) fail("{}: '{}' is not finite", label, p.alpha->name);
      if (a != 0) alpha = a;  // sd-scripts: alpha 0 or missing means alpha = r
    }
    km.scale = alpha / static_cast<double>(r);
    // The tensor it changes.
    const io::TensorInfo* w = nullptr;
    int third = -1;
    std::vector<std::string> tried;
    const bool unet = name.starts_with("lora_unet_");
    for (const std::string& c : kohya_ldm_candidates(name)) {
      const std::string flat = (unet ? "model_diffusion_model_" : "") + c;
      tried.push_back(flat);
      if (ambiguous.count(flat)) {
        fail("{}: module '{}': more than one checkpoint tensor is named '{}' with '_' for '.'",
             label, name, flat);
      }
      if (auto it = by_flat.find(flat); it != by_flat.end()) {
        w = it->second;
        break;
      }
    }
    if (!w) {
      for (const TextEncoder& te : text_encoders()) {
        if (!name.starts_with(te.kohya)) continue;
        if (auto oc = open_clip_target(name.substr(std::string(te.kohya).size()), te.open_clip)) {
          tried.push_back(oc->tensor);
          if ((w = checkpoint.find(oc->tensor))) third = oc->third;
        }
      }
    }
    if (!w) {
      if (tried.empty()) {
        fail(
            "{}: module '{}' is neither a UNet (lora_unet_) nor a text encoder (lora_te_, "
            "lora_te1_, lora_te2_) module smelt can map to a Stable Diffusion checkpoint",
            label, name);
      }
      fail(
          "{}: module '{}' is not in the checkpoint {} (looked for {}); the LoRA was made for "
          "another model family",
          label, name, checkpoint.path().string(), fmt::join(tried, ", "));
    }
    if (!dtype_is_convertible_float(w->dtype) || w->shape.size() < 2) {
      fail("{}: module '{}': the checkpoint's '{}' is {} {}, not a weight matrix", label, name,
           w->name, dtype_name(w->dtype), shape_str(w->shape));
    }
    km.target = w->name;
    const uint64_t rows_all = w->shape[0];
    if (third >= 0) {
      if (rows_all % 3 != 0) {
        fail("{}: module '{}': '{}' is {}, not three stacked q, k, v blocks", label, name, w->name,
             shape_str(w->shape));
      }
      km.row_begin = static_cast<uint64_t>(third) * rows_all / 3;
      km.row_end = km.row_begin + rows_all / 3;
    } else {
      km.row_begin = 0;
      km.row_end = rows_all;
    }
    const uint64_t rows = km.row_end - km.row_begin;
    const uint64_t cols = w->numel() / rows_all;
    // up [rows, r, 1...]; down [r, cols] or [r, in, kh, kw] with W's kernel (1×1 kernels and
    // 2-D factors mix, as sd-scripts squeezes them).
    auto ones = [](const std::vector<uint64_t>& s, size_t from) {
      return std::all_of(s.begin() + static_cast<long>(std::min(from, s.size())), s.end(),
                         [](uint64_t d) { return d == 1; });
    };
    const bool up_ok = p.up->shape[0] == rows && p.up->shape[1] == r && ones(p.up->shape, 2);
    bool down_ok = p.down->numel() == r * cols;
    if (p.down->shape.size() >= 3 && w->shape.size() >= 3) {
      down_ok = down_ok && std::equal(p.down->shape.begin() + 1, p.down->shape.end(),
                                      w->shape.begin() + 1, w->shape.end());
    } else {
      down_ok = down_ok && ones(p.down->shape, 2) && ones(w->shape, 2);
    }
    if (!up_ok || !down_ok) {
      fail(
          "{}: module '{}': lora_up is {} and lora_down {}, which do not fit the checkpoint's "
          "'{}' {}{}; the LoRA was made for another model",
          label, name, shape_str(p.up->shape), shape_str(p.down->shape), w->name,
          shape_str(w->shape),
          third >= 0 ? fmt::format(" (rows {}..{} of it)", km.row_begin, km.row_end) : "");
    }
    const std::string key = fmt::format("{}:{}", w->name, third);
    if (auto [it, fresh] = rows_taken.emplace(key, name); !fresh) {
      fail("{}: modules '{}' and '{}' both map to '{}'", label, it->second, name, w->name);
    }
    out.push_back(km);
  }
  if (out.empty()) fail("{}: holds no LoRA modules", label);
  return out;
}

KohyaBakeReport bake_kohya(const KohyaBakeOptions& o) {
  if (o.loras.empty()) fail("lora bake: give at least one LoRA file");
  if (!o.weights.empty() && o.weights.size() != o.loras.size()) {
    fail("lora bake: {} weights for {} LoRA files; give one weight per LoRA", o.weights.size(),
         o.loras.size());
  }
  for (double w : o.weights) {
    if (!std::isfinite(w)) fail("lora bake: weight {} is not finite", w);
  }
  if (o.out.extension() != ".safetensors") {
    fail("lora bake: OUT {} must be a .safetensors file", o.out.string());
  }
  io::ResolvedModel inputs;
  inputs.single_file = true;
  inputs.weight_files.push_back(o.checkpoint);
  for (const auto& l : o.loras) inputs.weight_files.push_back(l);
  exec::check_no_overlap(o.out, inputs, o.checkpoint.string());
  exec::check_existing_output(o.out, /*single_file=*/true, o.overwrite);

  const auto ckpt = open_tensors(o.checkpoint);
  std::vector<std::shared_ptr<io::TensorFile>> loras;
  struct Term {
    const io::TensorFile* file;
    const KohyaModule* module;
    double weight;
  };
  std::vector<std::vector<KohyaModule>> mapped;
  for (const auto& l : o.loras) {
    loras.push_back(open_tensors(l));
    mapped.push_back(map_kohya_lora(*loras.back(), *ckpt));
  }
  std::map<std::string, std::vector<Term>> terms;  // checkpoint tensor -> what adds to it
  KohyaBakeReport report;
  for (size_t i = 0; i < loras.size(); ++i) {
    for (const KohyaModule& m : mapped[i]) {
      // Finite values before anything is written.
      for (const io::TensorInfo* t : {m.down, m.up}) {
        for (float v : read_f32(*loras[i], *t)) {
          if (!std::isfinite(v)) {
            fail("{}: tensor '{}' holds NaN or Inf; the LoRA is broken", loras[i]->path().string(),
                 t->name);
          }
        }
      }
      terms[m.target].push_back({loras[i].get(), &m, o.weights.empty() ? 1.0 : o.weights[i]});
      ++report.modules;
    }
  }

  std::vector<io::TensorSpec> specs;
  for (const io::TensorInfo& t : ckpt->tensors()) specs.push_back({t.name, t.dtype, t.shape});
  io::SafetensorsWriter writer(o.out, specs, ckpt->metadata());
  exec::ThreadPool pool(o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency()));
  for (size_t ti = 0; ti < ckpt->tensors().size(); ++ti) {
    const io::TensorInfo& w = ckpt->tensors()[ti];
    auto it = terms.find(w.name);
    if (it == terms.end()) {
      // Unchanged: copied in pieces.
      constexpr uint64_t kPiece = uint64_t{8} << 20;
      const uint64_t pieces = (w.nbytes + kPiece - 1) / kPiece;
      pool.parallel_for(pieces, [&](size_t c, size_t) {
        const uint64_t off = c * kPiece, n = std::min(kPiece, w.nbytes - off);
        std::vector<char> buf(n);
        ckpt->read(w, off, buf.data(), n);
        writer.write(ti, off, buf.data(), n);
      });
      continue;
    }
    ++report.tensors_changed;
    // Each term's factors as f32: left = w·scale·up [rows, r], right = down [r, cols].
    struct Factors {
      uint64_t row_begin, row_end, rank;
      std::vector<float> left, right;
    };
    std::vector<Factors> fs;
    for (const Term& t : it->second) {
      Factors f;
      f.row_begin = t.module->row_begin;
      f.row_end = t.module->row_end;
      f.rank = t.module->down->shape[0];
      f.left = read_f32(*t.file, *t.module->up);
      const auto s = static_cast<float>(t.weight * t.module->scale);
      for (float& v : f.left) v *= s;
      f.right = read_f32(*t.file, *t.module->down);
      fs.push_back(std::move(f));
    }
    const uint64_t rows = w.shape[0], cols = w.numel() / rows, es = element_size(w.dtype);
    const uint64_t block_rows = std::max<uint64_t>(1, kBlockElements / cols);
    const uint64_t blocks = (rows + block_rows - 1) / block_rows;
    pool.parallel_for(blocks, [&](size_t b, size_t) {
      const uint64_t r0 = b * block_rows, n = std::min(block_rows, rows - r0);
      std::vector<char> raw(n * cols * es);
      std::vector<float> v(n * cols);
      ckpt->read(w, r0 * cols * es, raw.data(), raw.size());
      kernels::to_f32(w.dtype, raw.data(), v.data(), v.size());
      for (const Factors& f : fs) {
        for (uint64_t r = std::max(r0, f.row_begin); r < std::min(r0 + n, f.row_end); ++r) {
          float* row = v.data() + (r - r0) * cols;
          const float* l = f.left.data() + (r - f.row_begin) * f.rank;
          for (uint64_t k = 0; k < f.rank; ++k) {
            if (l[k] != 0.0f) kernels::scale_add(l[k], f.right.data() + k * cols, row, cols);
          }
        }
      }
      kernels::from_f32(w.dtype, v.data(), raw.data(), v.size());
      writer.write(ti, r0 * cols * es, raw.data(), raw.size());
    });
  }
  writer.finish();
  report.tensors = ckpt->tensors().size();
  return report;
}

}  // namespace smelt::lora
