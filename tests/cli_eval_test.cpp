// `smelt eval` and `smelt generate` end to end on generated models: a merge config evaluated in
// memory scores exactly as the merge written to disk, tables and JSON, bad input (docs/eval.md).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using smelt::testing::quote;
using smelt::testing::run_smelt;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

void make_model(const fs::path& dir, const std::string& extra) {
  auto r = run_smelt("dev make-model " + quote(dir) +
                     " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320 " + extra);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

// Text of plain ASCII words: enough byte-level tokens for two chunks of --ctx 32.
std::string sample_text() {
  std::string s;
  for (int i = 0; i < 40; ++i) s += fmt::format("word{} and {} more; ", i, i * 7 % 13);
  return s;
}

const char* kTasks =
    "{\"prompt\": \"ab\", \"answer\": \"cd\", \"max_tokens\": 4}\n"
    "{\"prompt\": \"x\", \"answer\": \"y\", \"max_tokens\": 3}\n"
    "{\"prompt\": \"Q: a\", \"choices\": [\" b\", \" cc\", \" d\"], \"label\": 1}\n"
    "{\"prompt\": \"Q: e\", \"choices\": [\" f\", \" g\"], \"label\": 0}\n";

struct Zoo {
  TempDir dir;
  fs::path base, ft1, ft2, config;
  Zoo() {
    base = dir / "base", ft1 = dir / "ft1", ft2 = dir / "ft2";
    make_model(base, "--dtype BF16 --seed 1");
    make_model(ft1, "--dtype BF16 --base " + quote(base) + " --delta-scale 0.05 --seed 2");
    make_model(ft2, "--dtype BF16 --base " + quote(base) + " --delta-scale 0.05 --seed 3");
    config = dir / "merge.yml";
    write_bytes(config, fmt::format("models:\n  - model: {}\n    parameters: {{weight: 0.5}}\n"
                                    "  - model: {}\n    parameters: {{weight: 0.3}}\n"
                                    "merge_method: task_arithmetic\nbase_model: {}\n"
                                    "dtype: bfloat16\n",
                                    ft1.string(), ft2.string(), base.string()));
    write_bytes(dir / "text.txt", sample_text());
    write_bytes(dir / "t.jsonl", kTasks);
  }
};

json eval_json(const std::string& args) {
  auto r = run_smelt("eval --json -j 2 " + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  json j;
  try {
    j = json::parse(r.output.substr(r.output.find('{')));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON: " << r.output;
  }
  return j;
}

TEST(CliEval, MergeConfigInMemoryScoresExactlyAsTheWrittenMerge) {
  Zoo z;
  const fs::path out = z.dir / "out";
  auto m = run_smelt("merge -q " + quote(z.config) + " " + quote(out));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const json j =
      eval_json(quote(z.config) + " " + quote(out) + " " + quote(z.base) + " --ctx 32 --text " +
                quote(z.dir / "text.txt") + " --tasks " + quote(z.dir / "t.jsonl"));
  ASSERT_EQ(j["models"].size(), 3u) << j.dump();
  const json& mem = j["models"][0];
  const json& file = j["models"][1];
  const json& base = j["models"][2];
  EXPECT_EQ(mem["model"], z.config.string());
  // The same bytes in memory as on disk: the same floats, bit for bit.
  EXPECT_EQ(mem["perplexity"]["ppl"].get<double>(), file["perplexity"]["ppl"].get<double>());
  EXPECT_EQ(mem["tasks"]["t"]["acc"], file["tasks"]["t"]["acc"]);
  EXPECT_EQ(mem["tasks"]["t"]["acc_norm"], file["tasks"]["t"]["acc_norm"]);
  EXPECT_EQ(mem["tasks"]["t"]["lines"], 4);
  // ... and not the base's (the merge changed the model).
  EXPECT_NE(mem["perplexity"]["ppl"].get<double>(), base["perplexity"]["ppl"].get<double>());
  const json& p = mem["perplexity"];
  EXPECT_EQ(p["chunks"], p["chunks_total"]);
  EXPECT_EQ(p["tokens"].get<int>(), p["chunks"].get<int>() * 15);  // 32/2 .. 30 per chunk
  EXPECT_GT(p["bits_per_byte"].get<double>(), 0.0);
  EXPECT_GT(p["ppl"].get<double>(), 1.0);
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  // Nothing was written for the in-memory merge: the folder holds what the test made.
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(z.dir.path())) ++entries;
  EXPECT_EQ(entries, 7u);
}

TEST(CliEval, SeveralModelsPrintOneTable) {
  Zoo z;
  auto r = run_smelt("eval -j 2 " + quote(z.base) + " " + quote(z.ft1) + " --tasks " +
                     quote(z.dir / "t.jsonl") + " --tasks " + quote(z.dir / "t.jsonl"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string header, row1, row2;
  std::getline(lines, header);
  std::getline(lines, row1);
  std::getline(lines, row2);
  EXPECT_NE(header.find("model"), std::string::npos) << r.output;
  EXPECT_NE(header.find("mean"), std::string::npos) << r.output;
  EXPECT_EQ(row1.rfind(z.base.string(), 0), 0u) << r.output;
  EXPECT_EQ(row2.rfind(z.ft1.string(), 0), 0u) << r.output;
}

TEST(CliEval, GenerateIsGreedyAndSeededSamplingRepeats) {
  Zoo z;
  auto a =
      run_smelt("generate -q " + quote(z.base) + " --prompt hello --max-tokens 12 --ignore-eos");
  auto b = run_smelt("generate -q " + quote(z.base) +
                     " --prompt hello --max-tokens 12 --ignore-eos -j 1");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(a.output, b.output) << "greedy output depends on the thread count";
  const std::string sample =
      "generate -q " + quote(z.base) +
      " --prompt hello --max-tokens 12 --ignore-eos --temperature 1.5 --seed ";
  auto s1 = run_smelt(sample + "5"), s2 = run_smelt(sample + "5");
  ASSERT_EQ(s1.exit_code, 0) << s1.output;
  EXPECT_EQ(s1.output, s2.output);
  // A merge config generates like its written merge.
  const fs::path out = z.dir / "out";
  ASSERT_EQ(run_smelt("merge -q " + quote(z.config) + " " + quote(out)).exit_code, 0);
  auto mem =
      run_smelt("generate -q " + quote(z.config) + " --prompt hello --max-tokens 12 --ignore-eos");
  auto file =
      run_smelt("generate -q " + quote(out) + " --prompt hello --max-tokens 12 --ignore-eos");
  ASSERT_EQ(mem.exit_code, 0) << mem.output;
  EXPECT_EQ(mem.output, file.output);
}

void expect_error(const std::string& args, const std::string& needle) {
  auto r = run_smelt(args);
  EXPECT_NE(r.exit_code, 0) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
  EXPECT_EQ(r.output.find("Segmentation"), std::string::npos) << r.output;
}

TEST(CliEval, BadInputGivesOneClearError) {
  Zoo z;
  const std::string tasks = " --tasks " + quote(z.dir / "t.jsonl");
  expect_error("eval " + quote(z.base), "nothing to evaluate");
  write_bytes(z.dir / "bad.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": 1}\n");
  expect_error("eval " + quote(z.base) + " --tasks " + quote(z.dir / "bad.jsonl"), "bad.jsonl:2");
  write_bytes(z.dir / "label.jsonl",
              "{\"prompt\": \"a\", \"choices\": [\"x\", \"y\"], \"label\": 5}\n");
  expect_error("eval " + quote(z.base) + " --tasks " + quote(z.dir / "label.jsonl"),
               "out of range");
  write_bytes(z.dir / "empty.txt", "\n\n");
  expect_error("eval " + quote(z.base) + " --text " + quote(z.dir / "empty.txt"), "empty");
  write_bytes(z.dir / "short.txt", "tiny");
  expect_error("eval " + quote(z.base) + " --text " + quote(z.dir / "short.txt"), "needs at least");
  fs::remove(z.ft2 / "tokenizer.json");
  fs::remove(z.ft2 / "tokenizer.model");
  expect_error("eval " + quote(z.ft2) + tasks, "no tokenizer files");
  // An architecture the forward pass does not run: the error lists what it runs.
  auto cfg = json::parse(smelt::testing::read_bytes(z.ft1 / "config.json"));
  cfg["architectures"] = {"GPTNeoXForCausalLM"};
  cfg["model_type"] = "gpt_neox";
  write_bytes(z.ft1 / "config.json", cfg.dump());
  expect_error("eval " + quote(z.ft1) + tasks, "Qwen2ForCausalLM");
  write_bytes(z.dir / "long.jsonl",
              "{\"prompt\": \"" + std::string(100, 'a') + "\", \"answer\": \"b\"}\n");
  expect_error("eval " + quote(z.base) + " --ctx 16 --tasks " + quote(z.dir / "long.jsonl"),
               "long.jsonl:1");
  expect_error("generate " + quote(z.base) + " --prompt hi --top-p 0", "--top-p");
}

}  // namespace

namespace {

// The repository's trained zoo (examples/zoo, scripts/train_zoo.py): the merge of its fine-tunes
// beats the base and every fine-tune on the mean over the held-out task files, scored by
// smelt eval (the README's main job shows the same table).
TEST(CliEvalZoo, TheMergeBeatsEverySingleModelOnTheMean) {
  const fs::path zoo = fs::path(SMELT_SOURCE_DIR) / "examples" / "zoo";
  std::string tasks;
  for (const char* t : {"add", "rev", "up", "next", "add_mc"})
    tasks += " --tasks " + quote(zoo / "tasks" / (std::string(t) + ".jsonl"));
  // merge.yml names its models relative to the repository root.
  auto r = smelt::testing::run_command(
      "cd " + quote(fs::path(SMELT_SOURCE_DIR)) + " && " + quote(fs::path(SMELT_BIN)) +
      " eval --json -q examples/zoo/base examples/zoo/ft-add examples/zoo/ft-rev examples/zoo/ft-up"
      " examples/zoo/ft-next examples/zoo/merge.yml" +
      tasks);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  ASSERT_EQ(j["models"].size(), 6u);
  const json& merge = j["models"][5];
  ASSERT_EQ(merge["model"], "examples/zoo/merge.yml");
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_LT(j["models"][i]["mean"].get<double>(), merge["mean"].get<double>())
        << j["models"][i]["model"] << " is not beaten by the merge:\n"
        << j.dump(1);
  }
  // Each fine-tune learned its task: it beats the base there.
  const json& base = j["models"][0];
  for (auto [i, task] : {std::pair{1, "add"}, {2, "rev"}}) {
    EXPECT_GT(j["models"][i]["tasks"][task]["score"].get<double>(),
              base["tasks"][task]["score"].get<double>() + 0.3)
        << task;
  }
}

TEST(CliEvalZoo, GenerateStopsBeforeTheStopString) {
  const fs::path ft = fs::path(SMELT_SOURCE_DIR) / "examples" / "zoo" / "ft-add";
  auto r = run_smelt("generate -q " + quote(ft) + " --prompt 38+21= --max-tokens 12 --stop '\n'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "59\n");
  auto cut = run_smelt("generate -q " + quote(ft) + " --prompt 38+21= --max-tokens 12 --stop 9");
  EXPECT_EQ(cut.output, "5\n");
}

}  // namespace

namespace {

// Ctrl-C during an evaluation prints the scores so far and exits with 128 + SIGINT. (timeout
// --foreground sends one SIGINT; without it a second one goes to the process group, and a second
// signal quits at once by design.)
TEST(CliEvalZoo, InterruptPrintsWhatWasScored) {
  const fs::path zoo = fs::path(SMELT_SOURCE_DIR) / "examples" / "zoo";
  std::string tasks;
  for (int i = 0; i < 8; ++i)
    for (const char* t : {"add", "rev", "up", "next"})
      tasks += " --tasks " + quote(zoo / "tasks" / (std::string(t) + ".jsonl"));
  auto r = smelt::testing::run_command("timeout --foreground --preserve-status -s INT 1 " +
                                       quote(fs::path(SMELT_BIN)) + " eval -j 1 " +
                                       quote(zoo / "base") + " " + quote(zoo / "ft-add") + tasks);
  EXPECT_EQ(r.exit_code, 130) << r.output;
  EXPECT_NE(r.output.find("interrupted: the scores above cover"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mean"), std::string::npos) << r.output;  // the table's header
}

}  // namespace
