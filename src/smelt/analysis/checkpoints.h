// Checkpoints of a training run for `smelt average` (docs/average.md): finding them (explicit
// folders, or a run folder of HF Trainer `checkpoint-<step>` subfolders), ordering them by step,
// checking that they hold the same tensors, and the weights of the averages smelt offers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace smelt::analysis {

// One checkpoint: its folder (or weights file) and its training step when known.
struct Checkpoint {
  std::filesystem::path path;
  std::optional<int64_t> step;  // trainer_state.json's global_step, else the folder name's
};

// The step of checkpoint folder `path`: trainer_state.json's "global_step" when the file exists
// (a file that is not JSON, or whose global_step is not a non-negative integer, is an error
// naming it), else the number N of a folder named `checkpoint-N`, else nullopt.
std::optional<int64_t> checkpoint_step(const std::filesystem::path& path);

// True for a folder that holds `checkpoint-<N>` subfolders and no weights of its own (an HF
// Trainer output_dir).
bool is_run_folder(const std::filesystem::path& path);

// Expands `inputs` (checkpoint folders or files, or run folders, whose `checkpoint-<N>`
// subfolders are taken) and orders the checkpoints: by step when every one has a step, in the
// order given when none has. Throws smelt::Error for a missing input, a run folder without
// checkpoints, two checkpoints of the same step or the same path, and a mix of checkpoints with
// and without steps (naming one of each).
std::vector<Checkpoint> find_checkpoints(const std::vector<std::string>& inputs);

// Checks that every checkpoint holds the same tensors with the same shapes as the first,
// reading headers only. Throws smelt::Error naming the tensor and the checkpoint that
// lacks it (or has it extra, or in another shape).
void check_same_tensors(const std::vector<Checkpoint>& checkpoints);

// Uniform weights 1/n for n checkpoints (n >= 1).
std::vector<double> uniform_weights(size_t n);

// The exponential moving average over n checkpoints in step order as linear weights:
// ema_0 = θ_0, ema_t = β·ema_{t−1} + (1−β)·θ_t gives θ_0 the weight β^(n−1) and θ_t (t >= 1)
// the weight (1−β)·β^(n−1−t); they sum to 1. Requires 0 < beta < 1 and n >= 1.
std::vector<double> ema_weights(size_t n, double beta);

}  // namespace smelt::analysis
