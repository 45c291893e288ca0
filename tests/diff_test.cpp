// `smelt diff`: zero for a model against itself, a known delta's norm read back exactly, task
// vector statistics and TIES counts against a brute-force computation, the heatmap valid SVG
// whose cells carry the JSON's values, and clear errors.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <regex>

#include "smelt/analysis/model_diff.h"
#include "smelt/io/safetensors.h"
#include "test_util.h"

namespace smelt {
namespace {

namespace fs = std::filesystem;
using testing::quote;
using testing::run_smelt;
using testing::TempDir;

struct Tensor {
  std::vector<uint64_t> shape;
  std::vector<float> values;
};
using Tensors = std::map<std::string, Tensor>;

// Writes `tensors` as one F32 .safetensors file.
void write_model(const fs::path& path, const Tensors& tensors) {
  std::vector<io::TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, DType::kF32, t.shape});
  io::SafetensorsWriter w(path, specs, {});
  size_t i = 0;
  for (const auto& [name, t] : tensors) w.write(i++, 0, t.values.data(), t.values.size() * 4);
  w.finish();
}

// A small llama-named model: embeddings, and per layer q_proj, down_proj (larger than the 256
// element chunks the tests ask for) and two norms. Values N(0, 0.5) from `seed`.
Tensors random_model(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  Tensors m;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    Tensor t{shape, {}};
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    for (uint64_t i = 0; i < n; ++i) t.values.push_back(normal(rng));
    m[name] = std::move(t);
  };
  add("model.embed_tokens.weight", {16, 8});
  for (int l = 0; l < 2; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "self_attn.q_proj.weight", {8, 8});
    add(p + "mlp.down_proj.weight", {8, 100});
    add(p + "input_layernorm.weight", {8});
    add(p + "post_attention_layernorm.weight", {8});
  }
  return m;
}

nlohmann::json diff_json(const std::string& args) {
  auto r = run_smelt("diff " + args + " --json -q");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(r.output);
}

const nlohmann::json& tensor_entry(const nlohmann::json& j, const std::string& name) {
  for (const auto& t : j["tensors"]) {
    if (t["name"] == name) return t;
  }
  ADD_FAILURE() << "no entry for " << name;
  static const nlohmann::json none;
  return none;
}

const nlohmann::json& layer_entry(const nlohmann::json& j, int layer, const std::string& module) {
  for (const auto& t : j["layers"]) {
    if (t["layer"] == layer && t["module"] == module) return t;
  }
  ADD_FAILURE() << "no entry for layer " << layer << " " << module;
  static const nlohmann::json none;
  return none;
}

double sum_sq_diff(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = double(x[i]) - double(y[i]);
    s += d * d;
  }
  return s;
}

double sum_sq(const std::vector<float>& x) { return sum_sq_diff(x, std::vector<float>(x.size())); }

TEST(Diff, ModelAgainstItselfReportsZeroChange) {
  TempDir work;
  write_model(work / "a.safetensors", random_model(1));
  const auto j = diff_json(quote(work / "a.safetensors") + " " + quote(work / "a.safetensors"));
  ASSERT_EQ(j["tensors"].size(), 9u);
  for (const auto& t : j["tensors"]) {
    EXPECT_EQ(t["norm_diff"].get<double>(), 0.0) << t["name"];
    EXPECT_EQ(t["rel_change"].get<double>(), 0.0) << t["name"];
    EXPECT_GT(t["norm_a"].get<double>(), 0.0) << t["name"];
  }
  EXPECT_EQ(j["total"]["rel_change"].get<double>(), 0.0);

  // A model folder (BF16, several layers) too, as a table.
  auto r = run_smelt("dev make-model " + quote(work / "m") + " --hidden 32 --layers 3 --heads 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_smelt("diff " + quote(work / "m") + " " + quote(work / "m") + " --layers");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model.layers.2.mlp.down_proj.weight"), std::string::npos) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\ntotal +0 +0\n"))) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\n2 norms +0 +0\n"))) << r.output;
}

TEST(Diff, FineTuneWithKnownDeltaReportsThatDeltasNorm) {
  TempDir work;
  const Tensors a = random_model(2);
  Tensors b = a;
  // δ chosen: 0.01 × (i·7 mod 13 − 6), zero on the first layer's input norm.
  std::map<std::string, double> delta_sq;
  for (auto& [name, t] : b) {
    for (size_t i = 0; i < t.values.size(); ++i) {
      if (name == "model.layers.0.input_layernorm.weight") break;
      t.values[i] += 0.01f * static_cast<float>(static_cast<int>((i * 7) % 13) - 6);
    }
    delta_sq[name] = sum_sq_diff(t.values, a.at(name).values);
  }
  write_model(work / "a.safetensors", a);
  write_model(work / "b.safetensors", b);
  const std::string args =
      quote(work / "b.safetensors") + " " + quote(work / "a.safetensors") + " --chunk-elements 256";
  const auto j = diff_json(args + " -j 1");
  double total = 0;
  for (const auto& [name, sq] : delta_sq) {
    const auto& t = tensor_entry(j, name);
    EXPECT_NEAR(t["norm_diff"].get<double>(), std::sqrt(sq), 1e-12) << name;
    EXPECT_NEAR(t["rel_change"].get<double>(), std::sqrt(sq / sum_sq(a.at(name).values)), 1e-12)
        << name;
    total += sq;
  }
  EXPECT_EQ(tensor_entry(j, "model.layers.0.input_layernorm.weight")["norm_diff"].get<double>(),
            0.0);
  EXPECT_NEAR(j["total"]["norm_diff"].get<double>(), std::sqrt(total), 1e-12);
  // The layer × module cells: both norms of layer 1 in one "norms" cell.
  const double norms1 = delta_sq["model.layers.1.input_layernorm.weight"] +
                        delta_sq["model.layers.1.post_attention_layernorm.weight"];
  EXPECT_NEAR(layer_entry(j, 1, "norms")["norm_diff"].get<double>(), std::sqrt(norms1), 1e-12);
  EXPECT_NEAR(layer_entry(j, 0, "q_proj")["norm_diff"].get<double>(),
              std::sqrt(delta_sq["model.layers.0.self_attn.q_proj.weight"]), 1e-12);
  EXPECT_EQ(j["modules"], nlohmann::json({"q_proj", "down_proj", "norms"}));
  EXPECT_TRUE(tensor_entry(j, "model.embed_tokens.weight")["layer"].is_null());
  // Identical whatever the thread count.
  EXPECT_EQ(diff_json(args + " -j 3").dump(), j.dump());
}

// What TIES keeps at `density` for task vectors ta, tb, by brute force: each keeps its k largest
// magnitudes (ties by index), the elected sign is that of the kept values' sum.
struct TiesCounts {
  uint64_t kept_a = 0, kept_b = 0, agree_a = 0, agree_b = 0, nonzero = 0;
};
TiesCounts brute_force_ties(const std::vector<float>& ta, const std::vector<float>& tb,
                            double density) {
  const size_t n = ta.size();
  const size_t k = static_cast<size_t>(std::floor(density * static_cast<double>(n)));
  auto trim = [&](const std::vector<float>& t) {
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::stable_sort(idx.begin(), idx.end(),
                     [&](size_t x, size_t y) { return std::fabs(t[x]) > std::fabs(t[y]); });
    std::vector<float> out(n, 0.0f);
    for (size_t i = 0; i < k; ++i) out[idx[i]] = t[idx[i]];
    return out;
  };
  const auto a = trim(ta), b = trim(tb);
  auto sign = [](float x) { return (x > 0) - (x < 0); };
  TiesCounts c;
  for (size_t i = 0; i < n; ++i) {
    const int elected = sign(a[i] + b[i]);
    const bool agree_a = a[i] != 0 && sign(a[i]) == elected;
    const bool agree_b = b[i] != 0 && sign(b[i]) == elected;
    c.kept_a += a[i] != 0;
    c.kept_b += b[i] != 0;
    c.agree_a += agree_a;
    c.agree_b += agree_b;
    c.nonzero += agree_a || agree_b;
  }
  return c;
}

class DiffWithBase : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = random_model(3);
    a_ = c_;
    b_ = c_;
    std::mt19937 rng(4);
    std::normal_distribution<float> normal(0.0f, 0.05f);
    for (auto& [name, t] : a_) {
      for (size_t i = 0; i < t.values.size(); ++i) {
        const float ta = normal(rng);
        float tb = normal(rng);
        if (name == "model.layers.0.self_attn.q_proj.weight") tb = -ta;     // opposite task
        if (name == "model.layers.1.self_attn.q_proj.weight") tb = 2 * ta;  // same direction
        t.values[i] += ta;
        b_[name].values[i] += tb;
      }
    }
    write_model(work_ / "a.safetensors", a_);
    write_model(work_ / "b.safetensors", b_);
    write_model(work_ / "c.safetensors", c_);
    args_ = quote(work_ / "a.safetensors") + " " + quote(work_ / "b.safetensors") + " --base " +
            quote(work_ / "c.safetensors") + " --chunk-elements 256";
  }
  // The task vector of model m for tensor `name`, as f32 differences.
  std::vector<float> tau(const Tensors& m, const std::string& name) {
    std::vector<float> t(m.at(name).values.size());
    for (size_t i = 0; i < t.size(); ++i) t[i] = m.at(name).values[i] - c_.at(name).values[i];
    return t;
  }
  TempDir work_;
  Tensors a_, b_, c_;
  std::string args_;
};

TEST_F(DiffWithBase, TaskVectorNormsCosineAndSignConflicts) {
  const auto j = diff_json(args_ + " --density 0.3");
  const auto& opposite = tensor_entry(j, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_NEAR(opposite["cosine"].get<double>(), -1.0, 1e-6);
  EXPECT_NEAR(opposite["sign_conflicts"].get<double>(), 1.0, 1e-12);
  const auto& same = tensor_entry(j, "model.layers.1.self_attn.q_proj.weight");
  EXPECT_NEAR(same["cosine"].get<double>(), 1.0, 1e-6);
  EXPECT_EQ(same["sign_conflicts"].get<double>(), 0.0);
  for (const auto& [name, t] : c_) {
    const auto& e = tensor_entry(j, name);
    std::vector<double> ta, tb;
    double dot = 0, na = 0, nb = 0;
    uint64_t both = 0, conflicts = 0;
    for (size_t i = 0; i < t.values.size(); ++i) {
      const double x = double(a_[name].values[i]) - t.values[i];
      const double y = double(b_[name].values[i]) - t.values[i];
      dot += x * y, na += x * x, nb += y * y;
      both += x != 0 && y != 0;
      conflicts += x != 0 && y != 0 && (x > 0) != (y > 0);
    }
    EXPECT_NEAR(e["norm_tau_a"].get<double>(), std::sqrt(na), 1e-12) << name;
    EXPECT_NEAR(e["norm_tau_b"].get<double>(), std::sqrt(nb), 1e-12) << name;
    EXPECT_NEAR(e["cosine"].get<double>(), dot / std::sqrt(na * nb), 1e-12) << name;
    EXPECT_DOUBLE_EQ(e["sign_conflicts"].get<double>(), double(conflicts) / double(both)) << name;
    const TiesCounts ties = brute_force_ties(tau(a_, name), tau(b_, name), 0.3);
    EXPECT_DOUBLE_EQ(e["ties_agree_a"].get<double>(), double(ties.agree_a) / double(ties.kept_a))
        << name;
    EXPECT_DOUBLE_EQ(e["ties_agree_b"].get<double>(), double(ties.agree_b) / double(ties.kept_b))
        << name;
    EXPECT_DOUBLE_EQ(e["ties_nonzero"].get<double>(),
                     double(ties.nonzero) / double(t.values.size()))
        << name;
  }
  EXPECT_EQ(j["density"].get<double>(), 0.3);
}

// The attributes of every <rect class="cell"> in an SVG: row, column, value (absent = NaN).
struct SvgCell {
  int row = -1, col = -1;
  std::string value;
};
std::vector<SvgCell> svg_cells(const std::string& svg) {
  std::vector<SvgCell> cells;
  const std::regex rect("<rect[^>]*class=\"cell\"[^>]*>");
  const std::regex row("data-row=\"(\\d+)\""), col("data-col=\"(\\d+)\""),
      value("data-value=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), rect); it != std::sregex_iterator();
       ++it) {
    const std::string tag = it->str();
    std::smatch m;
    SvgCell c;
    if (std::regex_search(tag, m, row)) c.row = std::stoi(m[1]);
    if (std::regex_search(tag, m, col)) c.col = std::stoi(m[1]);
    if (std::regex_search(tag, m, value)) c.value = m[1];
    cells.push_back(c);
  }
  return cells;
}

TEST_F(DiffWithBase, HeatmapIsValidSvgWhoseCellsCarryTheJsonValues) {
  ASSERT_EQ(testing::run_command("command -v rsvg-convert").exit_code, 0)
      << "rsvg-convert is missing: install librsvg2-bin (scripts/setup.sh does)";
  for (const std::string metric : {"cosine", "rel_change"}) {
    const fs::path svg = work_ / (metric + ".svg");
    const auto j = diff_json(args_ + " --heatmap " + quote(svg) + " --metric " + metric);
    ASSERT_TRUE(fs::exists(svg));
    const auto png = work_ / (metric + ".png");
    auto r = testing::run_command("rsvg-convert -o " + quote(png) + " " + quote(svg));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(testing::read_bytes(png).substr(1, 3), "PNG");
    const auto cells = svg_cells(testing::read_bytes(svg));
    // 2 layers × 3 modules, every cell filled.
    ASSERT_EQ(cells.size(), 6u) << testing::read_bytes(svg);
    const auto modules = j["modules"].get<std::vector<std::string>>();
    for (const SvgCell& c : cells) {
      ASSERT_GE(c.row, 0);
      ASSERT_GE(c.col, 0);
      ASSERT_LT(static_cast<size_t>(c.col), modules.size());
      const double expected = layer_entry(j, c.row, modules[c.col])[metric].get<double>();
      EXPECT_EQ(std::stod(c.value), expected) << metric << " " << c.row << " " << c.col;
    }
  }
}

TEST(Diff, GgufInputsAreDequantizedAndGroupedByLlamaCppModule) {
  TempDir work;
  auto r = run_smelt("dev make-model " + quote(work / "m") +
                     " --hidden 64 --layers 2 --heads 2 --vocab 260 --dtype F32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  testing::write_bytes(work / "one.yml",
                       "merge_method: linear\nmodels:\n  - model: " + (work / "m").string() +
                           "\n    parameters: {weight: 1.0}\n");
  for (const std::string type : {"F32", "Q8_0"}) {
    r = run_smelt("merge " + quote(work / "one.yml") + " " + quote(work / (type + ".gguf")) +
                  " -q --out-type " + type);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const auto j = diff_json(quote(work / "Q8_0.gguf") + " " + quote(work / "F32.gguf"));
  EXPECT_EQ(j["modules"], nlohmann::json({"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                          "ffn_up", "ffn_down", "norms"}));
  for (const auto& t : j["tensors"]) {
    const double rel = t["rel_change"].get<double>();
    if (t["shape"].size() == 1) {
      EXPECT_EQ(rel, 0.0) << t["name"];  // norms stay F32
    } else {
      // Q8_0's rounding error: small but not zero.
      EXPECT_GT(rel, 1e-4) << t["name"];
      EXPECT_LT(rel, 2e-2) << t["name"];
    }
  }
  // A GGUF file against a safetensors folder: nothing shared, and the error says why.
  r = run_smelt("diff " + quote(work / "F32.gguf") + " " + quote(work / "m"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("compare a GGUF file with a GGUF file"), std::string::npos) << r.output;
}

TEST(DiffBadInput, ShapesThatDifferNameTheTensor) {
  TempDir work;
  Tensors a = random_model(5), b = random_model(6);
  b["model.layers.1.mlp.down_proj.weight"].shape = {4, 200};
  write_model(work / "a.safetensors", a);
  write_model(work / "b.safetensors", b);
  auto r = run_smelt("diff " + quote(work / "a.safetensors") + " " + quote(work / "b.safetensors"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[4, 200]"), std::string::npos) << r.output;
}

TEST(DiffBadInput, MismatchedTensorSetsAreListedAndTheRestCompared) {
  TempDir work;
  Tensors a = random_model(5), b = a;
  b.erase("model.layers.1.input_layernorm.weight");
  write_model(work / "a.safetensors", a);
  write_model(work / "b.safetensors", b);
  auto r = run_smelt("diff " + quote(work / "a.safetensors") + " " + quote(work / "b.safetensors"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1 tensor(s) only in A (not compared): "
                          "model.layers.1.input_layernorm.weight"),
            std::string::npos)
      << r.output;
  // Nothing shared: an error.
  Tensors other = {{"x.weight", {{2}, {1.0f, 2.0f}}}};
  write_model(work / "other.safetensors", other);
  r = run_smelt("diff " + quote(work / "a.safetensors") + " " + quote(work / "other.safetensors"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("share no tensor"), std::string::npos) << r.output;
}

TEST(DiffBadInput, MetricErrorsSayWhatToDo) {
  TempDir work;
  write_model(work / "a.safetensors", random_model(7));
  const std::string ab = quote(work / "a.safetensors") + " " + quote(work / "a.safetensors");
  auto r = run_smelt("diff " + ab + " --heatmap " + quote(work / "h.svg") + " --metric cosine");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("needs a base model"), std::string::npos) << r.output;
  r = run_smelt("diff " + ab + " --metric bogus");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("unknown; use one of"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(work / "h.svg"));
}

TEST(DiffModuleType, GroupsNormsAndStripsWeightAndBias) {
  EXPECT_EQ(analysis::module_type("self_attn.q_proj.weight"), "q_proj");
  EXPECT_EQ(analysis::module_type("self_attn.q_proj.bias"), "q_proj");
  EXPECT_EQ(analysis::module_type("post_attention_layernorm.weight"), "norms");
  EXPECT_EQ(analysis::module_type("attn_norm.weight"), "norms");
  EXPECT_EQ(analysis::module_type("ffn_down.weight"), "ffn_down");
}

}  // namespace
}  // namespace smelt
