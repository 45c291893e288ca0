// `smelt soup MODEL… -o OUT [--greedy] --tasks T.jsonl`: model soups (Wortsman et al. 2022).
// The uniform soup averages every model; the greedy soup ranks the models by their held-out
// score and adds each one only if the soup's score does not drop. Every trial soup is merged
// into memory; only the chosen one is written (docs/search.md).
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "cli/common.h"
#include "cli/plan_common.h"
#include "cli/progress.h"
#include "cli/search_common.h"
#include "smelt/error.h"
#include "smelt/exec/merge.h"
#include "smelt/interrupt.h"
#include "smelt/report/svg_plot.h"
#include "smelt/search/yaml_path.h"

namespace smelt::cli {
namespace {

struct SoupOptions {
  std::vector<std::string> models;
  std::string out;
  bool greedy = false;
  ObjectiveFlags objective;
  bool json = false;
  bool overwrite = false;
};

// A uniform soup as a mergekit config: linear, equal weights.
std::string soup_config(const std::vector<std::string>& models) {
  YAML::Node c;
  c["merge_method"] = "linear";
  for (const auto& m : models) {
    YAML::Node e;
    e["model"] = m;
    e["parameters"]["weight"] = 1.0;
    c["models"].push_back(e);
  }
  return search::yaml_text(c);
}

struct Step {
  std::string tried;  // the ingredient tried (greedy), or "" for a whole soup
  std::vector<std::string> soup;
  ScoredPoint point;
  bool kept = true;
};

void run(const SoupOptions& o) {
  if (o.models.size() < 2)
    fail("soup: give at least two models to average (got {})", o.models.size());
  for (size_t i = 0; i < o.models.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (o.models[i] == o.models[j]) fail("soup: {} is given twice", o.models[i]);
    }
  }
  const bool scoring = !o.objective.text.empty() || !o.objective.tasks.empty();
  if (o.greedy && !scoring)
    fail("soup --greedy: say what the soup is scored on: --tasks FILE.jsonl and/or --text FILE");
  if (o.out.empty()) fail("-o OUT: the output path is empty; give the folder to write");
  eval::Objective objective;
  if (scoring) objective = load_objective(o.objective, "soup");
  const search::CandidateOptions co = candidate_options(o.objective);
  // The whole soup is planned (and its output path checked) before any scoring: models that
  // cannot be averaged fail now.
  {
    const auto recipe =
        exec::build_recipe(config::parse_config_documents(soup_config(o.models), "soup"),
                           search::candidate_plan_options(co), {});
    exec::check_output_path(recipe.final_plan(), o.out, o.overwrite);
  }
  const bool chatty = !o.objective.quiet && !o.json;
  ScoreProgress progress(!chatty);
  InterruptibleScope interruptible;
  std::vector<ScoredPoint> ingredients;
  std::vector<Step> steps;
  std::vector<std::string> chosen = o.models;
  if (scoring) {
    for (const auto& m : o.models) {
      if (chatty) fmt::print(stderr, "scoring {}\n", printable(m));
      ingredients.push_back(score_model_path(m, objective, o.objective, progress));
    }
  }
  if (o.greedy) {
    std::vector<size_t> order(o.models.size());
    std::iota(order.begin(), order.end(), 0);
    // Best first; ties keep the order given (a stable sort), so the result is reproducible.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return ingredients[a].objective > ingredients[b].objective;
    });
    chosen = {o.models[order[0]]};
    double best = ingredients[order[0]].objective;
    steps.push_back({o.models[order[0]], chosen, ingredients[order[0]], true});
    for (size_t k = 1; k < order.size(); ++k) {
      std::vector<std::string> trial = chosen;
      trial.push_back(o.models[order[k]]);
      const std::string label = fmt::format("soup of {}", fmt::join(trial, " + "));
      if (chatty) fmt::print(stderr, "trying {}\n", printable(label));
      Step s{o.models[order[k]], trial,
             score_config(soup_config(trial), label, objective, o.objective, progress), false};
      // Wortsman et al.: keep the ingredient when the soup does not get worse.
      if (s.point.objective >= best) {
        s.kept = true;
        best = s.point.objective;
        chosen = trial;
      }
      steps.push_back(std::move(s));
    }
  } else if (scoring) {
    const std::string label = fmt::format("soup of {}", fmt::join(chosen, " + "));
    if (chatty) fmt::print(stderr, "scoring the {}\n", printable(label));
    steps.push_back(
        {"", chosen, score_config(soup_config(chosen), label, objective, o.objective, progress)});
  }

  // The record: printed, and kept as comments at the head of the output's mergekit_config.yml.
  const char* metric = objective.tasks.empty() ? "perplexity" : "mean score";
  auto shown = [&](double v) { return objective.tasks.empty() ? -v : v; };
  std::string record = fmt::format("# smelt soup{}: {} of {} models\n", o.greedy ? " --greedy" : "",
                                   chosen.size(), o.models.size());
  for (const auto& p : ingredients)
    record += fmt::format("#   ingredient {}: {} {:.4f}\n", p.label, metric, shown(p.objective));
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    record += o.greedy
                  ? fmt::format("#   step {}: {} {} → {} {:.4f}\n", i + 1,
                                i == 0   ? "start with"
                                : s.kept ? "add"
                                         : "skip",
                                s.tried, metric, shown(s.point.objective))
                  : fmt::format("#   uniform soup: {} {:.4f}\n", metric, shown(s.point.objective));
  }
  const std::string config_text = record + soup_config(chosen);
  if (o.json) {
    nlohmann::ordered_json j;
    j["greedy"] = o.greedy;
    j["chosen"] = chosen;
    j["ingredients"] = nlohmann::ordered_json::array();
    for (const auto& p : ingredients)
      j["ingredients"].push_back({{"model", p.label},
                                  {"objective", p.objective},
                                  {"scores", eval::scores_to_json(p.scores, objective)}});
    j["steps"] = nlohmann::ordered_json::array();
    for (const auto& s : steps)
      j["steps"].push_back({{"tried", s.tried},
                            {"soup", s.soup},
                            {"kept", s.kept},
                            {"objective", s.point.objective},
                            {"scores", eval::scores_to_json(s.point.scores, objective)}});
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } else if (scoring) {
    std::vector<ScoredPoint> rows = ingredients;
    for (size_t i = 0; i < steps.size(); ++i) {
      rows.push_back(steps[i].point);
      if (o.greedy) {
        rows.back().label = fmt::format("step {}: {} {}", i + 1,
                                        i == 0          ? "start with"
                                        : steps[i].kept ? "add"
                                                        : "skip",
                                        steps[i].tried);
      }
    }
    print_points({}, rows, objective);
    fmt::print("soup: {}\n", fmt::join(chosen, " + "));
  }

  // Write the chosen soup like `smelt merge` would.
  exec::MergeOptions mo;
  mo.exec.threads = co.threads;
  mo.exec.seed = co.seed;
  mo.exec.max_memory = co.max_memory;
  mo.overwrite = o.overwrite;
  mo.config_text = config_text;
  mo.on_note = [&](const std::string& text) {
    if (!o.objective.quiet) fmt::print(stderr, "note: {}\n", text);
  };
  plan::PlanOptions po = search::candidate_plan_options(co);
  const auto recipe =
      exec::build_recipe(config::parse_config_documents(soup_config(chosen), "soup"), po, mo.exec);
  ProgressReporter bar(o.objective.quiet || o.json);
  exec::Progress last;
  mo.exec.on_progress = [&](const exec::Progress& pr) {
    last = pr;
    bar.update(pr);
  };
  exec::run_merge(recipe.final_plan(), o.out, mo);
  bar.finish(last);
  if (!o.objective.quiet && !o.json) fmt::print(stderr, "wrote {}\n", o.out);
}

}  // namespace

void add_soup(CLI::App& app) {
  auto o = std::make_shared<SoupOptions>();
  CLI::App* cmd = app.add_subcommand(
      "soup",
      "Model soups: the uniform soup averages every model; --greedy ranks them by their score\n"
      "and adds each one only if the soup's score does not drop (Wortsman et al. 2022). Trial\n"
      "soups are merged into memory; the chosen soup is written to OUT, its steps recorded at\n"
      "the head of OUT/mergekit_config.yml. Score on validation data, not on your test set.\n"
      "Examples:\n"
      "  smelt soup ft-a ft-b ft-c -o soup\n"
      "  smelt soup ft-a ft-b ft-c -o soup --greedy --tasks val.jsonl\n"
      "  smelt soup run/ckpt-* -o soup --greedy --text heldout.txt --json");
  cmd->add_option("models", o->models, "the fine-tunes to average (same architecture)")
      ->required()
      ->expected(1, -1);
  cmd->add_option("-o,--out", o->out, "the output folder")->required();
  cmd->add_flag("--greedy", o->greedy, "greedy soup (needs --tasks or --text)");
  add_objective_flags(cmd, o->objective);
  cmd->add_flag("--json", o->json, "machine-readable record on stdout");
  cmd->add_flag("--overwrite", o->overwrite, "replace an existing output folder of model files");
  cmd->callback([o] { run(*o); });
}

}  // namespace smelt::cli
