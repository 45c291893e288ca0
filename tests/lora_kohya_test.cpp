// Kohya / A1111 LoRA files baked into a single-file Stable Diffusion checkpoint (lora/kohya.h):
// name mapping to LDM names, linear, 1×1 and 3×3 convolution modules and fused OpenCLIP q/k/v
// checked against the formula computed here in f64, several LoRAs with weights, refusals.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <tuple>

#include "smelt/error.h"
#include "smelt/io/safetensors.h"
#include "smelt/kernels/convert.h"
#include "smelt/lora/kohya.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using lora::kohya_ldm_candidates;
using testing::TempDir;

#define EXPECT_HAS(haystack, needle)                                                            \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" \
                                                        << (haystack)

struct Tensor {
  std::string name;
  std::vector<uint64_t> shape;
  std::vector<double> v;
  DType dtype = DType::kF32;
  uint64_t numel() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
  }
};

Tensor make(const std::string& name, std::vector<uint64_t> shape, uint32_t seed,
            DType dtype = DType::kF32) {
  Tensor t{name, std::move(shape), {}, dtype};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  t.v.resize(t.numel());
  for (double& x : t.v) x = u(rng);
  // The values the file holds.
  for (double& x : t.v) {
    const float f = static_cast<float>(x);
    if (dtype == DType::kF16)
      x = kernels::f16_to_f32(kernels::f32_to_f16(f));
    else
      x = f;
  }
  return t;
}

void write_file(const fs::path& path, const std::vector<Tensor>& tensors,
                const std::map<std::string, std::string>& metadata = {}) {
  std::vector<io::TensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  io::SafetensorsWriter w(path, specs, metadata);
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::vector<char> raw(specs[i].nbytes());
    if (tensors[i].dtype == DType::kI64) {
      for (size_t j = 0; j < tensors[i].v.size(); ++j) {
        const auto x = static_cast<int64_t>(tensors[i].v[j]);
        std::memcpy(raw.data() + 8 * j, &x, 8);
      }
    } else {
      const std::vector<float> f(tensors[i].v.begin(), tensors[i].v.end());
      kernels::from_f32(tensors[i].dtype, f.data(), raw.data(), f.size());
    }
    w.write(i, 0, raw.data(), raw.size());
  }
  w.finish();
}

std::vector<double> read_all(const io::TensorFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<char> raw(t->nbytes);
  f.read(*t, 0, raw.data(), raw.size());
  std::vector<float> v(t->numel());
  kernels::to_f32(t->dtype, raw.data(), v.data(), v.size());
  return {v.begin(), v.end()};
}

// W + w·scale·Σk up[o][k]·down[k][...] over rows [row0, row0 + up rows): sd-scripts' formula,
// conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) for 3×3 kernels, written out.
void add_lora(std::vector<double>& w, uint64_t cols, const Tensor& down, const Tensor& up,
              double weight_scale, uint64_t row0 = 0) {
  const uint64_t r = down.shape[0], out = up.shape[0];
  for (uint64_t o = 0; o < out; ++o) {
    for (uint64_t c = 0; c < cols; ++c) {
      double d = 0;
      for (uint64_t k = 0; k < r; ++k) d += up.v[o * r + k] * down.v[k * cols + c];
      w[(row0 + o) * cols + c] += weight_scale * d;
    }
  }
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want,
                  const std::string& what, double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::abs(got[i] - want[i]) > tol * std::max(1.0, std::abs(want[i])) && ++bad <= 3) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(KohyaNames, DiffusersModulesMapToLdmNames) {
  auto first = [](const std::string& n) {
    const auto c = kohya_ldm_candidates(n);
    return c.empty() ? std::string() : c.front();
  };
  EXPECT_EQ(first("lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k"),
            "input_blocks_5_1_transformer_blocks_0_attn2_to_k");
  EXPECT_EQ(first("lora_unet_down_blocks_0_attentions_0_proj_in"), "input_blocks_1_1_proj_in");
  EXPECT_EQ(first("lora_unet_up_blocks_3_attentions_2_proj_out"), "output_blocks_11_1_proj_out");
  EXPECT_EQ(first("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"),
            "middle_block_1_transformer_blocks_0_ff_net_0_proj");
  EXPECT_EQ(first("lora_unet_mid_block_resnets_1_time_emb_proj"), "middle_block_2_emb_layers_1");
  EXPECT_EQ(first("lora_unet_down_blocks_2_downsamplers_0_conv"), "input_blocks_9_0_op");
  EXPECT_EQ(first("lora_unet_up_blocks_1_resnets_2_conv_shortcut"),
            "output_blocks_5_0_skip_connection");
  EXPECT_EQ(first("lora_unet_down_blocks_0_resnets_1_conv2"), "input_blocks_2_0_out_layers_3");
  // The upsampler sits after the attention where the block has one (SDXL's up_blocks.0), else
  // right after the resnet (SD1.x's): both are tried.
  EXPECT_EQ(kohya_ldm_candidates("lora_unet_up_blocks_0_upsamplers_0_conv"),
            (std::vector<std::string>{"output_blocks_2_2_conv", "output_blocks_2_1_conv"}));
  EXPECT_EQ(first("lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
            "cond_stage_model_transformer_text_model_encoder_layers_0_self_attn_q_proj");
  EXPECT_EQ(first("lora_te1_text_model_encoder_layers_11_mlp_fc2"),
            "conditioner_embedders_0_transformer_text_model_encoder_layers_11_mlp_fc2");
  EXPECT_TRUE(kohya_ldm_candidates("lora_transformer_single_blocks_0_attn").empty());
}

// An SD1.x-style checkpoint: UNet linear, 1×1 and 3×3 convolutions, CLIP text encoder, VAE and an
// integer tensor; plus SDXL's fused OpenCLIP attention.
struct Sd {
  TempDir dir;
  std::vector<Tensor> ckpt;
  fs::path path;
  static constexpr const char* kUnet = "model.diffusion_model.";
  Sd(DType dtype = DType::kF32) {
    const std::string u = kUnet;
    ckpt = {
        make(u + "input_blocks.1.1.proj_in.weight", {8, 8, 1, 1}, 1, dtype),
        make(u + "input_blocks.1.1.proj_in.bias", {8}, 2, dtype),
        make(u + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", {8, 8}, 3, dtype),
        make(u + "input_blocks.1.0.in_layers.2.weight", {8, 4, 3, 3}, 4, dtype),
        make(u + "output_blocks.2.1.conv.weight", {8, 8, 3, 3}, 5, dtype),
        make(u + "middle_block.1.proj_out.weight", {8, 8, 1, 1}, 6, dtype),
        make("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
             {8, 8}, 7, dtype),
        make("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", {16, 8}, 8,
             dtype),
        make("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", {24, 8},
             9, dtype),
        make("first_stage_model.decoder.conv_in.weight", {8, 4, 3, 3}, 10, dtype),
    };
    Tensor ids{"cond_stage_model.transformer.text_model.embeddings.position_ids",
               {1, 77},
               {},
               DType::kI64};
    for (int i = 0; i < 77; ++i) ids.v.push_back(i);
    ckpt.push_back(ids);
    path = dir / "sd.safetensors";
    write_file(path, ckpt, {{"modelspec.title", "tiny"}});
  }
  const Tensor& get(const std::string& name) const {
    for (const Tensor& t : ckpt) {
      if (t.name == name) return t;
    }
    throw std::runtime_error(name);
  }
};

// A Kohya module: name.lora_down.weight, .lora_up.weight and (alpha >= 0) .alpha.
void module(std::vector<Tensor>* out, const std::string& name, std::vector<uint64_t> down,
            std::vector<uint64_t> up, double alpha, uint32_t seed) {
  out->push_back(make(name + ".lora_down.weight", std::move(down), seed));
  out->push_back(make(name + ".lora_up.weight", std::move(up), seed + 500));
  if (alpha >= 0) out->push_back(Tensor{name + ".alpha", {}, {alpha}});
}

const Tensor& find(const std::vector<Tensor>& v, const std::string& name) {
  for (const Tensor& t : v) {
    if (t.name == name) return t;
  }
  throw std::runtime_error(name);
}

TEST(KohyaBake, EveryModuleKindMatchesTheFormula) {
  Sd sd;
  std::vector<Tensor> a, b;
  module(&a, "lora_unet_down_blocks_0_attentions_0_proj_in", {4, 8, 1, 1}, {8, 4, 1, 1}, 2, 20);
  module(&a, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", {4, 8}, {8, 4},
         8, 21);
  module(&a, "lora_unet_down_blocks_0_resnets_0_conv1", {4, 4, 3, 3}, {8, 4, 1, 1}, -1, 22);
  module(&a, "lora_unet_up_blocks_0_upsamplers_0_conv", {2, 8, 3, 3}, {8, 2, 1, 1}, 0, 23);
  module(&a, "lora_unet_mid_block_attentions_0_proj_out", {4, 8}, {8, 4}, 1, 24);
  module(&a, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", {4, 8}, {8, 4}, 1, 25);
  module(&a, "lora_te2_text_model_encoder_layers_0_self_attn_k_proj", {4, 8}, {8, 4}, 4, 26);
  // A second LoRA on one of the same tensors, and on another.
  module(&b, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", {2, 8}, {8, 2},
         1, 30);
  module(&b, "lora_te_text_model_encoder_layers_0_mlp_fc1", {2, 8}, {16, 2}, 2, 31);
  write_file(sd.dir / "a.safetensors", a);
  write_file(sd.dir / "b.safetensors", b);

  lora::KohyaBakeOptions o;
  o.checkpoint = sd.path;
  o.loras = {sd.dir / "a.safetensors", sd.dir / "b.safetensors"};
  o.weights = {0.8, -0.5};
  o.out = sd.dir / "out.safetensors";
  o.threads = 2;
  const lora::KohyaBakeReport r = lora::bake_kohya(o);
  EXPECT_EQ(r.modules, 9u);
  EXPECT_EQ(r.tensors_changed, 8u);
  EXPECT_EQ(r.tensors, sd.ckpt.size());

  const auto out = io::SafetensorsFile::open(o.out);
  const std::string u = Sd::kUnet;
  struct Want {
    std::string tensor;
    std::vector<std::tuple<const std::vector<Tensor>*, std::string, double, uint64_t>> terms;
  };
  // (lora, module, weight·alpha/r, first row)
  const std::vector<Want> wants = {
      {u + "input_blocks.1.1.proj_in.weight",
       {{&a, "lora_unet_down_blocks_0_attentions_0_proj_in", 0.8 * 2 / 4, 0}}},
      {u + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
       {{&a, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 0.8 * 8 / 4,
         0},
        {&b, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", -0.5 / 2, 0}}},
      {u + "input_blocks.1.0.in_layers.2.weight",
       {{&a, "lora_unet_down_blocks_0_resnets_0_conv1", 0.8, 0}}},  // no alpha: alpha = r
      {u + "output_blocks.2.1.conv.weight",
       {{&a, "lora_unet_up_blocks_0_upsamplers_0_conv", 0.8, 0}}},  // alpha 0: alpha = r
      {u + "middle_block.1.proj_out.weight",
       {{&a, "lora_unet_mid_block_attentions_0_proj_out", 0.8 / 4, 0}}},
      {"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
       {{&a, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", 0.8 / 4, 0}}},
      {"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
       {{&b, "lora_te_text_model_encoder_layers_0_mlp_fc1", -0.5, 0}}},
      // k: the middle third of the fused q, k, v rows.
      {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
       {{&a, "lora_te2_text_model_encoder_layers_0_self_attn_k_proj", 0.8, 8}}},
  };
  for (const Want& want : wants) {
    const Tensor& w = sd.get(want.tensor);
    std::vector<double> expected = w.v;
    for (const auto& [file, name, s, row0] : want.terms) {
      add_lora(expected, w.numel() / w.shape[0], find(*file, name + ".lora_down.weight"),
               find(*file, name + ".lora_up.weight"), s, row0);
    }
    expect_close(read_all(*out, want.tensor), expected, want.tensor, 1e-6);
  }
  // Everything else byte for byte, the metadata kept.
  const auto in = io::SafetensorsFile::open(sd.path);
  for (const char* name : {"model.diffusion_model.input_blocks.1.1.proj_in.bias",
                           "first_stage_model.decoder.conv_in.weight",
                           "cond_stage_model.transformer.text_model.embeddings.position_ids"}) {
    const io::TensorInfo* t = in->find(name);
    std::string x(t->nbytes, '\0'), y(t->nbytes, '\0');
    in->read(*t, 0, x.data(), x.size());
    out->read(*out->find(name), 0, y.data(), y.size());
    EXPECT_EQ(x, y) << name;
  }
  EXPECT_EQ(out->metadata().at("modelspec.title"), "tiny");
}

TEST(KohyaBake, HalfPrecisionCheckpointIsRoundedOnce) {
  Sd sd(DType::kF16);
  std::vector<Tensor> a;
  module(&a, "lora_unet_down_blocks_0_resnets_0_conv1", {4, 4, 3, 3}, {8, 4, 1, 1}, 2, 40);
  write_file(sd.dir / "a.safetensors", a);
  lora::KohyaBakeOptions o{sd.path, {sd.dir / "a.safetensors"}, {}, sd.dir / "o.safetensors"};
  lora::bake_kohya(o);
  const std::string name = std::string(Sd::kUnet) + "input_blocks.1.0.in_layers.2.weight";
  std::vector<double> expected = sd.get(name).v;
  add_lora(expected, 36, a[0], a[1], 0.5);
  const auto got = read_all(*io::SafetensorsFile::open(o.out), name);
  for (size_t i = 0; i < got.size(); ++i) {
    const float nearest = kernels::f16_to_f32(kernels::f32_to_f16(static_cast<float>(expected[i])));
    EXPECT_LE(std::abs(got[i] - expected[i]), std::abs(nearest - expected[i]) + 1e-7) << i;
  }
  EXPECT_EQ(io::SafetensorsFile::open(o.out)->find(name)->dtype, DType::kF16);
}

TEST(KohyaBake, BadInputIsRefusedBeforeAnythingIsWritten) {
  Sd sd;
  auto bake = [&](const std::vector<Tensor>& lora, lora::KohyaBakeOptions o = {}) {
    write_file(sd.dir / "l.safetensors", lora);
    o.checkpoint = sd.path;
    o.loras = {sd.dir / "l.safetensors"};
    if (o.out.empty()) o.out = sd.dir / "bad.safetensors";
    const std::string e = error_of([&] { lora::bake_kohya(o); });
    EXPECT_FALSE(fs::exists(sd.dir / "bad.safetensors")) << e;
    return e;
  };
  std::vector<Tensor> missing;
  module(&missing, "lora_unet_down_blocks_2_attentions_1_proj_in", {4, 8}, {8, 4}, 1, 1);
  std::string e = bake(missing);
  EXPECT_HAS(e, "l.safetensors");
  EXPECT_HAS(e, "module 'lora_unet_down_blocks_2_attentions_1_proj_in' is not in the checkpoint");
  EXPECT_HAS(e, "model_diffusion_model_input_blocks_8_1_proj_in");

  std::vector<Tensor> wide;
  module(&wide, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", {4, 16},
         {8, 4}, 1, 1);
  e = bake(wide);
  EXPECT_HAS(e, "lora_down [4, 16]");
  EXPECT_HAS(e, "[8, 8]");

  std::vector<Tensor> loha{make("lora_unet_x.hada_w1_a", {4, 8}, 1)};
  EXPECT_HAS(bake(loha), "LyCORIS LoHa");
  std::vector<Tensor> half{
      make("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", {4, 8, 1, 1}, 1)};
  EXPECT_HAS(bake(half), "has lora_down.weight but no lora_up.weight");

  std::vector<Tensor> ok;
  module(&ok, "lora_unet_down_blocks_0_attentions_0_proj_in", {4, 8, 1, 1}, {8, 4, 1, 1}, 1, 1);
  std::vector<Tensor> nan = ok;
  nan[1].v[3] = std::nan("");
  EXPECT_HAS(bake(nan), "holds NaN or Inf");
  lora::KohyaBakeOptions w;
  w.weights = {1, 2};
  EXPECT_HAS(bake(ok, w), "2 weights for 1 LoRA files");
  // An existing OUT is kept unless --overwrite; the checkpoint itself is never OUT.
  testing::write_bytes(sd.dir / "taken.safetensors", "x");
  lora::KohyaBakeOptions taken;
  taken.out = sd.dir / "taken.safetensors";
  EXPECT_NE(bake(ok, taken), "(no error)");
  EXPECT_EQ(testing::read_bytes(sd.dir / "taken.safetensors"), "x");
  lora::KohyaBakeOptions self;
  self.out = sd.path;
  self.overwrite = true;
  EXPECT_HAS(bake(ok, self), "input model");
}

}  // namespace
}  // namespace smelt
