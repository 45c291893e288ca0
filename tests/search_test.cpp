// The search verbs (docs/search.md): grids and YAML paths, the SVG plots (rendered by
// rsvg-convert and read back), and `smelt interpolate`, `smelt sweep` and `smelt soup` on the
// repository's trained zoo (examples/zoo), checked against `smelt eval` of the same points.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "smelt/error.h"
#include "smelt/report/svg_plot.h"
#include "smelt/search/grid.h"
#include "smelt/search/yaml_path.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using smelt::testing::quote;
using smelt::testing::read_bytes;
using smelt::testing::run_command;
using smelt::testing::run_smelt;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const smelt::Error& e) {
    return e.what();
  }
  return "";
}

TEST(SearchGrid, AxesParseAndCoverBothEnds) {
  const auto a = smelt::search::parse_grid_axis("models[1].parameters.weight=0:1:5");
  EXPECT_EQ(a.path, "models[1].parameters.weight");
  EXPECT_EQ(a.values(), (std::vector<double>{0, 0.25, 0.5, 0.75, 1}));
  const auto b = smelt::search::parse_grid_axis("parameters.t=-0.5:1.5:3");
  EXPECT_EQ(b.values(), (std::vector<double>{-0.5, 0.5, 1.5}));
  // 0.1 steps: the last point is `to` exactly, not an accumulated sum.
  EXPECT_EQ(smelt::search::parse_grid_axis("x=0:0.3:4").values().back(), 0.3);
  // Inner points are the decimals a user means (1.2/6 is 0.2, not 0.19999999999999998).
  EXPECT_EQ(smelt::search::parse_grid_axis("x=0:1.2:7").values(),
            (std::vector<double>{0, 0.2, 0.4, 0.6, 0.8, 1, 1.2}));
  const auto grid = smelt::search::grid_points({a, b});
  ASSERT_EQ(grid.size(), 15u);
  EXPECT_EQ(grid[1], (std::vector<double>{0, 0.5}));  // the last axis varies fastest
  EXPECT_EQ(grid[14], (std::vector<double>{1, 1.5}));
  for (const char* bad :
       {"weight", "=0:1:3", "w=0:1", "w=0:1:1", "w=a:1:3", "w=0:1:3.5", "w=0:1:3:4", "w=0:inf:3"}) {
    EXPECT_NE(error_of([&] { smelt::search::parse_grid_axis(bad); }), "") << bad;
  }
  EXPECT_NE(error_of([] { smelt::search::parse_grid_axis("w=0:1:1"); }).find("STEPS"),
            std::string::npos);
}

TEST(SearchYamlPath, SetsExistingScalarsAndExplainsMisses) {
  YAML::Node doc = YAML::Load(
      "models:\n  - model: a\n    parameters: {weight: 0.3}\n  - model: b\n"
      "    parameters: {weight: 0.7, density: [1, 0.5]}\nmerge_method: ties\n"
      "parameters: {t: 0.5}\n");
  YAML::Node copy = smelt::search::clone_yaml(doc);
  smelt::search::set_yaml_value(copy, "models[1].parameters.weight", 0.25);
  smelt::search::set_yaml_value(copy, "parameters.t", 1e-5);
  EXPECT_EQ(copy["models"][1]["parameters"]["weight"].as<double>(), 0.25);
  EXPECT_EQ(copy["parameters"]["t"].as<double>(), 1e-5);
  EXPECT_EQ(doc["models"][1]["parameters"]["weight"].as<double>(), 0.7) << "the clone is deep";
  // Round trip through text keeps the values.
  const YAML::Node back = YAML::Load(smelt::search::yaml_text(copy));
  EXPECT_EQ(back["models"][1]["parameters"]["weight"].as<double>(), 0.25);

  const auto e1 =
      error_of([&] { smelt::search::set_yaml_value(copy, "models[1].paramters.weight", 1); });
  EXPECT_NE(e1.find("did you mean 'parameters'"), std::string::npos) << e1;
  EXPECT_NE(e1.find("models[1]"), std::string::npos) << e1;
  const auto e2 =
      error_of([&] { smelt::search::set_yaml_value(copy, "models[2].parameters.weight", 1); });
  EXPECT_NE(e2.find("has 2 entries"), std::string::npos) << e2;
  const auto e3 =
      error_of([&] { smelt::search::set_yaml_value(copy, "models[1].parameters.density", 1); });
  EXPECT_NE(e3.find("a list"), std::string::npos) << e3;
  const auto e4 = error_of([&] { smelt::search::set_yaml_value(copy, "parameters.weight", 1); });
  EXPECT_NE(e4.find("keys there: t"), std::string::npos) << e4;
  for (const char* bad : {"", "models[x].model", "models[1", "parameters.", "merge_method[0]"}) {
    EXPECT_NE(error_of([&] { smelt::search::set_yaml_value(copy, bad, 1); }), "") << bad;
  }
}

// The values of every element carrying `attr` ("data-x", ...) in document order.
std::vector<double> attr_values(const std::string& svg, const std::string& attr) {
  std::vector<double> v;
  const std::regex re(attr + "=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator();
       ++it) {
    v.push_back(std::stod((*it)[1].str()));
  }
  return v;
}

// rsvg-convert (Debian's librsvg2-bin, installed by scripts/setup.sh) must render the file: a
// malformed SVG fails. Missing tool = a failed test, never a skip.
void expect_renders(const fs::path& svg) {
  const fs::path png = svg.string() + ".png";
  auto r = run_command("rsvg-convert -o " + quote(png) + " " + quote(svg));
  ASSERT_EQ(r.exit_code, 0) << "rsvg-convert could not render " << svg << ": " << r.output;
  const std::string bytes = read_bytes(png);
  ASSERT_GT(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
}

TEST(SearchSvg, LineChartAndHeatmapRenderAndCarryTheirData) {
  TempDir dir;
  smelt::report::LineChart chart;
  chart.title = "score <&> \"quotes\"";
  chart.x_label = "t";
  chart.y_label = "score";
  chart.series = {{"add", {0, 0.5, 1}, {0.1, 0.6, 0.9}},
                  {"mean & more", {0, 0.5, 1}, {0.3, std::nan(""), 0.2}}};
  const std::string svg = smelt::report::render_line_chart(chart);
  write_bytes(dir / "line.svg", svg);
  expect_renders(dir / "line.svg");
  EXPECT_EQ(attr_values(svg, "data-x"), (std::vector<double>{0, 0.5, 1, 0, 1}));
  EXPECT_EQ(attr_values(svg, "data-y"), (std::vector<double>{0.1, 0.6, 0.9, 0.3, 0.2}));
  EXPECT_NE(svg.find("score &lt;&amp;&gt; &quot;quotes&quot;"), std::string::npos);

  chart.step = true;
  chart.series = {{"constant", {1, 2, 3}, {5, 5, 5}}};  // a flat series still gets an axis
  write_bytes(dir / "step.svg", smelt::report::render_line_chart(chart));
  expect_renders(dir / "step.svg");

  smelt::report::Heatmap map;
  map.title = "diff";
  map.rows = {"layer 0", "layer 1"};
  map.columns = {"q_proj", "k_proj", "v_proj"};
  map.values = {0.1, 0.2, std::nan(""), 0.4, 0.5, 0.625};
  map.value_label = "relative change";
  const std::string hm = smelt::report::render_heatmap(map);
  write_bytes(dir / "heat.svg", hm);
  expect_renders(dir / "heat.svg");
  EXPECT_EQ(attr_values(hm, "data-value"), (std::vector<double>{0.1, 0.2, 0.4, 0.5, 0.625}));
  EXPECT_EQ(attr_values(hm, "data-row").size(), 6u);
  map.values.pop_back();
  EXPECT_NE(error_of([&] { smelt::report::render_heatmap(map); }), "");
}

TEST(SearchSvg, NumbersReadBackExactly) {
  for (const double v : {0.1, 1.0 / 3, -2.5e-7, 1e300, 0.0}) {
    EXPECT_EQ(std::stod(smelt::report::format_number(v)), v);
  }
  EXPECT_EQ(smelt::report::format_number(0.25), "0.25");
  EXPECT_EQ(smelt::report::format_number(std::nan("")), "nan");
}

// ---- The verbs on the zoo ------------------------------------------------------------------

const fs::path kRoot = fs::path(SMELT_SOURCE_DIR);

std::string in_root(const std::string& args) {
  return "cd " + quote(kRoot) + " && " + quote(fs::path(SMELT_BIN)) + " " + args;
}

// A CSV file as rows of fields (no quoting needed for the numbers and paths here).
std::vector<std::vector<std::string>> read_csv(const fs::path& p) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(read_bytes(p));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> row;
    std::stringstream ls(line);
    std::string f;
    while (std::getline(ls, f, ',')) row.push_back(f);
    rows.push_back(row);
  }
  return rows;
}

// A safetensors file's tensor table (without __metadata__) and data section.
std::pair<json, std::string> tensor_data(const fs::path& p) {
  const std::string bytes = read_bytes(p);
  EXPECT_GT(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(bytes[i]);
  json header = json::parse(bytes.substr(8, n));
  header.erase("__metadata__");
  return {header, bytes.substr(8 + n)};
}

// `smelt eval --json` of models or configs (run from the repository root).
json eval_json(const std::string& args) {
  auto r = run_command(in_root("eval --json -q " + args));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return json::parse(r.output);
}

// Linear mode connectivity on the zoo: the path from the base to a gentle fine-tune improves
// the fine-tune's task monotonically, and every point equals `smelt eval` of that merge.
TEST(SearchZoo, InterpolateBaseToFineTuneIsMonotoneAndMatchesEval) {
  TempDir dir;
  const std::string tasks = " --tasks examples/zoo/tasks/rev.val.jsonl --limit 60";
  auto r = run_command(in_root("interpolate -q examples/zoo/base examples/zoo/ft-rev --steps 5" +
                               tasks + " --csv " + quote(dir / "curve.csv") + " --plot " +
                               quote(dir / "curve.svg")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rows = read_csv(dir / "curve.csv");
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"t", "rev.val", "mean"}));
  std::vector<double> t, score;
  for (size_t i = 1; i < rows.size(); ++i) {
    t.push_back(std::stod(rows[i][0]));
    score.push_back(std::stod(rows[i][1]));
  }
  EXPECT_EQ(t, (std::vector<double>{0, 0.25, 0.5, 0.75, 1}));
  for (size_t i = 1; i < score.size(); ++i)
    EXPECT_GE(score[i], score[i - 1]) << "not monotone at t=" << t[i];
  EXPECT_GT(score.back(), score.front() + 0.3) << "the fine-tune learned its task";
  // The ends are the models themselves (a weight of 1 and 0 in f32, stored back as f16); the
  // middle is the merge written by hand.
  write_bytes(dir / "half.yml",
              "merge_method: linear\nmodels:\n  - model: examples/zoo/base\n"
              "    parameters: {weight: 0.5}\n  - model: examples/zoo/ft-rev\n"
              "    parameters: {weight: 0.5}\nparameters: {normalize: false}\n");
  const json e =
      eval_json("examples/zoo/base " + quote(dir / "half.yml") + " examples/zoo/ft-rev" + tasks);
  EXPECT_EQ(e["models"][0]["tasks"]["rev.val"]["score"].get<double>(), score[0]);
  EXPECT_EQ(e["models"][1]["tasks"]["rev.val"]["score"].get<double>(), score[2]);
  EXPECT_EQ(e["models"][2]["tasks"]["rev.val"]["score"].get<double>(), score[4]);
  // The plot holds the same curve.
  expect_renders(dir / "curve.svg");
  const std::string svg = read_bytes(dir / "curve.svg");
  const auto ys = attr_values(svg, "data-y");
  ASSERT_EQ(ys.size(), 10u);  // rev.val and mean
  EXPECT_EQ(std::vector<double>(ys.begin(), ys.begin() + 5), score);
}

TEST(SearchZoo, SweepOneAndTwoAxesMatchEvalOfTheSamePoints) {
  TempDir dir;
  const std::string tasks = " --tasks examples/zoo/tasks/add.val.jsonl --limit 40";
  auto r = run_command(
      in_root("sweep -q examples/zoo/merge.yml --vary 'models[0].parameters.weight=0:0.8:2'" +
              tasks + " --csv " + quote(dir / "one.csv") + " --plot " + quote(dir / "one.svg")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rows = read_csv(dir / "one.csv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0][0], "models[0].parameters.weight");
  // weight 0.8 is merge.yml itself.
  const json e = eval_json("examples/zoo/merge.yml" + tasks);
  EXPECT_EQ(std::stod(rows[2][1]), e["models"][0]["tasks"]["add.val"]["score"].get<double>());
  EXPECT_GT(std::stod(rows[2][1]), std::stod(rows[1][1])) << "ft-add's weight helps addition";
  expect_renders(dir / "one.svg");

  r = run_command(
      in_root("sweep -q examples/zoo/merge.yml --vary 'models[0].parameters.weight=0:0.8:2'"
              " --vary 'models[1].parameters.weight=0:0.8:2'" +
              tasks + " --csv " + quote(dir / "two.csv") + " --plot " + quote(dir / "two.svg")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto grid = read_csv(dir / "two.csv");
  ASSERT_EQ(grid.size(), 5u);
  EXPECT_EQ(grid[4][2], rows[2][1]) << "(0.8, 0.8) is merge.yml again";
  expect_renders(dir / "two.svg");
  const auto cells = attr_values(read_bytes(dir / "two.svg"), "data-value");
  ASSERT_EQ(cells.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(cells[i], std::stod(grid[i + 1][3])) << i;
}

TEST(SearchZoo, GreedySoupNeverLosesToItsBestIngredient) {
  TempDir dir;
  std::string tasks;
  for (const char* t : {"add", "rev", "up", "next"})
    tasks += fmt::format(" --tasks examples/zoo/tasks/{}.val.jsonl", t);
  tasks += " --limit 40";
  // Ingredients: the zoo's task-arithmetic merge (the best single model), its four fine-tunes
  // and the base.
  const fs::path ta = dir / "ta";
  auto r = run_command(in_root("merge -q examples/zoo/merge.yml " + quote(ta)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(in_root("soup --greedy --json -q " + quote(ta) +
                          " examples/zoo/ft-add examples/zoo/ft-rev examples/zoo/ft-up "
                          "examples/zoo/ft-next examples/zoo/base -o " +
                          quote(dir / "soup") + tasks));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  double best_single = -1;
  for (const auto& i : j["ingredients"])
    best_single = std::max(best_single, i["objective"].get<double>());
  double best_soup = -1;
  for (const auto& s : j["steps"])
    if (s["kept"].get<bool>()) best_soup = std::max(best_soup, s["objective"].get<double>());
  EXPECT_GE(best_soup, best_single);
  // Pinned: the ingredients the greedy soup picks on the zoo (see docs/search.md).
  // (Averaging ft-rev into the merge trades some addition for much better reversal; every other
  // addition dilutes the merge's task vectors.)
  EXPECT_EQ(j["chosen"], json({ta.string(), "examples/zoo/ft-rev"})) << j.dump(1);
  EXPECT_GT(best_soup, best_single) << "on the zoo the soup strictly improves";
  // The written soup is the uniform average of the chosen models, exactly as smelt merge
  // writes it.
  std::string config = "merge_method: linear\nmodels:\n";
  for (const auto& m : j["chosen"])
    config += fmt::format("  - model: {}\n    parameters: {{weight: 1}}\n", m.get<std::string>());
  write_bytes(dir / "soup.yml", config);
  r = run_command(in_root("merge -q " + quote(dir / "soup.yml") + " " + quote(dir / "merged")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The same tensors (the header's metadata records each run's own config text).
  EXPECT_TRUE(tensor_data(dir / "soup" / "model.safetensors") ==
              tensor_data(dir / "merged" / "model.safetensors"));
  const std::string recorded = read_bytes(dir / "soup" / "mergekit_config.yml");
  EXPECT_NE(recorded.find("# smelt soup --greedy"), std::string::npos) << recorded;
}

TEST(SearchZoo, BadInputFailsBeforeAnyScoringAndWritesNothing) {
  TempDir dir;
  const std::string tasks = " --tasks examples/zoo/tasks/add.val.jsonl --limit 5";
  auto r =
      run_command(in_root("sweep examples/zoo/merge.yml --vary 'models[0].paramters.weight=0:1:3'" +
                          tasks + " --csv " + quote(dir / "x.csv")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("did you mean 'parameters'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "x.csv"));
  r = run_command(
      in_root("sweep examples/zoo/merge.yml --vary 'models[9].parameters.weight=0:1:3'" + tasks));
  EXPECT_NE(r.output.find("has 4 entries"), std::string::npos) << r.output;
  // A value that makes the config invalid at a later grid point fails before the first merge.
  r = run_command(in_root("sweep examples/zoo/merge.yml --vary 'base_model=0:1:2'" + tasks));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  r = run_command(in_root("soup examples/zoo/ft-add -o " + quote(dir / "s") + tasks));
  EXPECT_NE(r.output.find("at least two models"), std::string::npos) << r.output;
  r = run_command(
      in_root("soup examples/zoo/ft-add examples/zoo/ft-rev -o " + quote(dir / "s") + " --greedy"));
  EXPECT_NE(r.output.find("--tasks"), std::string::npos) << r.output;
  write_bytes(dir / "bad.jsonl", "{\"prompt\": \"x\"}\n");
  r = run_command(in_root("soup examples/zoo/ft-add examples/zoo/ft-rev -o " + quote(dir / "s") +
                          " --greedy --tasks " + quote(dir / "bad.jsonl")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("bad.jsonl"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "s"));
  r = run_command(in_root("interpolate examples/zoo/base examples/zoo/nope --steps 3" + tasks));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("nope"), std::string::npos) << r.output;
  write_bytes(dir / "exists.csv", "keep me");
  r = run_command(in_root("interpolate examples/zoo/base examples/zoo/ft-add --steps 3" + tasks +
                          " --csv " + quote(dir / "exists.csv")));
  EXPECT_NE(r.output.find("--overwrite"), std::string::npos) << r.output;
  EXPECT_EQ(read_bytes(dir / "exists.csv"), "keep me");
}

}  // namespace
