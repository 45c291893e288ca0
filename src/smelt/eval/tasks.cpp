#include "smelt/eval/tasks.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "smelt/error.h"
#include "smelt/eval/log_softmax.h"

namespace smelt::eval {
namespace {

using nlohmann::json;

// Python str length: code points (continuation bytes 10xxxxxx are not counted).
size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string get_string(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) fail("{}: missing \"{}\"", where, key);
  if (!it->is_string()) fail("{}: \"{}\" must be a string", where, key);
  return it->get<std::string>();
}

TaskLine parse_line(const json& j, const std::string& where, size_t number) {
  if (!j.is_object()) fail("{}: a task line must be a JSON object", where);
  TaskLine t;
  t.line = number;
  t.prompt = get_string(j, "prompt", where);
  const bool gen = j.contains("answer");
  const bool mc = j.contains("choices");
  if (gen == mc) {
    fail(
        "{}: a line needs either \"answer\" (scored by generation) or \"choices\" and \"label\" "
        "(scored by log-likelihood), not {}",
        where, gen ? "both" : "neither");
  }
  if (gen) {
    t.answer = get_string(j, "answer", where);
    t.stop = {"\n"};
    if (const auto it = j.find("stop"); it != j.end()) {
      t.stop.clear();
      if (it->is_string()) {
        t.stop.push_back(it->get<std::string>());
      } else if (it->is_array()) {
        for (const auto& s : *it) {
          if (!s.is_string()) fail("{}: \"stop\" must be a string or a list of strings", where);
          t.stop.push_back(s.get<std::string>());
        }
      } else {
        fail("{}: \"stop\" must be a string or a list of strings", where);
      }
    }
    if (const auto it = j.find("max_tokens"); it != j.end()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > 1'000'000)
        fail("{}: \"max_tokens\" must be a positive integer", where);
      t.max_tokens = static_cast<int>(it->get<int64_t>());
    }
    return t;
  }
  const json& choices = j["choices"];
  if (!choices.is_array() || choices.size() < 2)
    fail("{}: \"choices\" must be a list of at least two strings", where);
  for (const auto& c : choices) {
    if (!c.is_string()) fail("{}: \"choices\" must be a list of strings", where);
    t.choices.push_back(c.get<std::string>());
    if (t.choices.back().empty()) {
      fail("{}: choice {} is empty (acc_norm divides by its length)", where, t.choices.size() - 1);
    }
  }
  const auto label = j.find("label");
  if (label == j.end()) fail("{}: missing \"label\" (the index of the correct choice)", where);
  if (!label->is_number_integer()) fail("{}: \"label\" must be an integer", where);
  const int64_t l = label->get<int64_t>();
  if (l < 0 || l >= static_cast<int64_t>(t.choices.size())) {
    fail("{}: \"label\" {} is out of range: there are {} choices (0 to {})", where, l,
         t.choices.size(), t.choices.size() - 1);
  }
  t.label = static_cast<int>(l);
  if (j.contains("delimiter")) t.delimiter = get_string(j, "delimiter", where);
  return t;
}

std::string where(const TaskFile& f, const TaskLine& l) {
  return fmt::format("{}:{}", f.path, l.line);
}

LineResult score_generation(const Scorer& s, const TaskFile& f, const TaskLine& t) {
  const auto prompt = s.tokenizer->encode(t.prompt).ids;
  const int budget = t.max_tokens ? t.max_tokens : s.max_new_tokens;
  if (prompt.empty()) fail("{}: the prompt tokenizes to nothing", where(f, t));
  if (static_cast<int>(prompt.size()) >= s.lm->context_size()) {
    fail("{}: the prompt is {} tokens, more than the context of {} can continue (raise --ctx)",
         where(f, t), prompt.size(), s.lm->context_size());
  }
  LineResult r;
  std::vector<float> logits;
  s.lm->truncate(0);
  s.lm->decode(prompt, 1, logits);
  r.tokens += prompt.size();
  const size_t vocab = static_cast<size_t>(s.lm->vocab_size());
  std::vector<int32_t> generated;
  std::string text;
  for (int n = 0; n < budget; ++n) {
    const int32_t next = argmax(logits.data(), vocab);
    if (std::find(s.eos.begin(), s.eos.end(), next) != s.eos.end()) break;
    generated.push_back(next);
    text = s.tokenizer->decode(generated, {.skip_special_tokens = true});
    bool stopped = false;
    for (const auto& stop : t.stop) {
      if (stop.empty()) continue;
      if (const size_t at = text.find(stop); at != std::string::npos) {
        text.resize(at);
        stopped = true;
      }
    }
    if (stopped || s.lm->n_past() >= s.lm->context_size()) break;
    s.lm->decode(std::span<const int32_t>(&generated.back(), 1), 1, logits);
    ++r.tokens;
  }
  r.output = text;
  r.correct = r.correct_norm = text == *t.answer;
  return r;
}

LineResult score_choices(const Scorer& s, const TaskFile& f, const TaskLine& t) {
  // lm-evaluation-harness: trailing whitespace of the context moves to the continuation; the
  // context is encoded alone, the continuation is what encoding context + continuation adds.
  std::string ctx = t.prompt;
  std::string moved;
  while (!ctx.empty() && is_space(ctx.back()))
    moved.insert(moved.begin(), ctx.back()), ctx.pop_back();
  std::vector<int32_t> ctx_ids = s.tokenizer->encode(ctx).ids;
  const bool empty_ctx = ctx.empty();
  if (ctx_ids.empty())
    fail("{}: the prompt tokenizes to nothing and the model has no BOS", where(f, t));
  LineResult r;
  const size_t vocab = static_cast<size_t>(s.lm->vocab_size());
  std::vector<float> ctx_logits, logits;
  s.lm->truncate(0);
  if (static_cast<int>(ctx_ids.size()) > s.lm->context_size()) {
    fail("{}: the prompt is {} tokens, more than the context of {} (raise --ctx)", where(f, t),
         ctx_ids.size(), s.lm->context_size());
  }
  s.lm->decode(ctx_ids, 1, ctx_logits);
  r.tokens += ctx_ids.size();
  for (size_t c = 0; c < t.choices.size(); ++c) {
    const std::string cont = moved + t.delimiter + t.choices[c];
    std::vector<int32_t> cont_ids;
    if (empty_ctx) {
      cont_ids = s.tokenizer->encode(cont, {.add_special_tokens = false}).ids;
    } else {
      const auto whole = s.tokenizer->encode(ctx + cont).ids;
      if (whole.size() > ctx_ids.size())
        cont_ids.assign(whole.begin() + static_cast<std::ptrdiff_t>(ctx_ids.size()), whole.end());
    }
    if (ctx_ids.size() + cont_ids.size() > static_cast<size_t>(s.lm->context_size()) + 1) {
      fail("{}: prompt and choice {} take {} tokens, more than the context of {} (raise --ctx)",
           where(f, t), c, ctx_ids.size() + cont_ids.size(), s.lm->context_size());
    }
    double ll = 0;
    if (!cont_ids.empty()) {
      s.lm->truncate(static_cast<int>(ctx_ids.size()));
      const std::vector<int32_t> in(cont_ids.begin(), cont_ids.end() - 1);
      if (!in.empty()) s.lm->decode(in, static_cast<int>(in.size()), logits);
      r.tokens += in.size();
      for (size_t k = 0; k < cont_ids.size(); ++k) {
        const float* row = k == 0 ? ctx_logits.data() : logits.data() + (k - 1) * vocab;
        ll += static_cast<double>(row[cont_ids[k]]) - log_sum_exp(row, vocab);
      }
    }
    r.loglikelihoods.push_back(ll);
  }
  size_t best = 0, best_norm = 0;
  for (size_t c = 1; c < t.choices.size(); ++c) {
    if (r.loglikelihoods[c] > r.loglikelihoods[best]) best = c;
    const auto norm = [&](size_t i) {
      return r.loglikelihoods[i] / static_cast<double>(code_points(t.choices[i]));
    };
    if (norm(c) > norm(best_norm)) best_norm = c;
  }
  r.correct = static_cast<int>(best) == t.label;
  r.correct_norm = static_cast<int>(best_norm) == t.label;
  return r;
}

}  // namespace

TaskFile load_task_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read this task file", path);
  TaskFile f;
  f.path = path;
  f.name = std::filesystem::path(path).filename().string();
  if (f.name.size() > 6 && f.name.ends_with(".jsonl")) f.name.resize(f.name.size() - 6);
  std::string text;
  size_t number = 0;
  while (std::getline(in, text)) {
    ++number;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string at = fmt::format("{}:{}", path, number);
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", at, e.what());
    }
    f.lines.push_back(parse_line(j, at, number));
  }
  if (in.bad()) fail("{}: read error", path);
  if (f.lines.empty()) fail("{}: the task file has no lines", path);
  return f;
}

LineResult score_line(const Scorer& s, const TaskFile& file, const TaskLine& line) {
  return line.generation() ? score_generation(s, file, line) : score_choices(s, file, line);
}

double TaskResult::score() const {
  return lines ? static_cast<double>(correct) / static_cast<double>(lines) : 0.0;
}
double TaskResult::stderr_() const {
  if (lines < 2) return 0.0;
  const double p = score();
  return std::sqrt(p * (1 - p) / static_cast<double>(lines - 1));
}
double TaskResult::acc_rate() const {
  const size_t mc = lines - generation;
  return mc ? static_cast<double>(acc) / static_cast<double>(mc) : 0.0;
}
double TaskResult::acc_norm_rate() const {
  const size_t mc = lines - generation;
  return mc ? static_cast<double>(acc_norm) / static_cast<double>(mc) : 0.0;
}
double TaskResult::exact_match_rate() const {
  return generation ? static_cast<double>(exact_match) / static_cast<double>(generation) : 0.0;
}

TaskResult score_task(const Scorer& s, const TaskFile& file, size_t limit,
                      const std::function<bool(size_t, size_t, size_t)>& on_line) {
  TaskResult r;
  r.name = file.name;
  const size_t n = limit ? std::min(limit, file.lines.size()) : file.lines.size();
  for (size_t i = 0; i < n; ++i) {
    const TaskLine& line = file.lines[i];
    const LineResult lr = score_line(s, file, line);
    ++r.lines;
    r.tokens += lr.tokens;
    if (line.generation()) {
      ++r.generation;
      r.exact_match += lr.correct;
    } else {
      r.acc += lr.correct;
      r.acc_norm += lr.correct_norm;
    }
    r.correct += lr.correct;
    if (on_line && !on_line(r.lines, n, r.tokens) && r.lines < n) {
      r.complete = false;
      break;
    }
  }
  return r;
}

}  // namespace smelt::eval
