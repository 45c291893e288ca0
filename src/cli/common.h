// Helpers shared by the CLI verbs: registration functions and human-readable formatting.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "smelt/io/safetensors.h"

namespace smelt::cli {

// Each verb lives in its own file and registers its subcommand here.
void add_average(CLI::App& app);
void add_inspect(CLI::App& app);
void add_convert(CLI::App& app);
void add_dev(CLI::App& app);
void add_diff(CLI::App& app);
void add_download(CLI::App& app);
void add_eval(CLI::App& app);
void add_evolve(CLI::App& app);
void add_generate(CLI::App& app);
void add_merge(CLI::App& app);
void add_moe(CLI::App& app);
void add_plan(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_soup(CLI::App& app);
void add_sweep(CLI::App& app);
void add_interpolate(CLI::App& app);
void add_tokensurgeon(CLI::App& app);
void add_lora(CLI::App& app);

// A tensor's storage type for display: the ggml type name for GGUF tensors ("q4_K"), else the
// safetensors dtype ("BF16").
std::string type_name(const io::TensorInfo& t);

// `text` (a name or metadata value from a file) as it can be shown on a terminal: control
// characters (ESC, newline, ...) and bidirectional overrides as visible escapes (\x1b, \n,
// \u{202e}), bytes that are not UTF-8 as \xNN; everything else unchanged.
std::string printable(std::string_view text);

// Prints a table on stdout: columns two spaces apart, each as wide as its widest cell, the first
// `left_columns` left-aligned and the others right-aligned, no trailing spaces.
void print_columns(const std::vector<std::string>& header,
                   const std::vector<std::vector<std::string>>& rows, size_t left_columns);

// "1.50 GB" style (decimal units, as disk sizes are usually shown).
std::string human_bytes(uint64_t bytes);
// "1.24B" style parameter counts.
std::string human_count(uint64_t n);

}  // namespace smelt::cli
