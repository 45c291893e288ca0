// `chat_template:` of a merge config (docs/config.md, "Chat templates"): `auto` (the most common
// template among the input models), a built-in name (alpaca, chatml, llama3, mistral, exaone) or
// a literal Jinja template, resolved to the template text the output's tokenizer_config.json
// (and a GGUF output's tokenizer.chat_template) gets.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smelt::plan {

// The built-in template of `name`, or nullopt.
std::optional<std::string> builtin_chat_template(std::string_view name);
std::vector<std::string> builtin_chat_template_names();

// Checks the Jinja structure of a template: every {{ }}, {% %} and {# #} closed, block tags
// (for, if, macro, call, filter, set without '=', raw, with, generation, block) properly nested
// and closed, elif/else only inside if (else also in for). Throws smelt::Error saying what is
// wrong and where (line and column).
void check_chat_template(std::string_view text);

// The chat template a model folder carries: tokenizer_config.json's "chat_template" (a string,
// or the "default" entry of a list of named templates), else chat_template.jinja; nullopt when
// it has none.
std::optional<std::string> model_chat_template(const std::filesystem::path& folder);

// Resolves a `chat_template:` setting. `auto` takes the template most of the models carry (ties:
// the first in the given order) and returns nullopt when none carries one. A literal template is
// checked with check_chat_template. Throws smelt::Error naming what is wrong (without the YAML
// path: the caller adds it).
std::optional<std::string> resolve_chat_template(const std::string& setting,
                                                 const std::vector<std::filesystem::path>& models);

}  // namespace smelt::plan
