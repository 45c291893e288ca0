// Finding, ordering and checking the checkpoints `smelt average` averages (docs/average.md).
#include "smelt/analysis/checkpoints.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "smelt/dtype.h"
#include "smelt/error.h"
#include "smelt/io/model_ref.h"

namespace smelt::analysis {
namespace {

namespace fs = std::filesystem;

// N for a name `checkpoint-N` (N decimal digits, at most 18 of them), else nullopt.
std::optional<int64_t> step_in_name(const std::string& name) {
  constexpr std::string_view kPrefix = "checkpoint-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) {
    return std::nullopt;
  }
  const std::string digits = name.substr(kPrefix.size());
  if (digits.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

// The `checkpoint-N` subfolders of `dir`, in no particular order.
std::vector<fs::path> checkpoint_subfolders(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec) && step_in_name(it->path().filename().string())) {
      out.push_back(it->path());
    }
  }
  return out;
}

std::string label(const Checkpoint& c) { return c.path.string(); }

}  // namespace

std::optional<int64_t> checkpoint_step(const fs::path& path) {
  const fs::path state = path / "trainer_state.json";
  std::error_code ec;
  if (fs::is_regular_file(state, ec)) {
    std::ifstream in(state, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    if (!in.good() && !in.eof()) fail("{}: cannot read the file", state.string());
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      fail("{}: not a JSON object; remove or repair it (smelt reads its global_step)",
           state.string());
    }
    const auto it = j.find("global_step");
    if (it != j.end()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0) {
        fail("{}: global_step is {}, not a non-negative integer", state.string(), it->dump());
      }
      return it->get<int64_t>();
    }
  }
  return step_in_name(path.filename().string());
}

bool is_run_folder(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && !checkpoint_subfolders(path).empty();
}

std::vector<Checkpoint> find_checkpoints(const std::vector<std::string>& inputs) {
  std::vector<Checkpoint> out;
  for (const std::string& input : inputs) {
    const fs::path p = fs::path(input).lexically_normal();
    std::error_code ec;
    if (!fs::exists(p, ec)) fail("{}: no such checkpoint folder or file", input);
    if (is_run_folder(p)) {
      for (const fs::path& sub : checkpoint_subfolders(p)) {
        out.push_back({sub, checkpoint_step(sub)});
      }
    } else {
      out.push_back({p, fs::is_directory(p, ec) ? checkpoint_step(p) : std::nullopt});
    }
  }
  std::set<fs::path> seen;
  for (const Checkpoint& c : out) {
    std::error_code ec;
    const fs::path canonical = fs::weakly_canonical(c.path, ec);
    if (!seen.insert(ec ? c.path : canonical).second) {
      fail("{}: given twice; list each checkpoint once", label(c));
    }
  }
  const auto with = std::find_if(out.begin(), out.end(), [](auto& c) { return c.step; });
  const auto without = std::find_if(out.begin(), out.end(), [](auto& c) { return !c.step; });
  if (with != out.end() && without != out.end()) {
    fail(
        "{} has a training step (step {}) but {} has none (no trainer_state.json, and its name is "
        "not checkpoint-<step>); give checkpoints that all have steps, or none (then they are "
        "taken in the order given)",
        label(*with), *with->step, label(*without));
  }
  if (with != out.end()) {
    std::stable_sort(out.begin(), out.end(), [](auto& a, auto& b) { return *a.step < *b.step; });
    for (size_t i = 1; i < out.size(); ++i) {
      if (*out[i].step == *out[i - 1].step) {
        fail("{} and {} are both step {}; give only one of them", label(out[i - 1]), label(out[i]),
             *out[i].step);
      }
    }
  }
  return out;
}

void check_same_tensors(const std::vector<Checkpoint>& checkpoints) {
  if (checkpoints.empty()) return;
  struct Entry {
    std::vector<uint64_t> shape;
    DType dtype;
  };
  auto tensors_of = [](const Checkpoint& c) {
    std::map<std::string, Entry> m;
    const std::shared_ptr<io::Model> model = io::Model::open(c.path.string());
    for (const io::ModelTensor& t : model->tensors()) {
      m.emplace(t.info->name, Entry{t.info->shape, t.info->dtype});
    }
    return m;
  };
  const std::map<std::string, Entry> first = tensors_of(checkpoints[0]);
  const std::string first_label = label(checkpoints[0]);
  for (size_t i = 1; i < checkpoints.size(); ++i) {
    const std::map<std::string, Entry> other = tensors_of(checkpoints[i]);
    for (const auto& [name, e] : first) {
      const auto it = other.find(name);
      if (it == other.end()) {
        fail("checkpoint {} lacks tensor '{}' (which {} has); average checkpoints of one run",
             label(checkpoints[i]), name, first_label);
      }
      if (it->second.shape != e.shape) {
        fail("tensor '{}' is [{}] in {} but [{}] in {}; average checkpoints of one run", name,
             fmt::join(e.shape, ", "), first_label, fmt::join(it->second.shape, ", "),
             label(checkpoints[i]));
      }
    }
    for (const auto& [name, e] : other) {
      if (!first.count(name)) {
        fail("checkpoint {} lacks tensor '{}' (which {} has); average checkpoints of one run",
             first_label, name, label(checkpoints[i]));
      }
    }
  }
}

std::vector<double> uniform_weights(size_t n) { return std::vector<double>(n, 1.0 / n); }

std::vector<double> ema_weights(size_t n, double beta) {
  if (!(beta > 0.0 && beta < 1.0)) fail("--ema: beta must lie strictly between 0 and 1");
  std::vector<double> w(n);
  for (size_t t = 0; t < n; ++t) {
    const double decay = std::pow(beta, static_cast<double>(n - 1 - t));
    w[t] = t == 0 ? decay : (1.0 - beta) * decay;
  }
  return w;
}

}  // namespace smelt::analysis
