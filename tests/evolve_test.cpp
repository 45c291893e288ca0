// `smelt evolve` (docs/evolve.md): genome files read as mergekit-evolve reads them, genotypes
// turned into the merge configs mergekit-evolve writes, and searches on the zoo that beat the
// uniform soup on held-out files, repeat themselves for a seed and resume exactly.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "smelt/error.h"
#include "smelt/search/genome.h"
#include "test_util.h"

namespace smelt::search {
namespace {

using smelt::testing::quote;
using smelt::testing::read_bytes;
using smelt::testing::run_smelt;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

const std::string kZoo = std::string(SMELT_SOURCE_DIR) + "/examples/zoo";

EvolveConfig parse(const std::string& yaml) {
  return parse_evolve_config(YAML::Load(yaml), "genome.yml");
}

std::string error_of(const std::string& yaml) {
  try {
    parse(yaml);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

double as_double(const YAML::Node& n) { return n.as<double>(); }

TEST(EvolveGenome, ReadsMergekitKeysAndDefaults) {
  const EvolveConfig c = parse(R"(
genome:
  models: [a, b, c]
  merge_method: dare_ties
  base_model: base
  tokenizer_source: null
  layer_granularity: 8
  filters: [self_attn, mlp]
tasks:
  - name: t1
  - {name: t2, weight: 0.5, metric: "exact_match,none"}
  - t3
limit: 50
random_init: false
apply_chat_template: true
)");
  EXPECT_EQ(c.genome.models, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.genome.merge_method, "dare_ties");
  EXPECT_EQ(*c.genome.base_model, "base");
  EXPECT_FALSE(c.genome.tokenizer_source);
  EXPECT_EQ(c.genome.layer_granularity, 8);
  EXPECT_FALSE(c.genome.normalize);
  EXPECT_FALSE(c.genome.allow_negative_weights);
  ASSERT_EQ(c.tasks.size(), 3u);
  EXPECT_EQ(c.tasks[0].weight, 1.0);
  EXPECT_EQ(c.tasks[0].metric, "acc,none");
  EXPECT_EQ(c.tasks[1].weight, 0.5);
  EXPECT_EQ(c.tasks[2].name, "t3");
  EXPECT_EQ(*c.limit, 50u);
  // Shape [layer groups, models, filters + 1, params]: 32 layers / 8 × 3 × 3 × 2.
  Genome g(c.genome, 32);
  EXPECT_EQ(g.layer_groups(), 4u);
  EXPECT_EQ(g.param_sets(), 3u);
  EXPECT_EQ(g.dimension(), 4u * 3 * 3 * 2);
  EXPECT_EQ(g.coordinate_names()[g.index(1, 2, 0, 1)], "g1.c.density@self_attn");
  EXPECT_EQ(g.coordinate_names()[g.index(3, 0, 2, 0)], "g3.a.weight");
}

TEST(EvolveGenome, RefusesWhatItCannotVaryNamingTheKey) {
  const std::string tasks = "tasks: [t]\n";
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: della, base_model: c}\n" + tasks)
                .find("genome.merge_method: evolve cannot vary \"della\"; it varies linear, "
                      "task_arithmetic, ties, dare_ties, slerp"),
            std::string::npos);
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: ties}\n" + tasks)
                .find("genome.base_model: missing; ties needs a base model"),
            std::string::npos);
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: slerp, smooth: true}\n" + tasks)
                .find("genome.smooth"),
            std::string::npos);
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: slerp, base_model: c}\n" + tasks)
                .find("genome.base_model: slerp takes no separate base model"),
            std::string::npos);
  EXPECT_EQ(error_of("genome: {models: [a, b], merge_method: slerp, base_model: a}\n" + tasks), "");
  EXPECT_NE(
      error_of("genome: {models: [a, b], merge_method: linear, layer_granulrity: 2}\n" + tasks)
          .find("genome.layer_granulrity: unknown key; did you mean 'layer_granularity'?"),
      std::string::npos);
  EXPECT_NE(
      error_of("genome: {models: [a, b], merge_method: linear, tokenizer_source: union}\n" + tasks)
          .find("genome.tokenizer_source: \"union\" is not supported"),
      std::string::npos);
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: linear}\n"
                     "tasks: [{name: t, metric: \"f1,none\"}]\n")
                .find("tasks[0].metric: \"f1,none\" has no counterpart"),
            std::string::npos);
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: linear}\ntasks: [t]\nnum_fewshot: 5\n")
                .find("num_fewshot"),
            std::string::npos);
  EXPECT_NE(error_of("genome: {models: [a, b], merge_method: linear}\n").find("tasks:"),
            std::string::npos);
  const EvolveConfig c = parse(
      "genome: {models: [a, b], merge_method: linear, "
      "layer_granularity: 3}\n" +
      tasks);
  try {
    Genome(c.genome, 4);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer_granularity: 3 does not divide the models' 4 "
                                         "layers"),
              std::string::npos);
  }
}

TEST(EvolveGenome, TaskArithmeticSlicesPerLayerGroup) {
  const EvolveConfig c = parse(R"(
genome: {models: [a, b], merge_method: task_arithmetic, base_model: base, layer_granularity: 2}
tasks: [t]
)");
  Genome g(c.genome, 4);
  ASSERT_EQ(g.dimension(), 4u);
  const auto x0 = g.initial_genotype();
  EXPECT_EQ(x0, (std::vector<double>{0.5, 0.5, 0.5, 0.5}));
  // Negative weights become |w| unless allow_negative_weights.
  const YAML::Node cfg = YAML::Load(config_yaml_text(g.merge_config({0.25, -0.75, 1.5, 0.125})));
  EXPECT_EQ(cfg["merge_method"].as<std::string>(), "task_arithmetic");
  EXPECT_EQ(cfg["dtype"].as<std::string>(), "bfloat16");
  EXPECT_EQ(cfg["base_model"].as<std::string>(), "base");
  EXPECT_FALSE(cfg["parameters"]["normalize"].as<bool>());  // only linear and ties normalize
  EXPECT_TRUE(cfg["parameters"]["int8_mask"].as<bool>());
  ASSERT_EQ(cfg["slices"].size(), 2u);
  const YAML::Node s1 = cfg["slices"][1]["sources"];
  ASSERT_EQ(s1.size(), 3u);  // a, b and the base
  EXPECT_EQ(s1[0]["model"].as<std::string>(), "a");
  EXPECT_EQ(s1[0]["layer_range"][0].as<int>(), 2);
  EXPECT_EQ(s1[0]["layer_range"][1].as<int>(), 4);
  EXPECT_EQ(as_double(s1[0]["parameters"]["weight"]), 1.5);
  EXPECT_EQ(as_double(s1[1]["parameters"]["weight"]), 0.125);
  EXPECT_EQ(s1[2]["model"].as<std::string>(), "base");
  EXPECT_FALSE(s1[2]["parameters"]);
  EXPECT_EQ(as_double(cfg["slices"][0]["sources"][1]["parameters"]["weight"]), 0.75);

  GenomeDefinition negative = c.genome;
  negative.allow_negative_weights = true;
  const YAML::Node n =
      YAML::Load(config_yaml_text(Genome(negative, 4).merge_config({0.25, -0.75, 1, 1})));
  EXPECT_EQ(as_double(n["slices"][0]["sources"][1]["parameters"]["weight"]), -0.75);
}

TEST(EvolveGenome, TiesDensitiesClampedAndFiltersBecomeConditionalLists) {
  const EvolveConfig c = parse(R"(
genome: {models: [a, base], merge_method: ties, base_model: base, filters: [mlp]}
tasks: [t]
)");
  Genome g(c.genome, 4);
  ASSERT_EQ(g.dimension(), 8u);  // 1 group × 2 models × 2 sets × (weight, density)
  std::vector<double> x(8);
  x[g.index(0, 0, 0, 0)] = -0.3;  // weight@mlp
  x[g.index(0, 0, 0, 1)] = 1.7;   // density@mlp → 1
  x[g.index(0, 0, 1, 0)] = 0.4;
  x[g.index(0, 0, 1, 1)] = -0.2;  // density → 0.2
  const YAML::Node cfg = YAML::Load(config_yaml_text(g.merge_config(x)));
  EXPECT_TRUE(cfg["parameters"]["normalize"].as<bool>());
  const YAML::Node sources = cfg["slices"][0]["sources"];
  ASSERT_EQ(sources.size(), 2u);  // the base is among the models: not added again
  const YAML::Node w = sources[0]["parameters"]["weight"];
  ASSERT_TRUE(w.IsSequence());
  EXPECT_EQ(w[0]["filter"].as<std::string>(), "mlp");
  EXPECT_EQ(as_double(w[0]["value"]), 0.3);
  EXPECT_TRUE(w[1]["filter"].IsNull());
  EXPECT_EQ(as_double(w[1]["value"]), 0.4);
  const YAML::Node d = sources[0]["parameters"]["density"];
  EXPECT_EQ(as_double(d[0]["value"]), 1.0);
  EXPECT_EQ(as_double(d[1]["value"]), 0.2);
}

TEST(EvolveGenome, SmoothGivesGradientsOverTheLayerGroups) {
  const EvolveConfig c = parse(R"(
genome: {models: [a, b], merge_method: linear, layer_granularity: 1, smooth: true}
tasks: [t]
)");
  Genome g(c.genome, 3);
  const YAML::Node cfg = YAML::Load(config_yaml_text(g.merge_config({1, 2, 3, 4, 5, 6})));
  ASSERT_TRUE(cfg["models"]);
  const YAML::Node w = cfg["models"][1]["parameters"]["weight"];
  ASSERT_EQ(w.size(), 3u);  // b's weight in groups 0, 1, 2
  EXPECT_EQ(as_double(w[0]), 2);
  EXPECT_EQ(as_double(w[1]), 4);
  EXPECT_EQ(as_double(w[2]), 6);
  EXPECT_TRUE(cfg["parameters"]["normalize"].as<bool>());
  EXPECT_FALSE(cfg["base_model"]);
}

TEST(EvolveGenome, SlerpTakesTheTwoHeaviestModelsPerGroup) {
  const EvolveConfig c = parse(R"(
genome: {models: [a, b, c], merge_method: slerp, layer_granularity: 2}
tasks: [t]
)");
  Genome g(c.genome, 4);
  ASSERT_EQ(g.dimension(), 6u);
  const YAML::Node cfg = YAML::Load(config_yaml_text(g.merge_config({0.1, 0.9, 0.5, 2, 0, 1})));
  const YAML::Node s0 = cfg["slices"][0];
  EXPECT_EQ(s0["base_model"].as<std::string>(), "b");
  EXPECT_EQ(s0["sources"][0]["model"].as<std::string>(), "b");
  EXPECT_EQ(s0["sources"][1]["model"].as<std::string>(), "c");
  // t = softmax(0.9, 0.5)[1]
  EXPECT_DOUBLE_EQ(as_double(s0["parameters"]["t"]),
                   std::exp(0.5) / (std::exp(0.9) + std::exp(0.5)));
  const YAML::Node s1 = cfg["slices"][1];
  EXPECT_EQ(s1["base_model"].as<std::string>(), "a");
  EXPECT_EQ(s1["sources"][1]["model"].as<std::string>(), "c");
  EXPECT_EQ(s1["sources"][1]["layer_range"][0].as<int>(), 2);
}

// ---- the CLI on the zoo -------------------------------------------------------------------

// A task-arithmetic genome of the zoo's four fine-tunes (one parameter set for all 4 layers).
std::string zoo_genome(int layer_granularity = 4) {
  return "genome:\n  models:\n    - " + kZoo + "/ft-add\n    - " + kZoo + "/ft-rev\n    - " + kZoo +
         "/ft-up\n    - " + kZoo + "/ft-next\n  merge_method: task_arithmetic\n" +
         "  base_model: " + kZoo +
         "/base\n  layer_granularity: " + std::to_string(layer_granularity) +
         "\n  allow_negative_weights: true\ntasks:\n  - name: add\n  - name: rev\n"
         "  - name: up\n  - name: next\n";
}

std::string evolve(const TempDir& dir, const std::string& storage, const std::string& extra) {
  return "evolve " + quote(dir / "genome.yml") + " --storage-path " + quote(dir / storage) +
         " --task-search-path " + quote(kZoo + "/tasks") +
         " --limit 25 --force-population-size 6 --random-seed 1 -q " + extra;
}

TEST(EvolveCli, RefusesBadInputBeforeWritingAnything) {
  TempDir dir;
  write_bytes(dir / "genome.yml", zoo_genome(3));
  auto r = run_smelt(evolve(dir, "run", "--max-fevals 6"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("layer_granularity: 3 does not divide the models' 4 layers"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));

  std::string genome = zoo_genome();
  genome += "  - name: mul\n";
  write_bytes(dir / "genome.yml", genome);
  r = run_smelt(evolve(dir, "run", "--max-fevals 6"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("tasks[4].name: no task file mul.val.jsonl or mul.jsonl"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));

  genome = zoo_genome();
  genome.replace(genome.find("task_arithmetic"), 15, "della");
  write_bytes(dir / "genome.yml", genome);
  r = run_smelt(evolve(dir, "run", "--max-fevals 6"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("genome.merge_method: evolve cannot vary \"della\""), std::string::npos)
      << r.output;

  write_bytes(dir / "genome.yml", zoo_genome());
  r = run_smelt(evolve(dir, "run", "--max-fevals 6 --resume"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("holds no checkpoint.json"), std::string::npos) << r.output;
}

// The mean of `smelt eval --json` task scores.
double eval_mean(const std::string& args) {
  const auto r = run_smelt("eval " + args + " --json -q -j 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  return j["models"][0]["mean"].get<double>();
}

TEST(EvolveCli, BeatsTheUniformSoupOnHeldOutFilesAndRepeatsItself) {
  TempDir dir;
  write_bytes(dir / "genome.yml", zoo_genome());
  auto r = run_smelt(evolve(dir, "a", "--max-fevals 36 -j 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("validation"), std::string::npos) << r.output;
  const std::string csv = read_bytes(dir / "a" / "evaluations.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "index,generation,add,rev,up,next,score,g0.ft-add.weight,g0.ft-rev.weight,"
            "g0.ft-up.weight,g0.ft-next.weight");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 37);  // header + 6 generations of 6
  for (const char* f : {"best_config.yaml", "progress.svg", "checkpoint.json", "best_scores.json"})
    EXPECT_TRUE(std::filesystem::exists(dir / "a" / f)) << f;
  EXPECT_FALSE(std::filesystem::exists(dir / "a" / "candidates"));
  // progress.svg: a point per evaluation, the best-so-far staircase ending at the best score.
  const std::string svg = read_bytes(dir / "a" / "progress.svg");
  size_t points = 0;
  for (size_t at = 0; (at = svg.find("class=\"point\" data-series=\"0\"", at)) != std::string::npos;
       ++at)
    ++points;
  EXPECT_EQ(points, 36u);

  const auto scores = nlohmann::json::parse(read_bytes(dir / "a" / "best_scores.json"));
  const double evolved_test = scores["test"]["mean"].get<double>();
  const std::string last_best = svg.substr(svg.rfind("data-series=\"1\""));
  EXPECT_NE(last_best.find(fmt::format("data-y=\"{}\"", scores["search_score"].get<double>())),
            std::string::npos);
  // The uniform soup: a linear merge of the four fine-tunes with equal weights.
  write_bytes(dir / "soup.yml", "merge_method: linear\nmodels:\n  - model: " + kZoo +
                                    "/ft-add\n  - model: " + kZoo + "/ft-rev\n  - model: " + kZoo +
                                    "/ft-up\n  - model: " + kZoo +
                                    "/ft-next\nparameters:\n  weight: 1\n");
  std::string tests;
  for (const char* t : {"add", "rev", "up", "next"})
    tests += " --tasks " + quote(kZoo + "/tasks/" + t + ".jsonl");
  const double soup_test = eval_mean(quote(dir / "soup.yml") + tests);
  EXPECT_GT(evolved_test, soup_test + 0.02) << "evolved " << evolved_test << ", soup " << soup_test;
  // The best config scores on the test files as `smelt eval` of best_config.yaml does.
  EXPECT_DOUBLE_EQ(eval_mean(quote(dir / "a" / "best_config.yaml") + tests), evolved_test);

  // The same seed gives the same search, with one worker or two (one thread each).
  r = run_smelt(evolve(dir, "b", "--max-fevals 36 --workers 2 -j 2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_bytes(dir / "b" / "evaluations.csv"), csv);
  EXPECT_EQ(read_bytes(dir / "b" / "best_config.yaml"), read_bytes(dir / "a" / "best_config.yaml"));
}

TEST(EvolveCli, ResumeContinuesAsIfNeverInterrupted) {
  TempDir dir;
  write_bytes(dir / "genome.yml", zoo_genome(2));
  auto r = run_smelt(evolve(dir, "whole", "--max-fevals 24 -j 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_smelt(evolve(dir, "parts", "--max-fevals 12 -j 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_smelt(evolve(dir, "parts", "--max-fevals 12 -j 1"));
  EXPECT_EQ(r.exit_code, 1) << r.output;  // a second start on the same folder is refused
  EXPECT_NE(r.output.find("pass --resume"), std::string::npos) << r.output;
  r = run_smelt(evolve(dir, "parts", "--max-fevals 24 --resume -j 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_bytes(dir / "parts" / "evaluations.csv"),
            read_bytes(dir / "whole" / "evaluations.csv"));
  EXPECT_EQ(read_bytes(dir / "parts" / "checkpoint.json"),
            read_bytes(dir / "whole" / "checkpoint.json"));
  // Other settings cannot resume this search.
  r = run_smelt(evolve(dir, "parts", "--max-fevals 30 --resume --sigma0 0.3"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("different sigma0"), std::string::npos) << r.output;
}

TEST(EvolveCli, CtrlCKeepsTheLastGenerationAndResumes) {
  TempDir dir;
  write_bytes(dir / "genome.yml", zoo_genome(2));
  // SIGINT to the search alone (its workers are stopped by it) once a generation is done (its
  // checkpoint written; polled, so a slow machine or a sanitizer build waits longer), and a bit.
  const std::string checkpoint_file = (dir / "run" / "checkpoint.json").string();
  const auto r = smelt::testing::run_command(
      "sh -c '" + std::string(SMELT_BIN) + " " +
      evolve(dir, "run", "--max-fevals 100000 --workers 2 -j 2") +
      " & pid=$!; i=0; while [ ! -s \"" + checkpoint_file +
      "\" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; sleep 1; kill -INT $pid; "
      "wait $pid; echo exit=$?'");
  EXPECT_NE(r.output.find("exit=130"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--resume continues it"), std::string::npos) << r.output;
  const auto checkpoint = nlohmann::json::parse(read_bytes(dir / "run" / "checkpoint.json"));
  const size_t done = checkpoint["evaluations"].size();
  ASSERT_GE(done, 6u);
  EXPECT_EQ(done % 6, 0u);  // whole generations only
  EXPECT_FALSE(std::filesystem::exists(dir / "run" / "candidates"));
  const std::string csv = read_bytes(dir / "run" / "evaluations.csv");
  EXPECT_EQ(static_cast<size_t>(std::count(csv.begin(), csv.end(), '\n')), done + 1);
  // Resumed for one more generation, it equals a search run that far in one go.
  const std::string total = std::to_string(done + 6);
  auto resumed = run_smelt(evolve(dir, "run", "--max-fevals " + total + " --resume -j 1"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  auto whole = run_smelt(evolve(dir, "whole", "--max-fevals " + total + " -j 1"));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  EXPECT_EQ(read_bytes(dir / "run" / "evaluations.csv"),
            read_bytes(dir / "whole" / "evaluations.csv"));
}

}  // namespace
}  // namespace smelt::search
