#include "smelt/plan/chat_template.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "smelt/config/suggest.h"
#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::plan {
namespace {

// Each format as its authors publish it (docs/config.md, "Chat templates"): the messages with
// their role markers, and the assistant's opening when add_generation_prompt is set.
struct Builtin {
  std::string_view name;
  std::string_view text;
};

constexpr Builtin kBuiltins[] = {
    // Stanford Alpaca: "### Instruction:" / "### Response:" sections, a system text first.
    {"alpaca",
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
     "{{ message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}"
     "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
     "{% elif message['role'] == 'assistant' %}"
     "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
     "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"},
    // ChatML (OpenAI): <|im_start|>role\ncontent<|im_end|>\n.
    {"chatml",
     "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
     "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
     "{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    // Llama 3: <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>, BOS first.
    {"llama3",
     "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
     "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
     "{% endif %}"},
    // Mistral instruct: [INST] user [/INST] assistant</s>, BOS first.
    {"mistral",
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
     "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
     "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"},
    // EXAONE 3: [|role|]content, [|endofturn|] after system and assistant turns.
    {"exaone",
     "{% for message in messages %}{% if message['role'] == 'system' %}"
     "{{ '[|system|]' + message['content'] + '[|endofturn|]\\n' }}"
     "{% elif message['role'] == 'user' %}{{ '[|user|]' + message['content'] + '\\n' }}"
     "{% elif message['role'] == 'assistant' %}"
     "{{ '[|assistant|]' + message['content'] + '[|endofturn|]\\n' }}{% endif %}{% endfor %}"
     "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"},
};

std::string position(std::string_view text, size_t at) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < at && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return fmt::format("line {}, column {}", line, col);
}

// The first word of a {% %} tag's body (after '-'/'+' whitespace control and spaces).
std::string tag_word(std::string_view body, std::string_view* rest) {
  size_t i = 0;
  while (i < body.size() && (body[i] == '-' || body[i] == '+' || body[i] == ' ' ||
                             body[i] == '\t' || body[i] == '\n' || body[i] == '\r'))
    ++i;
  size_t j = i;
  while (j < body.size() && (std::isalnum(static_cast<unsigned char>(body[j])) || body[j] == '_'))
    ++j;
  *rest = body.substr(j);
  return std::string(body.substr(i, j - i));
}

}  // namespace

std::optional<std::string> builtin_chat_template(std::string_view name) {
  for (const Builtin& b : kBuiltins) {
    if (b.name == name) return std::string(b.text);
  }
  return std::nullopt;
}

std::vector<std::string> builtin_chat_template_names() {
  std::vector<std::string> names;
  for (const Builtin& b : kBuiltins) names.emplace_back(b.name);
  return names;
}

void check_chat_template(std::string_view text) {
  static const std::map<std::string, std::string> kEnds = {
      {"for", "endfor"},   {"if", "endif"},         {"macro", "endmacro"},
      {"call", "endcall"}, {"filter", "endfilter"}, {"raw", "endraw"},
      {"with", "endwith"}, {"block", "endblock"},   {"generation", "endgeneration"},
      {"set", "endset"}};
  struct Open {
    std::string tag;
    size_t at;
  };
  std::vector<Open> stack;
  size_t i = 0;
  while (i < text.size()) {
    const size_t open = text.find('{', i);
    if (open == std::string_view::npos || open + 1 >= text.size()) break;
    const char kind = text[open + 1];
    if (kind != '{' && kind != '%' && kind != '#') {
      i = open + 1;
      continue;
    }
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t end = text.find(close, open + 2);
    if (end == std::string_view::npos) {
      fail("the '{{{}' at {} is never closed by '{}'", kind, position(text, open), close);
    }
    if (kind == '%') {
      std::string_view rest;
      const std::string word = tag_word(text.substr(open + 2, end - open - 2), &rest);
      const bool in_raw = !stack.empty() && stack.back().tag == "raw";
      if (in_raw && word != "endraw") {
        i = end + 2;
        continue;
      }
      if (word.empty()) fail("an empty tag '{{% %}}' at {}", position(text, open));
      const bool block_set = word == "set" && rest.find('=') == std::string_view::npos;
      if (kEnds.count(word) && (word != "set" || block_set)) {
        stack.push_back({word, open});
      } else if (word.starts_with("end")) {
        if (stack.empty() || kEnds.at(stack.back().tag) != word) {
          fail("'{{% {} %}}' at {} {}", word, position(text, open),
               stack.empty() ? "closes nothing"
                             : fmt::format("does not close the '{{% {} %}}' at {}",
                                           stack.back().tag, position(text, stack.back().at)));
        }
        stack.pop_back();
      } else if (word == "elif" || word == "else") {
        if (stack.empty() ||
            (stack.back().tag != "if" && !(word == "else" && stack.back().tag == "for")))
          fail("'{{% {} %}}' at {} is not inside an if block", word, position(text, open));
      }
    }
    i = end + 2;
  }
  if (!stack.empty()) {
    fail("the '{{% {} %}}' at {} is never closed by '{{% {} %}}'", stack.back().tag,
         position(text, stack.back().at), kEnds.at(stack.back().tag));
  }
}

std::optional<std::string> model_chat_template(const std::filesystem::path& folder) {
  const auto config = folder / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(config, ec)) {
    const auto j = nlohmann::json::parse(io::read_whole_file(config), nullptr, false);
    if (j.is_object() && j.contains("chat_template")) {
      const auto& t = j["chat_template"];
      if (t.is_string()) return t.get<std::string>();
      if (t.is_array()) {
        for (const auto& e : t) {
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
              e["template"].is_string())
            return e["template"].get<std::string>();
        }
      }
    }
  }
  if (std::filesystem::is_regular_file(folder / "chat_template.jinja", ec))
    return io::read_whole_file(folder / "chat_template.jinja");
  return std::nullopt;
}

std::optional<std::string> resolve_chat_template(const std::string& setting,
                                                 const std::vector<std::filesystem::path>& models) {
  if (setting == "auto") {
    std::vector<std::pair<std::string, size_t>> counts;  // in first-seen order
    for (const auto& m : models) {
      const auto t = model_chat_template(m);
      if (!t) continue;
      auto it = std::find_if(counts.begin(), counts.end(), [&](auto& c) { return c.first == *t; });
      if (it == counts.end())
        counts.emplace_back(*t, 1);
      else
        ++it->second;
    }
    if (counts.empty()) return std::nullopt;
    const auto best = std::max_element(counts.begin(), counts.end(),
                                       [](auto& a, auto& b) { return a.second < b.second; });
    return best->first;
  }
  if (auto b = builtin_chat_template(setting)) return b;
  // A literal template has Jinja markup; a bare word is a misspelt name.
  if (setting.find("{{") == std::string::npos && setting.find("{%") == std::string::npos) {
    const auto names = builtin_chat_template_names();
    const std::string guess = config::closest_match(setting, names);
    fail("'{}' is neither a built-in template ({}), 'auto', nor a Jinja template{}", setting,
         fmt::join(names, ", "), guess.empty() ? "" : fmt::format("; did you mean '{}'?", guess));
  }
  try {
    check_chat_template(setting);
  } catch (const Error& e) {
    fail("the template is not valid Jinja: {}", e.what());
  }
  return setting;
}

}  // namespace smelt::plan
