// mergekit-moe config parsing (docs/moe.md).
#include "smelt/config/moe_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::config {
namespace {

const std::vector<std::string> kTopKeys = {"base_model",  "experts",           "gate_mode",
                                           "dtype",       "experts_per_token", "shared_experts",
                                           "architecture"};
const std::vector<std::string> kExpertKeys = {"source_model", "positive_prompts",
                                              "negative_prompts", "noise_scale", "residual_scale"};

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "nothing (null)";
    case YAML::NodeType::Scalar:
      return fmt::format("\"{}\"", n.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "nothing";
  }
}

bool present(const YAML::Node& n) { return n.IsDefined() && !n.IsNull(); }

void check_keys(const YAML::Node& node, const std::string& path,
                const std::vector<std::string>& allowed, std::vector<std::string>* warnings) {
  std::set<std::string> seen;
  for (const auto& entry : node) {
    if (!entry.first.IsScalar()) {
      fail("{}: keys must be plain strings; got {} as a key", path.empty() ? "(top level)" : path,
           describe(entry.first));
    }
    const std::string& key = entry.first.Scalar();
    const std::string where = path.empty() ? key : path + "." + key;
    if (!seen.insert(key).second) fail("{}: duplicate key; keep only one", where);
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string hint;
    if (std::string s = closest_match(key, allowed); !s.empty()) {
      hint = fmt::format("did you mean '{}'?", s);
    } else {
      hint = fmt::format("valid keys here are {}", fmt::join(allowed, ", "));
    }
    warnings->push_back(fmt::format("{}: unknown key (ignored); {}", where, hint));
  }
}

std::string read_string(const YAML::Node& n, const std::string& path, std::string_view what) {
  if (!present(n)) fail("{}: missing; give {}", path, what);
  if (!n.IsScalar() || n.Scalar().empty()) {
    fail("{}: expected {}; got {}", path, what, describe(n));
  }
  return n.Scalar();
}

double read_number(const YAML::Node& n, const std::string& path) {
  if (n.IsScalar()) {
    try {
      size_t used = 0;
      const double v = std::stod(n.Scalar(), &used);
      if (used == n.Scalar().size() && std::isfinite(v)) return v;
    } catch (const std::exception&) {
    }
  }
  fail("{}: expected a number; got {}", path, describe(n));
}

std::vector<std::string> read_prompts(const YAML::Node& n, const std::string& path) {
  std::vector<std::string> out;
  if (!present(n)) return out;
  if (!n.IsSequence()) fail("{}: expected a list of prompts; got {}", path, describe(n));
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      fail("{}[{}]: expected a prompt (a string); got {}", path, i, describe(n[i]));
    }
    out.push_back(n[i].Scalar());
  }
  return out;
}

// One entry of experts or shared_experts.
MoeExpert read_expert(const YAML::Node& e, const std::string& path,
                      std::vector<std::string>* warnings) {
  if (!e.IsMap()) fail("{}: expected a mapping with source_model; got {}", path, describe(e));
  check_keys(e, path, kExpertKeys, warnings);
  MoeExpert x;
  x.source_model = read_string(e["source_model"], path + ".source_model", "a model");
  x.positive_prompts = read_prompts(e["positive_prompts"], path + ".positive_prompts");
  x.negative_prompts = read_prompts(e["negative_prompts"], path + ".negative_prompts");
  for (size_t j = 0; j < x.positive_prompts.size(); ++j) {
    if (x.positive_prompts[j].empty())
      fail("{}.positive_prompts[{}]: the prompt is empty", path, j);
  }
  for (size_t j = 0; j < x.negative_prompts.size(); ++j) {
    if (x.negative_prompts[j].empty())
      fail("{}.negative_prompts[{}]: the prompt is empty", path, j);
  }
  if (present(e["noise_scale"])) {
    x.noise_scale = read_number(e["noise_scale"], path + ".noise_scale");
    if (*x.noise_scale < 0) fail("{}.noise_scale: must be >= 0; got {}", path, *x.noise_scale);
  }
  if (present(e["residual_scale"])) {
    x.residual_scale = read_number(e["residual_scale"], path + ".residual_scale");
  }
  return x;
}

constexpr MoeOutput kOutputs[] = {MoeOutput::kMixtral, MoeOutput::kDeepseek, MoeOutput::kQwen2,
                                  MoeOutput::kQwen3};

}  // namespace

const char* moe_output_name(MoeOutput family) {
  switch (family) {
    case MoeOutput::kMixtral:
      return "Mixtral";
    case MoeOutput::kDeepseek:
      return "DeepSeek MoE";
    case MoeOutput::kQwen2:
      return "Qwen MoE";
    case MoeOutput::kQwen3:
      return "Qwen3 MoE";
  }
  return "?";
}

MoeConfig parse_moe_config(const std::string& yaml_text) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail("not valid YAML: {}", e.what());
  }
  if (!root.IsMap())
    fail("(top level): expected a mergekit-moe config mapping; got {}", describe(root));
  MoeConfig c;
  c.yaml_text = yaml_text;
  check_keys(root, "", kTopKeys, &c.warnings);
  if (present(root["merge_method"]) || present(root["models"]) || present(root["slices"])) {
    fail("this is a mergekit-yaml config (merge_method/models/slices); run it with smelt merge");
  }
  c.base_model = read_string(root["base_model"], "base_model",
                             "the model donating attention, "
                             "norms and embeddings");
  // gate_mode first: it decides what the experts need.
  if (present(root["gate_mode"])) {
    c.gate_mode = read_string(root["gate_mode"], "gate_mode", "a gate mode such as hidden");
  }
  const std::string& g = c.gate_mode;
  static const std::vector<std::string> kModes = {"hidden",      "hidden_avg", "hidden_last",
                                                  "cheap_embed", "random",     "uniform_random"};
  if (std::find(kModes.begin(), kModes.end(), g) == kModes.end()) {
    const std::string guess = closest_match(g, kModes);
    fail("gate_mode: unknown gate mode \"{}\"; {}use one of {}", g,
         guess.empty() ? "" : fmt::format("did you mean \"{}\"? ", guess), fmt::join(kModes, ", "));
  }
  const bool random_router = g == "random" || g == "uniform_random";
  if (present(root["dtype"])) {
    const std::string name = read_string(root["dtype"], "dtype", "a dtype name such as bfloat16");
    c.dtype = parse_torch_dtype(name);
    if (!c.dtype) {
      fail("dtype: unknown dtype \"{}\"; use float32, float16 or bfloat16", name);
    }
  }
  if (present(root["experts_per_token"])) {
    const YAML::Node& n = root["experts_per_token"];
    const double v = read_number(n, "experts_per_token");
    if (v != std::floor(v) || v < 1 || v > 1e6) {
      fail("experts_per_token: must be an integer >= 1; got {}", n.Scalar());
    }
    c.experts_per_token = static_cast<int64_t>(v);
  }
  if (present(root["architecture"])) {
    c.architecture = read_string(root["architecture"], "architecture", "an output architecture");
    std::string lower = c.architecture;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    // mergekit matches a prefix of the output family's name, case-insensitively.
    for (const MoeOutput f : kOutputs) {
      std::string name = moe_output_name(f);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
      if (name.starts_with(lower)) c.allowed_outputs.push_back(f);
    }
    if (c.allowed_outputs.empty()) {
      fail(
          "architecture: \"{}\" matches no output architecture; give a prefix of one of "
          "\"Mixtral\", \"DeepSeek MoE\", \"Qwen MoE\", \"Qwen3 MoE\"",
          c.architecture);
    }
  } else {
    c.allowed_outputs.assign(std::begin(kOutputs), std::end(kOutputs));
  }
  const YAML::Node experts = root["experts"];
  if (!present(experts)) fail("experts: missing; list the expert models (source_model: ...)");
  if (!experts.IsSequence() || experts.size() == 0) {
    fail("experts: expected a non-empty list of experts; got {}", describe(experts));
  }
  bool prompts_seen = false;
  std::set<std::vector<std::string>> prompt_sets;
  for (size_t i = 0; i < experts.size(); ++i) {
    MoeExpert x = read_expert(experts[i], fmt::format("experts[{}]", i), &c.warnings);
    prompts_seen |= !x.positive_prompts.empty() || !x.negative_prompts.empty();
    if (!random_router && x.positive_prompts.empty()) {
      fail(
          "experts[{}].positive_prompts: missing; gate_mode {} builds each expert's router row "
          "from its prompts (or use gate_mode random)",
          i, g);
    }
    std::vector<std::string> set = x.positive_prompts;
    std::sort(set.begin(), set.end());
    prompt_sets.insert(set);
    c.experts.push_back(std::move(x));
  }
  if (present(root["shared_experts"])) {
    const YAML::Node& n = root["shared_experts"];
    if (!n.IsSequence()) fail("shared_experts: expected a list; got {}", describe(n));
    if (n.size() > 1) {
      fail(
          "shared_experts: {} shared experts listed; every output architecture takes at most "
          "one (Qwen MoE exactly one, DeepSeek MoE none or one)",
          n.size());
    }
    for (size_t i = 0; i < n.size(); ++i) {
      MoeExpert x = read_expert(n[i], fmt::format("shared_experts[{}]", i), &c.warnings);
      if (x.positive_prompts.empty() && !x.negative_prompts.empty()) {
        fail(
            "shared_experts[{}].negative_prompts: given without positive_prompts; a shared "
            "expert's router row needs positive prompts (or none at all)",
            i);
      }
      if (random_router && !x.positive_prompts.empty()) prompts_seen = true;
      c.shared_experts.push_back(std::move(x));
    }
  }
  if (!random_router && c.experts.size() > 1 && prompt_sets.size() == 1) {
    fail(
        "experts[*].positive_prompts: every expert has the same prompts, so every router row "
        "would be the same; give each expert prompts for what it is good at");
  }
  if (prompts_seen && random_router) {
    c.warnings.push_back(fmt::format(
        "experts[*].positive_prompts/negative_prompts: ignored with gate_mode {} (the router is "
        "random)",
        g));
  }
  if (c.experts_per_token > static_cast<int64_t>(c.experts.size())) {
    fail("experts_per_token: {} is more than the {} expert{} listed under experts",
         c.experts_per_token, c.experts.size(), c.experts.size() == 1 ? "" : "s");
  }
  return c;
}

MoeConfig load_moe_config(const std::filesystem::path& path) {
  return parse_moe_config(io::read_whole_file(path));
}

}  // namespace smelt::config
