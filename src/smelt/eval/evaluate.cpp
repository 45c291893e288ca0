#include "smelt/eval/evaluate.h"

#include <algorithm>
#include <fstream>
#include <iterator>

#include "smelt/error.h"

namespace smelt::eval {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--text {}: cannot read this file", path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) fail("--text {}: read error", path);
  if (s.find_first_not_of(" \t\r\n") == std::string::npos)
    fail("--text {}: the file is empty", path);
  return s;
}

double mean_task_score(const ModelScores& s, const Objective& o) {
  double sum = 0, weights = 0;
  for (size_t i = 0; i < s.tasks.size(); ++i) {
    const double w = i < o.weights.size() ? o.weights[i] : 1.0;
    sum += w * s.tasks[i].score();
    weights += w;
  }
  return weights > 0 ? sum / weights : 0.0;
}

double objective_value(const ModelScores& s, const Objective& o) {
  if (!o.tasks.empty()) return mean_task_score(s, o);
  if (s.ppl && s.ppl->tokens) return -s.ppl->ppl();
  return 0.0;
}

ModelScores evaluate(EvalModel& m, const Objective& o, const ScoreObserver& observer) {
  ModelScores s;
  s.label = m.label;
  const int train_ctx = m.model->info().n_ctx_train;
  auto keep_going = [&] { return !observer.keep_going || observer.keep_going(); };
  auto update = [&](const std::string& what, size_t done, size_t total, size_t tokens) {
    if (observer.update) observer.update(what, done, total, tokens);
  };
  auto clear = [&] {
    if (observer.clear) observer.clear();
  };
  if (!o.text.empty()) {
    int n_ctx = o.ctx ? o.ctx : 512;
    if (!o.ctx && train_ctx > 0 && train_ctx < n_ctx) n_ctx = train_ctx;
    auto lm = m.model->new_session(n_ctx);
    std::vector<int32_t> tokens;
    if (m.bos) tokens.push_back(*m.bos);
    const auto ids = m.tokenizer->encode(o.text, {.add_special_tokens = false}).ids;
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    PerplexityOptions po;
    po.n_ctx = n_ctx;
    po.bos = m.bos;
    po.on_chunk = [&](size_t done, size_t total, size_t scored) {
      update(m.label + " perplexity: chunk", done, total, scored);
      return keep_going();
    };
    po.bytes_of = [&](const std::vector<int32_t>& scored) -> uint64_t {
      return m.tokenizer->decode(scored).size();
    };
    s.ppl = perplexity(*lm, tokens, po);
    clear();
    if (s.ppl->chunks < s.ppl->chunks_total) s.complete = false;
  }
  if (!o.tasks.empty() && s.complete) {
    const int n_ctx = o.ctx ? o.ctx : (train_ctx > 0 ? std::min(train_ctx, 2048) : 2048);
    auto lm = m.model->new_session(n_ctx);
    Scorer scorer{.lm = lm.get(),
                  .tokenizer = m.tokenizer.get(),
                  .eos = m.eos,
                  .max_new_tokens = o.max_gen_tokens};
    for (const auto& t : o.tasks) {
      s.tasks.push_back(score_task(scorer, t, o.limit, [&](size_t done, size_t total, size_t tok) {
        update(m.label + " " + t.name + ":", done, total, tok);
        return keep_going();
      }));
      clear();
      if (!s.tasks.back().complete || !keep_going()) {
        s.complete = false;
        break;
      }
    }
  }
  return s;
}

nlohmann::ordered_json scores_to_json(const ModelScores& s, const Objective& o) {
  nlohmann::ordered_json j;
  j["model"] = s.label;
  if (s.ppl) {
    const auto& p = *s.ppl;
    j["perplexity"] = {{"ppl", p.ppl()},
                       {"ppl_stderr", p.ppl_stderr()},
                       {"bits_per_byte", p.bits_per_byte()},
                       {"tokens", p.tokens},
                       {"bytes", p.bytes},
                       {"chunks", p.chunks},
                       {"chunks_total", p.chunks_total}};
  }
  nlohmann::ordered_json tasks = nlohmann::ordered_json::object();
  for (const auto& t : s.tasks) {
    nlohmann::ordered_json r = {{"score", t.score()}, {"stderr", t.stderr_()}, {"lines", t.lines}};
    if (t.generation) r["exact_match"] = t.exact_match_rate();
    if (t.lines > t.generation) {
      r["acc"] = t.acc_rate();
      r["acc_norm"] = t.acc_norm_rate();
    }
    r["complete"] = t.complete;
    tasks[t.name] = r;
  }
  if (!o.tasks.empty()) {
    j["tasks"] = tasks;
    if (s.tasks.size() == o.tasks.size()) j["mean"] = mean_task_score(s, o);
  }
  j["complete"] = s.complete;
  return j;
}

}  // namespace smelt::eval
