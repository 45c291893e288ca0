// Token normalisation and matching between a model's and a donor's vocabularies.
#include "smelt/surgery/token_match.h"

#include <array>
#include <nlohmann/json.hpp>
#include <optional>

#include "smelt/error.h"
#include "smelt/io/file_util.h"

namespace smelt::surgery {
namespace fs = std::filesystem;
namespace {

using json = nlohmann::json;

constexpr const char* kRoles[] = {"bos", "eos", "unk", "pad", "sep", "cls", "mask"};
constexpr std::string_view kGpt2Space = "\xC4\xA0";    // "Ġ"
constexpr std::string_view kSpSpace = "\xE2\x96\x81";  // "▁"

// A special-token entry: "content" or {"content": "content", ...}; "" otherwise.
std::string entry_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

// Reads `<role>_token` entries of one JSON file into `role_to_token` (existing entries kept).
void read_roles_file(const fs::path& path, std::map<std::string, std::string>& role_to_token) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return;
  json j;
  try {
    j = json::parse(io::read_whole_file(path));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({}); fix or remove the file", path.string(), e.what());
  }
  if (!j.is_object()) fail("{}: expected a JSON object", path.string());
  for (const char* role : kRoles) {
    const std::string key = std::string(role) + "_token";
    if (!j.contains(key) || role_to_token.count(role)) continue;
    const std::string content = entry_content(j[key]);
    if (!content.empty()) role_to_token[role] = content;
  }
}

// GPT-2's byte-level alphabet: the code point that stands for each byte.
const std::array<uint32_t, 256>& byte_level_code_points() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Byte offsets where code points begin in `s` (a stray continuation byte counts as one).
std::vector<size_t> code_point_starts(std::string_view s) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80 || i == 0) starts.push_back(i);
  }
  return starts;
}

// The single code point `s` consists of; nullopt when it is not exactly one valid one.
std::optional<uint32_t> single_code_point(std::string_view s) {
  if (s.empty()) return std::nullopt;
  const auto c0 = static_cast<unsigned char>(s[0]);
  size_t n = c0 < 0x80 ? 1 : (c0 >> 5) == 6 ? 2 : (c0 >> 4) == 14 ? 3 : (c0 >> 3) == 30 ? 4 : 0;
  if (n == 0 || s.size() != n) return std::nullopt;
  uint32_t cp = n == 1 ? c0 : n == 2 ? (c0 & 0x1F) : n == 3 ? (c0 & 0x0F) : (c0 & 0x07);
  for (size_t i = 1; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (c & 0x3F);
  }
  return cp;
}

// "<0xNN>" -> NN.
std::optional<uint8_t> byte_token_value(std::string_view s) {
  if (s.size() != 6 || !s.starts_with("<0x") || s[5] != '>') return std::nullopt;
  int v = 0;
  for (char c : s.substr(3, 2)) {
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                     : -1;
    if (d < 0) return std::nullopt;
    v = v * 16 + d;
  }
  return static_cast<uint8_t>(v);
}

// The byte a plain token (text without its tag) stands for: `<0xNN>`, or a one-character token:
// in a byte-level vocabulary the byte its alphabet maps the character to, else ASCII only (a
// character above U+007F is several bytes in UTF-8, not the byte of its code point).
std::optional<uint8_t> byte_of(std::string_view text, const NormalizedVocab& v) {
  if (auto b = byte_token_value(text)) return b;
  const auto cp = single_code_point(text);
  if (!cp) return std::nullopt;
  if (v.byte_level) {
    const auto& table = byte_level_code_points();
    for (uint32_t b = 0; b < 256; ++b) {
      if (table[b] == *cp) return static_cast<uint8_t>(b);
    }
    return std::nullopt;
  }
  if (*cp < 0x80) return static_cast<uint8_t>(*cp);
  return std::nullopt;
}

// Keys under which vocabulary `v` may hold the token for byte `b`.
std::vector<std::string> byte_keys(uint8_t b, const NormalizedVocab& v) {
  std::vector<std::string> keys = {fmt::format("T<0x{:02X}>", b)};
  if (v.byte_level) {
    keys.push_back("T" + utf8(byte_level_code_points()[b]));
  } else if (b < 0x80) {
    keys.push_back("T" + std::string(1, static_cast<char>(b)));
  }
  return keys;
}

bool all_whitespace(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f') return false;
  }
  return true;
}

std::optional<int32_t> find(const NormalizedVocab& v, const std::string& key) {
  auto it = v.ids.find(key);
  if (it == v.ids.end()) return std::nullopt;
  return it->second;
}

// The normalised text key of a donor id (its last key: roles come first).
const std::string& text_key(const std::vector<std::string>& keys) { return keys.back(); }

}  // namespace

std::map<std::string, std::vector<std::string>> read_special_roles(const fs::path& folder) {
  std::map<std::string, std::string> role_to_token;
  read_roles_file(folder / "special_tokens_map.json", role_to_token);
  read_roles_file(folder / "tokenizer_config.json", role_to_token);
  std::map<std::string, std::vector<std::string>> roles;
  for (const char* role : kRoles) {  // kRoles order: a token's roles listed in that order
    auto it = role_to_token.find(role);
    if (it != role_to_token.end()) roles[it->second].push_back(role);
  }
  return roles;
}

std::string token_for_role(const std::map<std::string, std::vector<std::string>>& roles,
                           const std::string& role) {
  for (const auto& [token, rs] : roles) {
    for (const auto& r : rs) {
      if (r == role) return token;
    }
  }
  return "";
}

NormalizedVocab normalize_vocab(const tok::Tokenizer& tokenizer,
                                const std::map<std::string, std::vector<std::string>>& roles,
                                size_t rows) {
  const size_t n = tokenizer.vocab_size();
  std::vector<std::optional<std::string>> tokens(n);
  size_t gpt2 = 0, sp = 0;
  for (size_t id = 0; id < n; ++id) {
    tokens[id] = tokenizer.id_to_token(static_cast<int32_t>(id));
    if (!tokens[id]) continue;
    if (tokens[id]->starts_with(kGpt2Space)) ++gpt2;
    if (tokens[id]->starts_with(kSpSpace)) ++sp;
  }
  NormalizedVocab v;
  v.word_start = std::string(sp > gpt2 ? kSpSpace : kGpt2Space);
  v.byte_level = !(sp > gpt2);
  v.keys.resize(n);
  for (size_t id = 0; id < n && id < rows; ++id) {
    if (!tokens[id]) continue;
    const std::string& t = *tokens[id];
    std::vector<std::string>& keys = v.keys[id];
    if (auto it = roles.find(t); it != roles.end()) {
      for (const auto& r : it->second) keys.push_back("S" + r);
    }
    if (t.starts_with(v.word_start)) {
      keys.push_back("W" + t.substr(v.word_start.size()));
    } else {
      keys.push_back("T" + t);
    }
    for (const auto& k : keys) v.ids.emplace(k, static_cast<int32_t>(id));
  }
  return v;
}

std::vector<Match> match_tokens(const NormalizedVocab& model, const NormalizedVocab& donor,
                                const MatchOptions& options) {
  std::vector<Match> out(donor.size());
  for (size_t id = 0; id < donor.size(); ++id) {
    const std::vector<std::string>& keys = donor.keys[id];
    if (keys.empty()) continue;  // kNone
    Match& m = out[id];
    for (const auto& k : keys) {
      if (auto mid = find(model, k)) {
        m = {MatchKind::kExact, *mid};
        break;
      }
    }
    if (m.kind == MatchKind::kExact) continue;
    const std::string& key = text_key(keys);
    const bool special = keys.size() > 1;  // has a role: no byte or prefix matches
    if (options.byte_match && !special && key[0] == 'T') {
      if (auto b = byte_of(std::string_view(key).substr(1), donor)) {
        for (const auto& k : byte_keys(*b, model)) {
          if (auto mid = find(model, k)) {
            m = {MatchKind::kByte, *mid};
            break;
          }
        }
      }
      if (m.kind == MatchKind::kByte) continue;
    }
    // Byte tokens have no meaningful prefixes ("<0x41>" is not a kind of "<").
    if (options.prefix_match && !special && !byte_token_value(std::string_view(key).substr(1))) {
      const std::string_view text = std::string_view(key).substr(1);
      const std::vector<size_t> starts = code_point_starts(text);
      for (size_t i = starts.size(); i-- > 1;) {
        const std::string_view prefix = text.substr(0, starts[i]);
        if (all_whitespace(prefix)) break;
        if (auto mid = find(model, key.substr(0, 1) + std::string(prefix))) {
          m = {MatchKind::kPrefix, *mid};
          break;
        }
      }
      if (m.kind == MatchKind::kPrefix) continue;
    }
    m = {MatchKind::kNew, -1};
  }
  return out;
}

MatchCounts count_matches(const std::vector<Match>& matches) {
  MatchCounts c;
  for (const Match& m : matches) {
    switch (m.kind) {
      case MatchKind::kExact:
        ++c.exact;
        break;
      case MatchKind::kByte:
        ++c.byte;
        break;
      case MatchKind::kPrefix:
        ++c.prefix;
        break;
      case MatchKind::kNew:
        ++c.approximated;
        break;
      case MatchKind::kNone:
        ++c.none;
        break;
    }
  }
  return c;
}

}  // namespace smelt::surgery
