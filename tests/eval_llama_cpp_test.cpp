// `smelt eval --text` against llama.cpp: the perplexity of a text computed from llama.cpp's own
// log-probabilities (node-llama-cpp, tests/node/llama_eval.mjs) with llama-perplexity's chunking
// equals what smelt eval reports, on the HF folder and on its GGUF export (docs/eval.md).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "llama_cpp_client.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using smelt::testing::quote;
using smelt::testing::run_smelt;
using smelt::testing::TempDir;
using smelt::testing::write_bytes;

std::vector<int> token_ids(const fs::path& model, const std::string& args) {
  auto r = run_smelt("tokenize --json " + quote(model) + " " + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return json::parse(r.output)["ids"].get<std::vector<int>>();
}

double smelt_ppl(const fs::path& model, const fs::path& text, int ctx) {
  auto r = run_smelt(
      fmt::format("eval --json -q {} --text {} --ctx {}", quote(model), quote(text), ctx));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return json::parse(r.output)["models"][0]["perplexity"]["ppl"].get<double>();
}

class EvalPerplexityLikeLlamaCpp : public ::testing::TestWithParam<std::string> {};

TEST_P(EvalPerplexityLikeLlamaCpp, OnTheFolderAndOnTheGguf) {
  REQUIRE_NODE_LLAMA_CPP();
  TempDir dir;
  const fs::path m = dir / "m";
  const std::string arch =
      GetParam() == "qwen2" ? " --arch Qwen2ForCausalLM --model-type qwen2" : "";
  auto made = run_smelt("dev make-model " + quote(m) +
                        " --hidden 64 --heads 4 --kv-heads 2 --layers 2 --vocab 320 --dtype F32"
                        " --weight-std 0.2 --seed 4" +
                        arch);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  write_bytes(dir / "copy.yml",
              fmt::format("models:\n  - model: {}\nmerge_method: passthrough\n", m.string()));
  const fs::path gguf = dir / "m.gguf";
  auto exported =
      run_smelt("merge -q --out-type F32 " + quote(dir / "copy.yml") + " " + quote(gguf));
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  const std::string text =
      "the cat sat on the mat and the dog ran to the park, then both slept in the sun while "
      "birds sang over the quiet town by the river.";
  write_bytes(dir / "text.txt", text);
  const int ctx = 32;

  // llama-perplexity's tokens: BOS (the GGUF adds it), then the text without special tokens.
  std::vector<int> tokens = token_ids(gguf, "--no-special --file " + quote(dir / "text.txt"));
  const std::vector<int> with = token_ids(gguf, "a"), without = token_ids(gguf, "--no-special a");
  ASSERT_EQ(with.size(), without.size() + 1) << "the exported vocabulary should add BOS";
  const int bos = with.front();
  tokens.insert(tokens.begin(), bos);
  const size_t chunks = tokens.size() / ctx;
  ASSERT_GE(chunks, 2u) << tokens.size() << " tokens";

  double nll = 0;
  size_t n = 0;
  for (size_t c = 0; c < chunks; ++c) {
    std::vector<int> chunk(tokens.begin() + c * ctx, tokens.begin() + (c + 1) * ctx);
    chunk[0] = bos;
    const auto ls = smelt::testing::llama_cpp_log_softmax_all(gguf, chunk, dir.path());
    ASSERT_EQ(ls.size(), static_cast<size_t>(ctx));
    for (int j = ctx / 2; j < ctx - 1; ++j) {
      nll -= ls[j][tokens[c * ctx + j + 1]];
      ++n;
    }
  }
  const double llama_cpp_ppl = std::exp(nll / static_cast<double>(n));
  const double folder = smelt_ppl(m, dir / "text.txt", ctx);
  const double file = smelt_ppl(gguf, dir / "text.txt", ctx);
  std::cout << GetParam() << ": llama.cpp " << llama_cpp_ppl << ", smelt (folder) " << folder
            << ", smelt (GGUF) " << file << "\n";
  EXPECT_LT(std::abs(folder / llama_cpp_ppl - 1), 0.005);
  EXPECT_LT(std::abs(file / llama_cpp_ppl - 1), 0.005);
  EXPECT_GT(llama_cpp_ppl, 1.5) << "a model this random should be unsure of the text";
}

INSTANTIATE_TEST_SUITE_P(Families, EvalPerplexityLikeLlamaCpp, ::testing::Values("llama", "qwen2"));

}  // namespace
