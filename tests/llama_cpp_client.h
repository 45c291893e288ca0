// llama.cpp as a test reference: tests/node/llama_eval.mjs runs a GGUF file through
// node-llama-cpp (installed by scripts/setup.sh) and prints the next-token log-softmax. Shared by
// the tests that compare smelt's exports, tokenizers and forward pass with llama.cpp.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "test_util.h"

namespace smelt::testing {

// Why llama.cpp cannot run here (tests/node/node_modules lacks node-llama-cpp, or no node >= 20);
// empty when it can.
inline std::string node_llama_cpp_missing() {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(SMELT_SOURCE_DIR) / "tests/node/node_modules/node-llama-cpp")) {
    return "tests/node/node_modules is missing (npm ci in tests/node)";
  }
  if (run_command(node_command() +
                  " -e 'process.exit(+process.versions.node.split(\".\")[0] >= 20 ? 0 : 1)'")
          .exit_code != 0) {
    return "node >= 20 is not installed (node-llama-cpp needs it; " + node_command() + ")";
  }
  return "";
}

// True when the caller may skip its llama.cpp checks: SMELT_SKIP_LLAMA_CPP=1 (machines that
// cannot have node-llama-cpp; CI never sets it).
inline bool llama_cpp_opted_out() {
  const char* opt_out = std::getenv("SMELT_SKIP_LLAMA_CPP");
  return opt_out && std::string_view(opt_out) == "1";
}

// Fails the calling test unless node-llama-cpp and node >= 20 are installed (scripts/setup.sh
// installs both), so that CI cannot pass without running llama.cpp. SMELT_SKIP_LLAMA_CPP=1 turns
// the failure into a skip on machines that cannot have them.
#define REQUIRE_NODE_LLAMA_CPP()                                                            \
  do {                                                                                      \
    if (const std::string why = ::smelt::testing::node_llama_cpp_missing(); !why.empty()) { \
      if (::smelt::testing::llama_cpp_opted_out()) {                                        \
        GTEST_SKIP() << why << " (SMELT_SKIP_LLAMA_CPP=1)";                                 \
      }                                                                                     \
      FAIL() << why                                                                         \
             << ": run scripts/setup.sh, or set SMELT_SKIP_LLAMA_CPP=1 to skip the "        \
                "llama.cpp checks";                                                         \
    }                                                                                       \
  } while (0)

// Runs tests/node/llama_eval.mjs on `gguf` and `ids` (with `all`: --all, every position) and
// returns its JSON output (n_vocab, n_tokens, argmax, logits); null, with a test failure, when it
// fails. `work` holds its stderr.
inline nlohmann::json llama_cpp_eval(const std::filesystem::path& gguf, const std::vector<int>& ids,
                                     const std::filesystem::path& work, bool all = false) {
  namespace fs = std::filesystem;
  const fs::path node_dir = fs::path(SMELT_SOURCE_DIR) / "tests" / "node";
  const fs::path err = work / "stderr.txt";
  auto r = run_command("( " + node_command() + " " + quote(node_dir / "llama_eval.mjs") + " " +
                       quote(gguf) + " '" + nlohmann::json(ids).dump() + "'" +
                       (all ? " --all" : "") + " 2>" + quote(err) + " )");
  EXPECT_EQ(r.exit_code, 0) << r.output << read_bytes(err);
  try {
    return nlohmann::json::parse(r.output);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "llama_eval output is not JSON: " << e.what() << "\n" << r.output;
  }
  return nullptr;
}

// llama.cpp's next-token log-softmax after the last of `ids` on `gguf` (empty, with a test
// failure, when it cannot run).
inline std::vector<double> llama_cpp_log_softmax(const std::filesystem::path& gguf,
                                                 const std::vector<int>& ids,
                                                 const std::filesystem::path& work) {
  const nlohmann::json parsed = llama_cpp_eval(gguf, ids, work);
  std::vector<double> out;
  try {
    for (const auto& v : parsed.at("logits")) out.push_back(v.get<double>());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "llama_eval output has no logits: " << parsed.dump();
  }
  return out;
}

// The same after every position of `ids` (llama_eval.mjs --all).
inline std::vector<std::vector<double>> llama_cpp_log_softmax_all(
    const std::filesystem::path& gguf, const std::vector<int>& ids,
    const std::filesystem::path& work) {
  const nlohmann::json parsed = llama_cpp_eval(gguf, ids, work, /*all=*/true);
  std::vector<std::vector<double>> out;
  try {
    EXPECT_EQ(parsed.at("n_tokens"), ids.size());
    EXPECT_EQ(parsed.at("argmax").size(), ids.size());
    for (const auto& row : parsed.at("logits")) {
      out.emplace_back();
      for (const auto& v : row) out.back().push_back(v.is_number() ? v.get<double>() : -1e30);
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "llama_eval --all output has no logits: " << e.what() << "\n" << parsed.dump();
  }
  return out;
}

}  // namespace smelt::testing
