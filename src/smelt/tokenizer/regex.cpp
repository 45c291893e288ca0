// PCRE2 wrapper (regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "smelt/tokenizer/regex.h"

#include <pcre2.h>

#include "smelt/error.h"
#include "smelt/tokenizer/unicode.h"

namespace smelt::tok {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

namespace {
// One match-data block per thread, grown to the largest pattern seen.
struct MatchData {
  pcre2_match_data* data = nullptr;
  ~MatchData() {
    if (data) pcre2_match_data_free(data);
  }
};
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where)
    : pattern_(pattern), impl_(std::make_unique<Impl>()) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    fail("{}: regex {:?} does not compile: {} at offset {}", where, pattern,
         reinterpret_cast<const char*>(message), offset);
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(std::string_view text, Ranges& out) const {
  thread_local MatchData md;
  if (!md.data) md.data = pcre2_match_data_create(32, nullptr);
  uint32_t pairs = 0;
  pcre2_pattern_info(impl_->code, PCRE2_INFO_CAPTURECOUNT, &pairs);
  if (pcre2_get_ovector_count(md.data) < pairs + 1) {
    pcre2_match_data_free(md.data);
    md.data = pcre2_match_data_create(pairs + 1, nullptr);
  }
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), start, 0, md.data,
                                          nullptr)
                        : pcre2_match(impl_->code, subject, text.size(), start, PCRE2_NO_UTF_CHECK,
                                      md.data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      fail("tokenizer: regex {:?} failed while matching: {}", pattern_,
           reinterpret_cast<const char*>(message));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
    size_t b = ov[0], e = ov[1];
    if (e < b) e = b;  // \K can report end before start; treat as empty
    out.emplace_back(b, e);
    if (e > b) {
      start = e;
    } else {
      if (b >= text.size()) return;
      start = b + utf8_length(static_cast<unsigned char>(text[b]));
    }
  }
}

std::string Regex::escape(std::string_view literal) {
  std::string out;
  out.reserve(literal.size() * 2);
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-#/ ").find(c) != std::string_view::npos) {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace smelt::tok
