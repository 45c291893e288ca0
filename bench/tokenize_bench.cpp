// Encode throughput of smelt's tokenizers (bench/tokenize_bench.sh sets them against the
// reference libraries): SMELT_BENCH_TOKENIZER names a model folder or tokenizer file,
// SMELT_BENCH_TEXT a text file that is encoded line by line (one encode call per line, no special
// tokens, one thread). Skipped unless both are set.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "smelt/tokenizer/tokenizer.h"

namespace {

void BM_TokenizeLines(benchmark::State& state) {
  const char* tokenizer_path = std::getenv("SMELT_BENCH_TOKENIZER");
  const char* text_path = std::getenv("SMELT_BENCH_TEXT");
  if (!tokenizer_path || !text_path) {
    state.SkipWithError("set SMELT_BENCH_TOKENIZER and SMELT_BENCH_TEXT (bench/tokenize_bench.sh)");
    return;
  }
  std::unique_ptr<smelt::tok::Tokenizer> tokenizer;
  try {
    tokenizer = smelt::tok::Tokenizer::load(tokenizer_path);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  std::ifstream in(text_path, std::ios::binary);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  std::vector<std::string_view> lines;
  for (size_t start = 0; start <= text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(std::string_view(text).substr(start, end - start));
    start = end + 1;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    for (std::string_view line : lines) {
      tokens += tokenizer->encode(line, {.add_special_tokens = false}).ids.size();
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens_per_iteration"] =
      static_cast<double>(tokens) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_TokenizeLines)->Unit(benchmark::kMillisecond)->Iterations(2);

}  // namespace
