// `smelt evolve GENOME.yml --storage-path P`: mergekit-evolve's search on the CPU (docs/evolve.md).
// CMA-ES proposes genotypes, each becomes a merge config that is merged into memory and scored on
// the validation task files; the search state is checkpointed after every generation so that
// --resume continues exactly, and the best config is finally scored on validation and held-out
// test files side by side.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "smelt/error.h"
#include "smelt/eval/evaluate.h"
#include "smelt/eval/tasks.h"
#include "smelt/interrupt.h"
#include "smelt/report/svg_plot.h"
#include "smelt/search/candidate.h"
#include "smelt/search/cmaes.h"
#include "smelt/search/genome.h"

extern char** environ;

namespace smelt::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kCheckpointFormat = "smelt-evolve-checkpoint";
constexpr int kCheckpointVersion = 1;

struct EvolveCliOptions {
  std::string genome;
  std::string storage_path;
  size_t max_fevals = 100;
  std::string seed = "0";
  double sigma0 = 1.0 / 6.0;
  size_t workers = 1;
  size_t limit = 0;
  std::string threads = "0";
  bool resume = false;
  size_t population = 0;
  bool quiet = false;
  std::vector<std::string> task_search_path;
  std::string max_memory = "512M";
};

// A task of the genome with its files: the validation file the search scores, and the held-out
// test file scored once at the end (if any).
struct Task {
  search::TaskSpec spec;
  std::string val_path;
  std::optional<std::string> test_path;
  size_t val_index = 0;   // into the distinct validation files
  size_t test_index = 0;  // into the distinct test files
};

// One scored candidate, as evaluations.csv and the checkpoint hold it.
struct Evaluation {
  size_t index = 0;
  size_t generation = 0;
  std::vector<double> metrics;  // one per task of the genome
  double score = 0;             // Σ weight · metric, mergekit-evolve's score
  std::vector<double> genotype;
};

bool exists_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// A task name or file as the genome gives it: a path (it ends in .jsonl or has a '/'), looked up
// as given, beside the genome file and in each search folder; or a NAME, looked up as
// NAME.val.jsonl (then NAME.jsonl is its test file) or NAME.jsonl in the search folders and
// beside the genome file.
Task resolve_task(const search::TaskSpec& spec, size_t i, const std::vector<fs::path>& dirs,
                  const fs::path& genome_dir) {
  Task t;
  t.spec = spec;
  const std::string where = fmt::format("tasks[{}]", i);
  auto find_path = [&](const std::string& name, const std::string& key) -> std::string {
    std::vector<fs::path> tried = {fs::path(name), genome_dir / name};
    for (const auto& d : dirs) tried.push_back(d / name);
    for (const auto& p : tried)
      if (exists_file(p)) return p.string();
    fail(
        "{}.{}: no task file {} (looked in the current folder, beside the genome file and in "
        "the --task-search-path folders)",
        where, key, name);
  };
  auto is_path = [](const std::string& s) {
    return s.ends_with(".jsonl") || s.find('/') != std::string::npos;
  };
  if (is_path(spec.name)) {
    t.val_path = find_path(spec.name, "name");
  } else {
    std::vector<fs::path> search = dirs;
    search.push_back(genome_dir);
    for (const auto& d : search) {
      if (exists_file(d / (spec.name + ".val.jsonl"))) {
        t.val_path = (d / (spec.name + ".val.jsonl")).string();
        if (exists_file(d / (spec.name + ".jsonl")))
          t.test_path = (d / (spec.name + ".jsonl")).string();
        break;
      }
      if (exists_file(d / (spec.name + ".jsonl"))) {
        t.val_path = (d / (spec.name + ".jsonl")).string();
        break;
      }
    }
    if (t.val_path.empty()) {
      std::vector<std::string> names;
      for (const auto& d : search) names.push_back(d.string());
      fail(
          "{}.name: no task file {}.val.jsonl or {}.jsonl in {}; give a path to a JSONL task "
          "file or add its folder with --task-search-path",
          where, spec.name, spec.name, fmt::join(names, ", "));
    }
  }
  if (spec.test) {
    const std::string name = is_path(*spec.test) ? *spec.test : *spec.test + ".jsonl";
    t.test_path = find_path(name, "test");
  }
  return t;
}

// The metric of one task from its result (docs/evolve.md: acc and exact_match are the task's
// score).
double metric_value(const search::TaskSpec& spec, double score, double acc_norm) {
  return spec.metric.starts_with("acc_norm") ? acc_norm : score;
}

double weighted_score(const std::vector<Task>& tasks, const std::vector<double>& metrics) {
  double s = 0;
  for (size_t i = 0; i < tasks.size(); ++i) s += tasks[i].spec.weight * metrics[i];
  return s;
}

std::string number_text(double v) { return fmt::format("{}", v); }

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// Everything the search runs on; a checkpoint made under other settings cannot be resumed.
json settings_json(const std::string& genome_text, uint64_t seed, double sigma0, size_t population,
                   size_t limit, const std::vector<Task>& tasks) {
  json tasks_j = json::array();
  for (const auto& t : tasks) tasks_j.push_back(t.val_path);
  return {{"genome", genome_text},    {"random_seed", seed}, {"sigma0", sigma0},
          {"population", population}, {"limit", limit},      {"validation_files", tasks_j}};
}

class Search {
 public:
  Search(const EvolveCliOptions& o) : o_(o) {}
  void run();

 private:
  void setup();
  void start_or_resume();
  std::vector<Evaluation> evaluate_generation(const std::vector<std::vector<double>>& xs);
  std::vector<double> evaluate_in_process(const std::string& yaml, const std::string& label,
                                          const std::vector<eval::TaskFile>& files,
                                          const std::vector<size_t>& index, size_t limit,
                                          size_t threads);
  std::vector<std::vector<double>> evaluate_in_workers(const std::vector<std::string>& yamls,
                                                       size_t first_index);
  void save();
  void report_final();
  const Evaluation* best() const;

  EvolveCliOptions o_;
  fs::path storage_;
  std::string genome_text_;
  search::EvolveConfig config_;
  std::optional<search::Genome> genome_;
  std::vector<Task> tasks_;
  std::vector<eval::TaskFile> val_files_, test_files_;
  std::vector<size_t> val_of_task_;
  uint64_t seed_ = 0;
  size_t limit_ = 0;
  size_t threads_ = 1;
  uint64_t max_memory_ = 0;
  std::optional<search::Cmaes> es_;
  std::vector<Evaluation> log_;
  std::chrono::steady_clock::time_point start_;
  size_t evaluated_this_run_ = 0;
};

void Search::setup() {
  if (o_.max_fevals < 1) fail("--max-fevals must be at least 1");
  if (o_.workers < 1) fail("--workers must be at least 1");
  if (o_.storage_path.empty()) fail("--storage-path: give a folder for the search's files");
  seed_ = parse_seed(o_.seed);
  max_memory_ = parse_memory_size(o_.max_memory);
  const size_t asked = parse_threads(o_.threads);
  threads_ = asked ? asked : std::max(1u, std::thread::hardware_concurrency());
  {
    std::ifstream in(o_.genome, std::ios::binary);
    if (!in) fail("{}: no such genome file", o_.genome);
    genome_text_.assign(std::istreambuf_iterator<char>(in), {});
  }
  config_ = search::load_evolve_config(o_.genome);
  limit_ = o_.limit ? o_.limit : config_.limit.value_or(0);
  const auto& def = config_.genome;
  const std::string donor = def.base_model ? *def.base_model : def.models[0];
  genome_.emplace(def, search::model_layer_count(donor));

  std::vector<fs::path> dirs(o_.task_search_path.begin(), o_.task_search_path.end());
  const fs::path genome_dir = fs::path(o_.genome).parent_path();
  std::vector<std::string> val_paths, test_paths;
  for (size_t i = 0; i < config_.tasks.size(); ++i) {
    Task t = resolve_task(config_.tasks[i], i, dirs, genome_dir.empty() ? "." : genome_dir);
    auto slot = [](std::vector<std::string>& paths, const std::string& p) {
      const auto it = std::find(paths.begin(), paths.end(), p);
      if (it != paths.end()) return static_cast<size_t>(it - paths.begin());
      paths.push_back(p);
      return paths.size() - 1;
    };
    t.val_index = slot(val_paths, t.val_path);
    if (t.test_path) t.test_index = slot(test_paths, *t.test_path);
    tasks_.push_back(std::move(t));
  }
  // Every file is read and checked before anything is merged.
  for (const auto& p : val_paths) val_files_.push_back(eval::load_task_file(p));
  for (const auto& p : test_paths) test_files_.push_back(eval::load_task_file(p));
  for (size_t i = 0; i < tasks_.size(); ++i) {
    const auto& t = tasks_[i];
    if (!t.spec.metric.starts_with("acc_norm")) continue;
    for (const auto& line : val_files_[t.val_index].lines) {
      if (line.generation())
        fail(
            "tasks[{}].metric: acc_norm needs multiple-choice lines; {} line {} is a generation "
            "line (use \"exact_match,none\")",
            i, t.val_path, line.line);
    }
  }
  // `smelt eval --json` names tasks by file name, so the worker processes need distinct names.
  for (size_t a = 0; a < val_files_.size(); ++a)
    for (size_t b = a + 1; b < val_files_.size(); ++b)
      if (val_files_[a].name == val_files_[b].name)
        fail("task files {} and {} have the same name \"{}\"; rename one", val_files_[a].path,
             val_files_[b].path, val_files_[a].name);
  for (const auto& t : tasks_) val_of_task_.push_back(t.val_index);
  storage_ = o_.storage_path;
}

void Search::start_or_resume() {
  std::error_code ec;
  const fs::path checkpoint = storage_ / "checkpoint.json";
  const json settings =
      settings_json(genome_text_, seed_, o_.sigma0, o_.population, limit_, tasks_);
  if (!o_.resume) {
    if (fs::exists(checkpoint, ec))
      fail(
          "--storage-path {} already holds a search (checkpoint.json); pass --resume to continue "
          "it, or choose another folder",
          storage_.string());
    if (fs::exists(storage_, ec) && !fs::is_directory(storage_, ec))
      fail("--storage-path {}: exists and is not a folder", storage_.string());
    fs::create_directories(storage_);
    std::vector<double> x0 = genome_->initial_genotype();
    if (config_.random_init) {
      // mergekit-evolve's random_init: uniform in [0, 1) per coordinate.
      search::Rng rng(seed_ ^ 0x5eed5eed5eed5eedULL);
      for (auto& x : x0) x = rng.uniform();
    }
    es_.emplace(
        std::move(x0),
        search::CmaesOptions{.sigma0 = o_.sigma0, .population = o_.population, .seed = seed_});
    return;
  }
  std::ifstream in(checkpoint);
  if (!in) fail("--resume: {} holds no checkpoint.json to continue from", storage_.string());
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != kCheckpointFormat ||
      j.value("version", 0) != kCheckpointVersion)
    fail("{}: not a checkpoint of smelt evolve", checkpoint.string());
  const json& saved = j["settings"];
  for (const auto& [key, value] : settings.items()) {
    if (!saved.contains(key) || saved[key] != value) {
      fail(
          "--resume: the search in {} ran with a different {}; resume it with the same genome "
          "file, --random-seed, --sigma0, --force-population-size, --limit and task files",
          storage_.string(), key == "genome" ? "genome file" : key);
    }
  }
  es_.emplace(search::Cmaes::from_json(j["cmaes"]));
  if (es_->dimension() != genome_->dimension())
    fail("{}: the checkpoint's genotype has {} values, the genome {}", checkpoint.string(),
         es_->dimension(), genome_->dimension());
  for (const auto& e : j["evaluations"]) {
    Evaluation ev;
    ev.index = e.at("index").get<size_t>();
    ev.generation = e.at("generation").get<size_t>();
    ev.metrics = e.at("metrics").get<std::vector<double>>();
    ev.score = e.at("score").get<double>();
    ev.genotype = e.at("genotype").get<std::vector<double>>();
    if (ev.metrics.size() != tasks_.size() || ev.genotype.size() != genome_->dimension())
      fail("{}: evaluation {} does not fit the genome", checkpoint.string(), ev.index);
    log_.push_back(std::move(ev));
  }
  if (log_.size() != es_->evaluations())
    fail("{}: {} evaluations logged for {} told to CMA-ES", checkpoint.string(), log_.size(),
         es_->evaluations());
}

std::vector<double> Search::evaluate_in_process(const std::string& yaml, const std::string& label,
                                                const std::vector<eval::TaskFile>& files,
                                                const std::vector<size_t>& index, size_t limit,
                                                size_t threads) {
  eval::EvalModel m = search::merge_candidate_yaml(
      yaml, label, {.threads = threads, .seed = seed_, .max_memory = max_memory_});
  eval::Objective objective;
  objective.tasks = files;
  objective.limit = limit;
  eval::ScoreObserver observer;
  observer.keep_going = [] { return interrupt_signal() == 0; };
  const eval::ModelScores s = eval::evaluate(m, objective, observer);
  check_interrupted();
  if (!s.complete || s.tasks.size() != files.size()) fail("{}: scoring stopped early", label);
  std::vector<double> metrics;
  for (size_t i = 0; i < index.size(); ++i) {
    const auto& r = s.tasks[index[i]];
    metrics.push_back(metric_value(tasks_[i].spec, r.score(), r.acc_norm_rate()));
  }
  return metrics;
}

// Runs `smelt eval` on each candidate in up to --workers processes at once, the cores split
// among them; the candidates' configs and outputs live under P/candidates/ while they run.
std::vector<std::vector<double>> Search::evaluate_in_workers(const std::vector<std::string>& yamls,
                                                             size_t first_index) {
  const fs::path dir = storage_ / "candidates";
  fs::create_directories(dir);
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  const size_t per_worker = std::max<size_t>(1, threads_ / o_.workers);
  struct Running {
    pid_t pid;
    size_t k;
  };
  std::vector<Running> running;
  std::vector<std::vector<double>> results(yamls.size());
  auto paths = [&](size_t k) {
    const std::string stem = fmt::format("candidate-{}", first_index + k);
    return std::array<fs::path, 3>{dir / (stem + ".yml"), dir / (stem + ".json"),
                                   dir / (stem + ".log")};
  };
  auto cleanup = [&](size_t k) {
    std::error_code ec;
    for (const auto& p : paths(k)) fs::remove(p, ec);
  };
  auto stop_all = [&] {
    for (const auto& r : running) ::kill(r.pid, SIGTERM);
    for (const auto& r : running) {
      int status;
      ::waitpid(r.pid, &status, 0);
      cleanup(r.k);
    }
    running.clear();
  };
  size_t next = 0;
  // A worker reaped (no longer in `running`) whose files are not removed yet: an interruption or
  // a failure noticed while reading its result must still remove them.
  std::optional<size_t> reaped_worker;
  try {
    while (next < yamls.size() || !running.empty()) {
      while (next < yamls.size() && running.size() < o_.workers) {
        const auto p = paths(next);
        report::write_text_file(p[0], yamls[next]);
        std::vector<std::string> args = {exe, "eval", p[0].string()};
        for (const auto& f : val_files_) args.insert(args.end(), {"--tasks", f.path});
        if (limit_) args.insert(args.end(), {"--limit", std::to_string(limit_)});
        args.insert(args.end(), {"--json", "-q", "-j", std::to_string(per_worker), "--random-seed",
                                 std::to_string(seed_), "--max-memory", o_.max_memory});
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, p[1].c_str(),
                                         O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, p[2].c_str(),
                                         O_WRONLY | O_CREAT | O_TRUNC, 0644);
        pid_t pid;
        const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        if (rc != 0) fail("cannot start a worker process {}: {}", exe, std::strerror(rc));
        running.push_back({pid, next});
        ++next;
      }
      // Poll, so that a signal to this process alone (SIGTERM) is noticed too.
      bool reaped = false;
      for (size_t r = 0; r < running.size(); ++r) {
        int status = 0;
        if (::waitpid(running[r].pid, &status, WNOHANG) != running[r].pid) continue;
        const size_t k = running[r].k;
        running.erase(running.begin() + static_cast<std::ptrdiff_t>(r));
        reaped_worker = k;
        reaped = true;
        check_interrupted();
        const auto p = paths(k);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
          // A Ctrl-C reaches the workers too; give this process's handler time to see it.
          if (WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) > 128)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            check_interrupted();
          }
          std::ifstream log(p[2]);
          std::string message((std::istreambuf_iterator<char>(log)), {});
          while (!message.empty() && message.back() == '\n') message.pop_back();
          fail("candidate {}: the worker failed: {}", first_index + k,
               message.empty() ? std::string("no message") : message);
        }
        std::ifstream out(p[1]);
        json j = json::parse(out, nullptr, false);
        if (j.is_discarded() || !j.contains("models") || j["models"].empty())
          fail("candidate {}: the worker's output is not smelt eval's JSON", first_index + k);
        const json& tasks = j["models"][0]["tasks"];
        std::vector<double> metrics;
        for (size_t i = 0; i < tasks_.size(); ++i) {
          const json& r = tasks.at(val_files_[tasks_[i].val_index].name);
          metrics.push_back(
              metric_value(tasks_[i].spec, r.at("score").get<double>(), r.value("acc_norm", 0.0)));
        }
        results[k] = std::move(metrics);
        cleanup(k);
        reaped_worker.reset();
        break;
      }
      if (!reaped) {
        check_interrupted();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  } catch (...) {
    stop_all();
    if (reaped_worker) cleanup(*reaped_worker);
    std::error_code ec;
    fs::remove(dir, ec);  // only when empty
    throw;
  }
  std::error_code ec;
  fs::remove(dir, ec);  // only when empty
  return results;
}

std::vector<Evaluation> Search::evaluate_generation(const std::vector<std::vector<double>>& xs) {
  std::vector<std::string> yamls;
  for (const auto& x : xs) yamls.push_back(search::config_yaml_text(genome_->merge_config(x)));
  const size_t first = log_.size();
  std::vector<std::vector<double>> metrics;
  if (o_.workers == 1) {
    for (size_t k = 0; k < xs.size(); ++k) {
      metrics.push_back(evaluate_in_process(yamls[k], fmt::format("candidate {}", first + k),
                                            val_files_, val_of_task_, limit_, threads_));
    }
  } else {
    metrics = evaluate_in_workers(yamls, first);
  }
  std::vector<Evaluation> out;
  for (size_t k = 0; k < xs.size(); ++k) {
    Evaluation e;
    e.index = first + k;
    e.generation = es_->generation() + 1;  // counted from 1, as the progress lines
    e.metrics = metrics[k];
    e.score = weighted_score(tasks_, e.metrics);
    e.genotype = xs[k];
    out.push_back(std::move(e));
  }
  return out;
}

const Evaluation* Search::best() const {
  const Evaluation* b = nullptr;
  for (const auto& e : log_)
    if (!b || e.score > b->score) b = &e;
  return b;
}

// The checkpoint first (what --resume reads), then the files derived from it; each written
// through a temporary file renamed into place.
void Search::save() {
  json j;
  j["format"] = kCheckpointFormat;
  j["version"] = kCheckpointVersion;
  j["settings"] = settings_json(genome_text_, seed_, o_.sigma0, o_.population, limit_, tasks_);
  j["cmaes"] = es_->to_json();
  j["evaluations"] = json::array();
  for (const auto& e : log_) {
    j["evaluations"].push_back({{"index", e.index},
                                {"generation", e.generation},
                                {"metrics", e.metrics},
                                {"score", e.score},
                                {"genotype", e.genotype}});
  }
  report::write_text_file(storage_ / "checkpoint.json", j.dump(1) + "\n");

  std::string csv = "index,generation";
  for (const auto& t : tasks_) csv += "," + csv_field(t.spec.name);
  csv += ",score";
  for (const auto& n : genome_->coordinate_names()) csv += "," + csv_field(n);
  csv += "\n";
  for (const auto& e : log_) {
    csv += fmt::format("{},{}", e.index, e.generation);
    for (double m : e.metrics) csv += "," + number_text(m);
    csv += "," + number_text(e.score);
    for (double x : e.genotype) csv += "," + number_text(x);
    csv += "\n";
  }
  report::write_text_file(storage_ / "evaluations.csv", csv);

  report::LineChart chart;
  chart.title = fmt::format("smelt evolve: {}", fs::path(o_.genome).filename().string());
  chart.x_label = "evaluation";
  chart.y_label = "score (validation)";
  // The evaluations as a line, the best so far as a staircase drawn point by point (a chart's
  // step style would apply to both series).
  report::Series each, best_so_far;
  each.name = "evaluation";
  best_so_far.name = "best so far";
  double b = -INFINITY;
  for (const auto& e : log_) {
    const double x = static_cast<double>(e.index);
    if (e.score > b && !best_so_far.x.empty()) {
      best_so_far.x.push_back(x);
      best_so_far.y.push_back(b);
    }
    b = std::max(b, e.score);
    each.x.push_back(x);
    each.y.push_back(e.score);
    best_so_far.x.push_back(x);
    best_so_far.y.push_back(b);
  }
  chart.series = {each, best_so_far};
  report::write_text_file(storage_ / "progress.svg", report::render_line_chart(chart));

  if (const Evaluation* e = best()) {
    report::write_text_file(
        storage_ / "best_config.yaml",
        fmt::format("# smelt evolve: evaluation {} (generation {}), validation score {}\n{}",
                    e->index, e->generation, number_text(e->score),
                    search::config_yaml_text(genome_->merge_config(e->genotype))));
  }
}

void Search::report_final() {
  const Evaluation* b = best();
  if (!b) return;
  const std::string yaml = search::config_yaml_text(genome_->merge_config(b->genotype));
  if (!o_.quiet) fmt::print(stderr, "scoring the best config on all lines of the task files...\n");
  // All lines of every file (no --limit): the validation and test numbers compare like for like.
  const auto val =
      evaluate_in_process(yaml, "best_config.yaml", val_files_, val_of_task_, 0, threads_);
  std::vector<double> test(tasks_.size(), NAN);
  if (!test_files_.empty()) {
    eval::EvalModel m = search::merge_candidate_yaml(
        yaml, "best_config.yaml", {.threads = threads_, .seed = seed_, .max_memory = max_memory_});
    eval::Objective objective;
    objective.tasks = test_files_;
    eval::ScoreObserver observer;
    observer.keep_going = [] { return interrupt_signal() == 0; };
    const eval::ModelScores s = eval::evaluate(m, objective, observer);
    check_interrupted();
    for (size_t i = 0; i < tasks_.size(); ++i) {
      if (!tasks_[i].test_path) continue;
      const auto& r = s.tasks[tasks_[i].test_index];
      test[i] = metric_value(tasks_[i].spec, r.score(), r.acc_norm_rate());
    }
  }
  auto summary = [&](const std::vector<double>& m) {
    json tasks = json::object();
    double score = 0, mean = 0;
    size_t n = 0;
    for (size_t i = 0; i < tasks_.size(); ++i) {
      if (std::isnan(m[i])) continue;
      tasks[tasks_[i].spec.name] = m[i];
      score += tasks_[i].spec.weight * m[i];
      mean += m[i];
      ++n;
    }
    json j = {{"tasks", tasks}};
    j["score"] = n ? json(score) : json(nullptr);
    j["mean"] = n ? json(mean / static_cast<double>(n)) : json(nullptr);
    return j;
  };
  json j;
  j["evaluation"] = b->index;
  j["generation"] = b->generation;
  j["search_score"] = b->score;
  j["search_limit"] = limit_;
  j["config"] = "best_config.yaml";
  j["validation"] = summary(val);
  j["validation"]["files"] = json::array();
  for (const auto& t : tasks_) j["validation"]["files"].push_back(t.val_path);
  j["test"] = summary(test);
  j["test"]["files"] = json::array();
  for (const auto& t : tasks_)
    j["test"]["files"].push_back(t.test_path ? json(*t.test_path) : json(nullptr));
  report::write_text_file(storage_ / "best_scores.json", j.dump(2) + "\n");

  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < tasks_.size(); ++i) {
    rows.push_back({printable(tasks_[i].spec.name), number_text(tasks_[i].spec.weight),
                    fmt::format("{:.4f}", val[i]),
                    std::isnan(test[i]) ? "-" : fmt::format("{:.4f}", test[i])});
  }
  auto cell = [](const json& v) {
    return v.is_null() ? std::string("-") : fmt::format("{:.4f}", v.get<double>());
  };
  rows.push_back({"score", "", cell(j["validation"]["score"]), cell(j["test"]["score"])});
  rows.push_back({"mean", "", cell(j["validation"]["mean"]), cell(j["test"]["mean"])});
  fmt::print("best: evaluation {} of {} (generation {}), {}\n", b->index, log_.size(),
             b->generation, (storage_ / "best_config.yaml").string());
  print_columns({"task", "weight", "validation", "test"}, rows, /*left_columns=*/1);
  if (j["test"]["score"].is_null())
    fmt::print("no held-out test files: give each task a test: file (docs/evolve.md)\n");
}

void Search::run() {
  setup();
  InterruptibleScope interruptible;
  start_or_resume();
  start_ = std::chrono::steady_clock::now();
  if (!o_.quiet) {
    fmt::print(stderr,
               "evolve: {} parameters ({} layer groups × {} models × {} sets × {}), "
               "population {}, {} workers\n",
               genome_->dimension(), genome_->layer_groups(), config_.genome.models.size(),
               genome_->param_sets(), fmt::join(genome_->param_names(), "+"), es_->population(),
               o_.workers);
    for (const auto& t : tasks_) {
      fmt::print(stderr, "  task {}: searching on {}, held-out test {}\n", printable(t.spec.name),
                 t.val_path, t.test_path ? *t.test_path : "none");
    }
    if (!log_.empty())
      fmt::print(stderr, "resuming after {} evaluations (generation {})\n", log_.size(),
                 es_->generation());
  }
  while (es_->evaluations() < o_.max_fevals) {
    const auto xs = es_->ask();
    std::vector<Evaluation> generation = evaluate_generation(xs);
    std::vector<double> f;
    for (const auto& e : generation) f.push_back(-e.score);  // CMA-ES minimises
    es_->tell(f);
    const double gen_best = -*std::min_element(f.begin(), f.end());
    log_.insert(log_.end(), generation.begin(), generation.end());
    evaluated_this_run_ += generation.size();
    save();
    if (!o_.quiet) {
      const double minutes =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() / 60;
      fmt::print(stderr,
                 "generation {}: {}/{} evaluations, best {:.4f} (this generation {:.4f}), sigma "
                 "{:.4f}, {:.1f} evaluations/min\n",
                 es_->generation(), log_.size(), o_.max_fevals, best()->score, gen_best,
                 es_->sigma(), static_cast<double>(evaluated_this_run_) / minutes);
    }
    check_interrupted();
  }
  if (log_.empty()) return;
  report_final();
}

}  // namespace

void add_evolve(CLI::App& app) {
  auto o = std::make_shared<EvolveCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "evolve",
      "Search merge parameters with CMA-ES (mergekit-evolve's genome files, unchanged): each\n"
      "candidate is merged into memory and scored on validation task files; the best config is\n"
      "finally scored on validation and held-out test files. Writes evaluations.csv,\n"
      "best_config.yaml, progress.svg, best_scores.json and a checkpoint into --storage-path.\n"
      "Examples:\n"
      "  smelt evolve genome.yml --storage-path run1 --task-search-path tasks/\n"
      "  smelt evolve genome.yml --storage-path run1 --resume --max-fevals 200 --workers 2");
  cmd->add_option("genome", o->genome, "the genome file (mergekit-evolve's YAML)")->required();
  cmd->add_option("--storage-path", o->storage_path, "folder for the search's files")->required();
  cmd->add_option("--max-fevals", o->max_fevals,
                  "evaluations to run (whole generations: the last may go past it; default 100)");
  cmd->add_option("--random-seed", o->seed, "seed of CMA-ES and of random merge methods");
  cmd->add_option("--sigma0", o->sigma0, "initial CMA-ES step size (default 1/6)");
  cmd->add_option("--force-population-size", o->population,
                  "candidates per generation (default 4 + floor(3 ln parameters))");
  cmd->add_option("--workers", o->workers,
                  "candidates scored in parallel processes (the cores split among them)");
  cmd->add_option("--limit", o->limit,
                  "score only the first N lines of each validation file during the search");
  cmd->add_option("--task-search-path", o->task_search_path,
                  "folder where task NAME is found as NAME.val.jsonl / NAME.jsonl (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("-j,--threads", o->threads, "threads in all (0 = one per core)");
  cmd->add_flag("--resume", o->resume, "continue the search saved in --storage-path");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress lines");
  cmd->add_option("--max-memory", o->max_memory, "working memory of each candidate's merge");
  cmd->callback([o] {
    try {
      Search(*o).run();
    } catch (const Interrupted&) {
      fmt::print(stderr,
                 "interrupted: the search is saved after its last whole generation in {}; "
                 "--resume continues it\n",
                 o->storage_path);
      throw;
    }
  });
}

}  // namespace smelt::cli
