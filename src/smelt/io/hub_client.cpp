// Hugging Face Hub client: model info, file metadata (HEAD), resumable verified downloads into
// the standard HF cache layout (docs/hub.md).
#include "smelt/io/hub_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <thread>

#include "smelt/error.h"
#include "smelt/io/lora_adapter.h"
#include "smelt/io/lora_file.h"
#include "smelt/io/model_ref.h"
#include "smelt/io/safetensors.h"

namespace smelt::io {
namespace fs = std::filesystem;
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, s.find_first_not_of(ws));
  s.erase(s.find_last_not_of(ws) + 1);
  return s;
}

long env_seconds(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long s = std::strtol(v, &end, 10);
  if (*end != '\0' || s <= 0) fail("{}={}: expected a whole number of seconds", name, v);
  return s;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "scheme://host[:port]" of a URL, lowercased: what decides whether the token may be sent.
std::string origin_of(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  const size_t path = url.find_first_of("/?#", scheme + 3);
  return lower(url.substr(0, path));
}

bool is_hex(const std::string& s, size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

void init_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) fail("libcurl failed to initialise");
  });
}

// One HTTP exchange. Headers are those of the last response of a redirect chain, names
// lowercased. The body of a 200/206 reply goes to `sink` when set (returning false aborts the
// transfer); other bodies (and every body without a sink) are kept in `body`, up to 1 MB.
struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::string token;  // sent as a Bearer token only to `token_origin`
  std::string token_origin;
  std::string range;  // "N-" or "a-b"
  bool follow = false;
  long connect_timeout_s = 10;
  long total_timeout_s = 0;  // 0: none (downloads use the low-speed limit instead)
  long low_speed_s = 0;
  std::function<bool(const char*, size_t, long status)> sink;
  uint64_t max_body = 1u << 20;  // bytes kept in HttpReply::body
};

struct HttpReply {
  CURLcode curl = CURLE_OK;
  std::string curl_message;
  long status = 0;
  std::map<std::string, std::string> headers;
  std::string body;
  std::string final_url;
  bool sink_refused = false;

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

struct CurlState {
  CURL* handle = nullptr;
  HttpReply* reply = nullptr;
  const HttpRequest* request = nullptr;
};

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* st = static_cast<CurlState*>(user);
  const size_t n = size * count;
  std::string line(data, n);
  if (line.rfind("HTTP/", 0) == 0) {
    st->reply->headers.clear();  // a new response of a redirect chain
    return n;
  }
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    st->reply->headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
  }
  return n;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* st = static_cast<CurlState*>(user);
  const size_t n = size * count;
  long status = 0;
  curl_easy_getinfo(st->handle, CURLINFO_RESPONSE_CODE, &status);
  if (st->request->sink && (status == 200 || status == 206)) {
    if (!st->request->sink(data, n, status)) {
      st->reply->sink_refused = true;
      return 0;
    }
    return n;
  }
  if (st->reply->body.size() < st->request->max_body) {
    st->reply->body.append(data,
                           std::min<uint64_t>(n, st->request->max_body - st->reply->body.size()));
  }
  return n;
}

HttpReply perform(const HttpRequest& req) {
  init_curl_once();
  HttpReply reply;
  std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
  if (!h) fail("libcurl could not create a handle");
  CurlState st{h.get(), &reply, &req};
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Accept-Encoding: identity");
  if (!req.token.empty() && origin_of(req.url) == req.token_origin) {
    headers = curl_slist_append(headers, ("Authorization: Bearer " + req.token).c_str());
  }
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> header_guard(headers, curl_slist_free_all);
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(h.get(), CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(h.get(), CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h.get(), CURLOPT_USERAGENT, "smelt/" SMELT_VERSION);
  curl_easy_setopt(h.get(), CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h.get(), CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h.get(), CURLOPT_HEADERDATA, &st);
  curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(h.get(), CURLOPT_CONNECTTIMEOUT, req.connect_timeout_s);
  if (req.total_timeout_s > 0) curl_easy_setopt(h.get(), CURLOPT_TIMEOUT, req.total_timeout_s);
  if (req.low_speed_s > 0) {
    curl_easy_setopt(h.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h.get(), CURLOPT_LOW_SPEED_TIME, req.low_speed_s);
  }
  // Redirects to another host never carry the token (libcurl drops a custom Authorization header
  // when the host changes, as huggingface_hub does; docs/hub.md).
  curl_easy_setopt(h.get(), CURLOPT_FOLLOWLOCATION, req.follow ? 1L : 0L);
  curl_easy_setopt(h.get(), CURLOPT_MAXREDIRS, 10L);
  if (req.method == "HEAD") curl_easy_setopt(h.get(), CURLOPT_NOBODY, 1L);
  if (!req.range.empty()) curl_easy_setopt(h.get(), CURLOPT_RANGE, req.range.c_str());
  reply.curl = curl_easy_perform(h.get());
  if (reply.curl != CURLE_OK) {
    reply.curl_message = error[0] ? error : curl_easy_strerror(reply.curl);
  }
  curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &reply.status);
  char* final_url = nullptr;
  curl_easy_getinfo(h.get(), CURLINFO_EFFECTIVE_URL, &final_url);
  reply.final_url = final_url ? final_url : req.url;
  return reply;
}

// A transfer error where no HTTP answer came (or it broke off): connection refused, DNS, timeout.
[[noreturn]] void fail_network(const HubSettings& s, const std::string& what, const HttpReply& r) {
  fail(
      "cannot reach the Hugging Face Hub at {} ({}: {}). Check the network or HF_ENDPOINT, or "
      "set HF_HUB_OFFLINE=1 to use only models already in the cache {}",
      s.endpoint, what, r.curl_message, s.cache.string());
}

std::string token_file_hint() {
  const std::string home =
      env_or("HF_HOME", env_or("XDG_CACHE_HOME", env_or("HOME", "~") + "/.cache") + "/huggingface");
  return env_or("HF_TOKEN_PATH", home + "/token");
}

// Turns an HTTP error reply into a message naming the repo, revision or file and what to do
// (docs/hub.md "Errors").
[[noreturn]] void fail_http(const HubSettings& s, const std::string& repo, const std::string& rev,
                            const std::string& file, const HttpReply& r) {
  const std::string code = r.header("x-error-code");
  std::string detail = r.header("x-error-message");
  if (detail.empty()) {
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("error") && j["error"].is_string()) detail = j["error"];
  }
  const std::string why = detail.empty() ? "" : fmt::format(" (Hub says: {})", detail);
  if (code == "RevisionNotFound") {
    fail("revision '{}' of model '{}' not found on {}{}; check the name after '@'", rev, repo,
         s.endpoint, why);
  }
  if (code == "EntryNotFound") {
    fail("file '{}' not found in model '{}' at revision '{}' on {}{}", file, repo, rev, s.endpoint,
         why);
  }
  const std::string set_token = fmt::format(
      "set HF_TOKEN to a Hugging Face access token (https://huggingface.co/settings/tokens), or "
      "save it in {}",
      token_file_hint());
  if (code == "GatedRepo" || r.status == 403) {
    if (s.token.empty()) {
      fail("model '{}' on {} is gated{}: accept its terms on the model page, then {}", repo,
           s.endpoint, why, set_token);
    }
    fail(
        "model '{}' on {} is gated and the token in use has no access (HTTP {}){}: accept its "
        "terms on the model page with the account of that token, or set HF_TOKEN to another one",
        repo, s.endpoint, r.status, why);
  }
  if (r.status == 401) {
    fail(
        "model '{}' not found on {}, or it is private or gated (HTTP 401){}; check the name, or "
        "if you have access {}",
        repo, s.endpoint, why, s.token.empty() ? set_token : "check that HF_TOKEN is valid");
  }
  if (r.status == 404) {
    fail("model '{}' not found on {} (HTTP 404){}; check the repository name", repo, s.endpoint,
         why);
  }
  fail("HTTP {} from {} for model '{}'{}{}", r.status, s.endpoint, repo,
       file.empty() ? "" : fmt::format(" file '{}'", file), why);
}

// What a HEAD on a file's resolve URL tells (docs/hub.md: X-Repo-Commit, X-Linked-Etag or ETag,
// X-Linked-Size or Content-Length, Location).
struct FileMeta {
  std::string etag;
  uint64_t size = 0;
  std::string location;
};

std::string normalize_etag(std::string e) {
  // Python's lstrip("W/") then strip('"') (docs/hub.md §2).
  e.erase(0, e.find_first_not_of("W/"));
  while (!e.empty() && e.front() == '"') e.erase(0, 1);
  while (!e.empty() && e.back() == '"') e.pop_back();
  return e;
}

uint64_t parse_size(const std::string& text, const std::string& what) {
  if (text.empty() || text.size() > 19 ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    fail("{}: the Hub sent no valid size ('{}')", what, text);
  }
  return std::stoull(text);
}

// One file transfer: shared between the worker threads for progress.
struct Progress {
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> total{0};
  std::atomic<int> files_done{0};
  int files_total = 0;
};

class Downloader {
 public:
  Downloader(const HubSettings& s, std::string repo, std::string rev, std::string commit,
             bool quiet)
      : s_(s),
        repo_(std::move(repo)),
        rev_(std::move(rev)),
        commit_(std::move(commit)),
        quiet_(quiet) {
    repo_dir_ = s_.cache / hub_repo_folder(repo_);
    snapshot_ = repo_dir_ / "snapshots" / commit_;
    fs::create_directories(repo_dir_ / "blobs");
    fs::create_directories(snapshot_);
  }

  const fs::path& snapshot() const { return snapshot_; }

  // Bytes [first, last] of a file by a Range GET (redirects followed).
  std::string range(const std::string& file, const FileMeta& meta, uint64_t first,
                    uint64_t last) const {
    HttpRequest req = request("GET", meta.location);
    req.follow = true;
    req.total_timeout_s = std::max(s_.timeout_s, 60L);
    req.range = fmt::format("{}-{}", first, last);
    req.max_body = last - first + 1;
    HttpReply r = perform(req);
    if (r.curl != CURLE_OK) fail_network(s_, "GET " + meta.location, r);
    if (r.status >= 400) fail_http(s_, repo_, rev_, file, r);
    if (r.status == 200) {
      // A server that ignores Range sends the file from its start.
      r.body = r.body.size() > first ? r.body.substr(first) : std::string();
    }
    if (r.body.size() != last - first + 1) {
      fail("{} of model '{}': asked for bytes {}-{}, got {} bytes (HTTP {}) from {}", file, repo_,
           first, last, r.body.size(), r.status, meta.location);
    }
    return r.body;
  }
  uint64_t downloaded() const { return progress_.bytes.load(); }

  // Downloads `files` with s_.threads workers; the first error is rethrown after all stop.
  void download_all(const std::vector<std::string>& files) {
    std::vector<std::string> todo;
    for (const auto& f : files) {
      if (!fs::exists(snapshot_ / f)) todo.push_back(f);  // follows the symlink to the blob
    }
    if (todo.empty()) return;
    progress_.files_total += static_cast<int>(todo.size());
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::exception_ptr first;
    std::mutex first_mutex;
    auto work = [&] {
      for (size_t i = next++; i < todo.size() && !stop; i = next++) {
        try {
          download_file(todo[i]);
        } catch (...) {
          std::lock_guard lock(first_mutex);
          if (!first) first = std::current_exception();
          stop = true;
        }
      }
    };
    const int n = std::max(1, std::min<int>(s_.threads, static_cast<int>(todo.size())));
    std::vector<std::thread> workers;
    for (int t = 0; t < n; ++t) workers.emplace_back(work);
    for (auto& w : workers) w.join();
    end_progress_line();
    if (first) std::rethrow_exception(first);
  }

  std::string resolve_url(const std::string& file) const {
    return fmt::format("{}/{}/resolve/{}/{}", s_.endpoint, repo_, hub_quote(commit_, ""),
                       hub_quote(file, "/"));
  }

  HttpRequest request(const std::string& method, const std::string& url) const {
    HttpRequest r;
    r.method = method;
    r.url = url;
    r.token = s_.token;
    r.token_origin = origin_of(s_.endpoint);
    r.connect_timeout_s = s_.timeout_s;
    return r;
  }

  // HEAD, following only relative redirects (an absolute one is the CDN: its Location is where
  // the GET goes, without the token).
  FileMeta head(const std::string& file) const {
    std::string url = resolve_url(file);
    HttpReply r;
    for (int hop = 0;; ++hop) {
      HttpRequest req = request("HEAD", url);
      req.total_timeout_s = s_.timeout_s;
      r = perform(req);
      if (r.curl != CURLE_OK) fail_network(s_, "HEAD " + url, r);
      const std::string loc = r.header("location");
      if (r.status >= 300 && r.status < 400 && !loc.empty() && loc[0] == '/' &&
          loc.rfind("//", 0) != 0 && hop < 10) {
        url = origin_of(url) + loc;
        continue;
      }
      break;
    }
    if (r.status >= 400) fail_http(s_, repo_, rev_, file, r);
    FileMeta m;
    std::string etag = r.header("x-linked-etag");
    if (etag.empty()) etag = r.header("etag");
    m.etag = normalize_etag(etag);
    static const std::regex safe("^[A-Za-z0-9_-][A-Za-z0-9._-]*$");
    if (!std::regex_match(m.etag, safe)) {
      fail("{} of model '{}': the Hub sent no usable ETag ('{}') from {}", file, repo_, etag,
           s_.endpoint);
    }
    std::string size = r.header("x-linked-size");
    if (size.empty() && !(r.status >= 300 && r.status < 400)) size = r.header("content-length");
    m.size = parse_size(size, fmt::format("{} of model '{}'", file, repo_));
    m.location = r.header("location");
    if (m.location.empty() || !(r.status >= 300 && r.status < 400)) m.location = url;
    if (m.location[0] == '/') m.location = origin_of(url) + m.location;
    return m;
  }

  void download_file(const std::string& file) {
    const FileMeta meta = head(file);
    const fs::path blob = repo_dir_ / "blobs" / meta.etag;
    // One process at a time per blob, as huggingface_hub's .locks/ do.
    const fs::path lock_dir = s_.cache / ".locks" / hub_repo_folder(repo_);
    fs::create_directories(lock_dir);
    const fs::path lock_path = lock_dir / (meta.etag + ".lock");
    const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0)
      fail("{}: cannot create the lock file: {}", lock_path.string(), strerror(errno));
    std::unique_ptr<int, void (*)(int*)> unlock(new int(lock_fd), [](int* fd) {
      ::close(*fd);
      delete fd;
    });
    ::flock(lock_fd, LOCK_EX);
    progress_.total += meta.size;
    if (!fs::exists(blob)) fetch_blob(file, meta, blob);
    link_into_snapshot(file, meta.etag);
    ++progress_.files_done;
    report(file, meta.size);
  }

  // GETs the blob into blob.incomplete (resuming from its length with Range), verifies its size
  // and checksum, and renames it to `blob`.
  void fetch_blob(const std::string& file, const FileMeta& meta, const fs::path& blob) {
    const fs::path part = fs::path(blob.string() + ".incomplete");
    const std::string label = fmt::format("{} of model '{}'", file, repo_);
    if (!fs::exists(part)) {
      // Created up front so that an empty file is a file too.
      std::ofstream touch(part, std::ios::binary);
      if (!touch) fail("{}: cannot create: {}", part.string(), strerror(errno));
    }
    int tries_without_progress = 0;
    for (;;) {
      std::error_code ec;
      uint64_t have = fs::exists(part) ? fs::file_size(part) : 0;
      if (have > meta.size) {
        fs::remove(part, ec);
        have = 0;
      }
      if (have == meta.size) break;
      FILE* out = std::fopen(part.c_str(), "ab");
      if (!out) fail("{}: cannot create: {}", part.string(), strerror(errno));
      uint64_t offset = have;
      int write_errno = 0;
      bool restarted = false;
      HttpRequest req = request("GET", meta.location);
      req.follow = true;
      req.low_speed_s = env_seconds("HF_HUB_DOWNLOAD_TIMEOUT", 10);
      if (offset > 0) req.range = fmt::format("{}-", offset);
      req.sink = [&](const char* data, size_t n, long status) {
        if (status == 200 && have > 0 && !restarted) {
          // The server ignored the Range: start over (docs/hub.md).
          restarted = true;
          if (::ftruncate(fileno(out), 0) != 0) {
            write_errno = errno;
            return false;
          }
          std::fseek(out, 0, SEEK_SET);
          offset = 0;
        }
        if (offset + n > meta.size) {
          write_errno = -1;  // more bytes than announced
          return false;
        }
        if (std::fwrite(data, 1, n, out) != n) {
          write_errno = errno;
          return false;
        }
        offset += n;
        progress_.bytes += n;
        report_maybe();
        return true;
      };
      const HttpReply r = perform(req);
      if (std::fclose(out) != 0 && write_errno == 0) write_errno = errno;
      if (write_errno == -1) {
        fs::remove(part, ec);
        fail("{}: the server sent more than the {} bytes the Hub announced; removed {}", label,
             meta.size, part.string());
      }
      if (write_errno != 0) {
        fail(
            "{}: cannot write {}: {}. The {} bytes downloaded so far are kept there; free disk "
            "space and run again to resume",
            label, part.string(), strerror(write_errno),
            fs::exists(part) ? fs::file_size(part) : 0);
      }
      if (r.status >= 400) fail_http(s_, repo_, rev_, file, r);
      const uint64_t now = fs::exists(part) ? fs::file_size(part) : 0;
      if (now == meta.size) break;
      if (r.curl == CURLE_OK && now < meta.size && r.status != 200 && r.status != 206) {
        fail("{}: unexpected HTTP {} from {}", label, r.status, meta.location);
      }
      // A broken transfer: resume with Range, as long as each try makes progress.
      tries_without_progress = now > have ? 0 : tries_without_progress + 1;
      if (tries_without_progress >= 5) {
        if (r.curl != CURLE_OK) fail_network(s_, "GET " + meta.location, r);
        fail("{}: the download stops at {} of {} bytes; run again to resume from {}", label, now,
             meta.size, part.string());
      }
      if (tries_without_progress > 0) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    verify(label, part, meta);
    fs::rename(part, blob);
    fs::permissions(blob, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                              fs::perms::others_read);
  }

  // sha256 for an LFS etag (64 hex), git blob sha1 for a regular file's (40 hex); other etags are
  // not checksums and only the size is checked (docs/hub.md "Verification").
  void verify(const std::string& label, const fs::path& part, const FileMeta& meta) const {
    const bool sha256 = is_hex(meta.etag, 64);
    const bool sha1 = is_hex(meta.etag, 40);
    if (!sha256 && !sha1) return;
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), sha256 ? EVP_sha256() : EVP_sha1(), nullptr) != 1) {
      fail("OpenSSL could not start a digest");
    }
    if (sha1) {
      const std::string prefix = fmt::format("blob {}", meta.size);
      EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size() + 1);  // with its '\0'
    }
    std::ifstream in(part, std::ios::binary);
    std::vector<char> buf(1 << 20);
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), in.gcount());
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_DigestFinal_ex(ctx.get(), md, &md_len);
    std::string hex;
    for (unsigned int i = 0; i < md_len; ++i) hex += fmt::format("{:02x}", md[i]);
    if (hex != meta.etag) {
      std::error_code ec;
      fs::remove(part, ec);
      fail(
          "{}: checksum mismatch: the downloaded bytes have {} {}, the Hub's ETag says {}. The "
          "corrupt file was removed; run again to download it anew",
          label, sha256 ? "sha256" : "git blob sha1", hex, meta.etag);
    }
  }

  // snapshots/<commit>/<file> -> ../../blobs/<etag> (relative, one more ../ per subfolder).
  void link_into_snapshot(const std::string& file, const std::string& etag) const {
    const fs::path link = snapshot_ / file;
    fs::create_directories(link.parent_path());
    fs::path target = fs::path("../../blobs") / etag;
    for (size_t i = 0; i < file.size(); ++i) {
      if (file[i] == '/') target = fs::path("..") / target;
    }
    std::error_code ec;
    if (fs::is_symlink(link) && fs::read_symlink(link, ec) == target) return;
    fs::remove(link, ec);  // a dangling or stale link
    fs::create_symlink(target, link, ec);
    // Another process (or thread) may have made the same link in between.
    if (ec && !(fs::is_symlink(link) && fs::read_symlink(link) == target)) {
      fail("{}: cannot create the snapshot link to {}: {}", link.string(), target.string(),
           ec.message());
    }
  }

  void report(const std::string& file, uint64_t size) {
    if (quiet_) return;
    std::lock_guard lock(print_mutex_);
    if (isatty(fileno(stderr))) {
      print_line_locked();
    } else {
      fmt::print(stderr, "download {}: {} ({} bytes) [{}/{}]\n", repo_, file, size,
                 progress_.files_done.load(), progress_.files_total);
    }
  }

  void report_maybe() {
    if (quiet_ || !isatty(fileno(stderr))) return;
    std::lock_guard lock(print_mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_print_ < std::chrono::milliseconds(200)) return;
    last_print_ = now;
    print_line_locked();
  }

  void print_line_locked() {
    const double mb = static_cast<double>(progress_.bytes.load()) / 1e6;
    const double total = static_cast<double>(progress_.total.load()) / 1e6;
    fmt::print(stderr, "\rdownload {}: {}/{} files, {:.1f} MB received (of {:.1f} MB started)  ",
               repo_, progress_.files_done.load(), progress_.files_total, mb, total);
    line_open_ = true;
  }

  void end_progress_line() {
    std::lock_guard lock(print_mutex_);
    if (line_open_) fmt::print(stderr, "\n");
    line_open_ = false;
  }

 private:
  const HubSettings& s_;
  std::string repo_, rev_, commit_;
  bool quiet_;
  fs::path repo_dir_, snapshot_;
  Progress progress_;
  std::mutex print_mutex_;
  std::chrono::steady_clock::time_point last_print_{};
  bool line_open_ = false;
};

struct ModelInfo {
  std::string sha;
  std::vector<std::string> files;
};

ModelInfo model_info(const HubSettings& s, const std::string& repo, const std::string& rev) {
  const std::string url =
      fmt::format("{}/api/models/{}/revision/{}", s.endpoint, repo, hub_quote(rev, ""));
  HttpRequest req;
  req.url = url;
  req.token = s.token;
  req.token_origin = origin_of(s.endpoint);
  req.connect_timeout_s = s.timeout_s;
  req.total_timeout_s = std::max(s.timeout_s, 30L);
  req.follow = true;
  const HttpReply r = perform(req);
  if (r.curl != CURLE_OK) fail_network(s, "GET " + url, r);
  if (r.status >= 400) fail_http(s, repo, rev, "", r);
  if (r.status != 200) fail("model '{}': unexpected HTTP {} from {}", repo, r.status, url);
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  ModelInfo info;
  if (j.is_object() && j.contains("sha") && j["sha"].is_string()) info.sha = j["sha"];
  if (!is_hex(info.sha, 40)) {
    fail("model '{}': the model info from {} has no 40-hex commit \"sha\"", repo, url);
  }
  if (j.contains("siblings") && j["siblings"].is_array()) {
    for (const auto& sib : j["siblings"]) {
      if (sib.is_object() && sib.contains("rfilename") && sib["rfilename"].is_string()) {
        info.files.push_back(sib["rfilename"]);
      }
    }
  }
  return info;
}

// A safetensors file of the Hub of which only the header was read (`smelt plan`, docs/hub.md):
// every tensor's name, dtype, shape and offset, but no data.
class RemoteSafetensorsFile : public TensorFile {
 public:
  RemoteSafetensorsFile(fs::path path, uint64_t size, SafetensorsHeader header)
      : path_(std::move(path)), size_(size), header_(std::move(header)) {
    for (size_t i = 0; i < header_.tensors.size(); ++i) by_name_[header_.tensors[i].name] = i;
  }
  const fs::path& path() const override { return path_; }
  const std::vector<TensorInfo>& tensors() const override { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const override { return header_.metadata; }
  uint64_t file_size() const override { return size_; }
  const TensorInfo* find(std::string_view name) const override {
    auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
  }
  void read(const TensorInfo& t, uint64_t, void*, uint64_t) const override {
    fail(
        "{}: tensor '{}' is not downloaded: only the header of this Hub file was read (smelt "
        "plan); `smelt download` or a merge fetches the weights",
        path_.string(), t.name);
  }

 private:
  fs::path path_;
  uint64_t size_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> by_name_;
};

std::atomic<bool> g_headers_only{false};

// Whether a cached snapshot holds weights resolve_model can read: every shard its index names,
// else model.safetensors, pytorch_model.bin or numbered shards. (A headers-only plan leaves a
// snapshot with the index but no shards.)
bool snapshot_has_weights(const fs::path& snap) {
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    const fs::path p = snap / index;
    if (!fs::is_regular_file(p)) continue;
    std::ifstream in(p, std::ios::binary);
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) return false;
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      if (!shard.is_string() || !fs::exists(snap / shard.get<std::string>())) return false;
    }
    return true;
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(snap, ec)) {
    const std::string name = e.path().filename().string();
    if ((name.ends_with(".safetensors") || name.ends_with(".bin")) && fs::exists(e.path())) {
      return true;
    }
  }
  return false;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("{}: cannot read", p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

bool hub_env_true(const char* value) {
  if (!value) return false;
  const std::string v = lower(trim(value));
  return v == "1" || v == "on" || v == "yes" || v == "true";
}

HubSettings HubSettings::from_env() {
  HubSettings s;
  s.endpoint = env_or("HF_ENDPOINT", "https://huggingface.co");
  while (!s.endpoint.empty() && s.endpoint.back() == '/') s.endpoint.pop_back();
  s.token = trim(env_or("HF_TOKEN", env_or("HUGGING_FACE_HUB_TOKEN", "")));
  if (s.token.empty()) {
    std::ifstream in(token_file_hint(), std::ios::binary);
    if (in) s.token = trim(std::string(std::istreambuf_iterator<char>(in), {}));
  }
  s.offline = hub_env_true(std::getenv("HF_HUB_OFFLINE")) ||
              hub_env_true(std::getenv("TRANSFORMERS_OFFLINE"));
  s.cache = hf_hub_cache_dir();
  s.timeout_s = env_seconds("HF_HUB_ETAG_TIMEOUT", 10);
  return s;
}

std::string hub_repo_folder(const std::string& repo_id) {
  std::string folder = "models--" + repo_id;
  for (size_t i = folder.find('/'); i != std::string::npos; i = folder.find('/')) {
    folder.replace(i, 1, "--");
  }
  return folder;
}

std::string hub_quote(const std::string& text, const std::string& keep) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '_' || c == '.' || c == '-' || c == '~' ||
        keep.find(static_cast<char>(c)) != std::string::npos) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::vector<std::string> hub_select_files(const std::vector<std::string>& names) {
  static const std::set<std::string> kSideFiles = {"config.json",
                                                   "generation_config.json",
                                                   "tokenizer.json",
                                                   "tokenizer_config.json",
                                                   "special_tokens_map.json",
                                                   "tokenizer.model",
                                                   "added_tokens.json",
                                                   "vocab.json",
                                                   "merges.txt",
                                                   "vocab.txt",
                                                   "spiece.model",
                                                   "chat_template.json",
                                                   "chat_template.jinja",
                                                   "adapter_config.json"};
  static const std::regex st_shard(R"(^model-\d{5}-of-\d{5}\.safetensors$)");
  static const std::regex bin_shard(R"(^pytorch_model-\d{5}-of-\d{5}\.bin$)");
  const std::set<std::string> have(names.begin(), names.end());
  std::vector<std::string> out;
  for (const auto& n : names) {
    if (kSideFiles.count(n)) out.push_back(n);
  }
  // The same preference order as resolve_model's folder rules (model_ref.cpp).
  auto shards = [&](const std::regex& re) {
    std::vector<std::string> v;
    for (const auto& n : names) {
      if (std::regex_match(n, re)) v.push_back(n);
    }
    return v;
  };
  std::vector<std::string> weights;
  if (have.count("model.safetensors.index.json")) {
    weights = {"model.safetensors.index.json"};
  } else if (have.count("model.safetensors")) {
    weights = {"model.safetensors"};
  } else if (auto s = shards(st_shard); !s.empty()) {
    weights = s;
  } else if (have.count("pytorch_model.bin.index.json")) {
    weights = {"pytorch_model.bin.index.json"};
  } else if (have.count("pytorch_model.bin")) {
    weights = {"pytorch_model.bin"};
  } else if (auto s = shards(bin_shard); !s.empty()) {
    weights = s;
  } else if (have.count("adapter_model.safetensors")) {
    // A PEFT LoRA adapter repo (the LORA part of MODEL+LORA references: docs/lora.md).
    weights = {"adapter_model.safetensors"};
  } else if (have.count("adapter_model.bin")) {
    weights = {"adapter_model.bin"};
  }
  out.insert(out.end(), weights.begin(), weights.end());
  std::sort(out.begin(), out.end());
  return out;
}

HubSnapshot hub_download_model(const HubSettings& s, const std::string& repo_id,
                               const std::string& revision, bool quiet) {
  const std::string rev = revision.empty() ? "main" : revision;
  if (s.offline) {
    fail(
        "model '{}' (revision '{}') is not in the Hugging Face cache {} and HF_HUB_OFFLINE is "
        "set, so smelt does not download it; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) or "
        "download it where the network is reachable",
        repo_id, rev, s.cache.string());
  }
  for (const auto& part : fs::path(rev)) {
    if (part == ".." || part == ".") fail("revision '{}' of model '{}' is not valid", rev, repo_id);
  }
  const ModelInfo info = model_info(s, repo_id, rev);
  std::vector<std::string> files = hub_select_files(info.files);
  const bool has_weights = std::any_of(files.begin(), files.end(), [](const std::string& f) {
    return f.ends_with(".safetensors") || f.ends_with(".bin") || f.ends_with(".index.json");
  });
  if (!has_weights) {
    fail(
        "model '{}' at revision '{}' on {} has no weights smelt reads (model.safetensors[.index."
        "json], model-*-of-*.safetensors, pytorch_model.bin[.index.json], "
        "pytorch_model-*-of-*.bin, or a LoRA adapter's adapter_model.safetensors/.bin) among its "
        "{} files",
        repo_id, rev, s.endpoint, info.files.size());
  }
  Downloader d(s, repo_id, rev, info.sha, quiet);
  d.download_all(files);
  // Shards named by an index, once the index is in the snapshot.
  const std::set<std::string> listed(info.files.begin(), info.files.end());
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (std::find(files.begin(), files.end(), index) == files.end()) continue;
    const fs::path p = d.snapshot() / index;
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : parse_safetensors_index(read_text(p), p.string())) {
      shards.insert(shard);
    }
    for (const auto& shard : shards) {
      if (!listed.count(shard)) {
        fail("{}: names shard '{}', which model '{}' on {} does not have", p.string(), shard,
             repo_id, s.endpoint);
      }
    }
    const std::vector<std::string> v(shards.begin(), shards.end());
    d.download_all(v);
    files.insert(files.end(), v.begin(), v.end());
  }
  // refs/<rev> last: a reference in the cache means its snapshot is complete.
  if (rev != info.sha) {
    const fs::path ref = s.cache / hub_repo_folder(repo_id) / "refs" / rev;
    fs::create_directories(ref.parent_path());
    const fs::path tmp = fs::path(fmt::format("{}.{}.tmp", ref.string(), ::getpid()));
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << info.sha;  // exactly the commit, no newline (docs/hub.md)
      if (!out) fail("{}: cannot write", tmp.string());
    }
    fs::rename(tmp, ref);
  }
  HubSnapshot snap;
  snap.commit = info.sha;
  snap.snapshot = d.snapshot();
  snap.files = files;
  snap.downloaded_bytes = d.downloaded();
  return snap;
}

}  // namespace smelt::io

namespace smelt::io {

void set_hub_headers_only(bool on) { g_headers_only = on; }

std::shared_ptr<Model> hub_open_headers_only(const ModelRef& ref) {
  std::error_code ec;
  if (!ref.lora_path.empty()) {
    // The base's headers, with the adapter (small, so fetched whole) checked against them.
    ModelRef base_ref = ref;
    base_ref.lora_path.clear();
    base_ref.lora_revision.clear();
    const std::shared_ptr<Model> base = hub_open_headers_only(base_ref);
    if (!base) return nullptr;
    ResolvedModel resolved = base->resolved();
    resolved.ref = ref.str();
    resolved.lora_dir = resolve_lora(ref);
    std::shared_ptr<const LoraAdapter> adapter;
    try {
      adapter = LoraAdapter::open(resolved.lora_dir);
    } catch (const Error& e) {
      fail("model '{}': {}", resolved.ref, e.what());
    }
    return apply_lora(base, std::move(adapter), resolved);
  }
  if (!g_headers_only || !looks_like_hub_id(ref.path) || fs::exists(ref.path, ec)) {
    return nullptr;
  }
  const HubSettings s = HubSettings::from_env();
  if (s.offline) return nullptr;  // resolve_model reads the cache or says why it cannot
  const std::string rev = ref.revision.empty() ? "main" : ref.revision;
  // A snapshot already in the cache is read from there.
  const fs::path repo_dir = s.cache / hub_repo_folder(ref.path);
  std::string commit = is_hex(rev, 40) ? rev : "";
  if (commit.empty() && fs::is_regular_file(repo_dir / "refs" / rev)) {
    commit = trim(read_text(repo_dir / "refs" / rev));
  }
  if (!commit.empty() && snapshot_has_weights(repo_dir / "snapshots" / commit)) return nullptr;

  const ModelInfo info = model_info(s, ref.path, rev);
  const std::vector<std::string> files = hub_select_files(info.files);
  std::vector<std::string> small, weights;
  for (const auto& f : files) {
    if (f.ends_with(".bin")) return nullptr;  // PyTorch weights: downloaded by resolve_model
    (f.ends_with(".safetensors") ? weights : small).push_back(f);
  }
  Downloader d(s, ref.path, rev, info.sha, /*quiet=*/true);
  d.download_all(small);  // config, tokenizer, index: small files a merge needs anyway
  ResolvedModel out;
  out.ref = ref.str();
  out.root = d.snapshot();
  if (fs::is_regular_file(out.root / "config.json")) out.config_json = out.root / "config.json";
  const fs::path index = out.root / "model.safetensors.index.json";
  if (fs::is_regular_file(index)) {
    out.index_json = index;
    out.index_weight_map = parse_safetensors_index(read_text(index), index.string());
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : out.index_weight_map) shards.insert(shard);
    weights.assign(shards.begin(), shards.end());
  } else if (fs::exists(out.root / "pytorch_model.bin.index.json")) {
    return nullptr;
  }
  if (weights.empty()) return nullptr;  // resolve_model says what is missing
  std::vector<std::shared_ptr<TensorFile>> opened;
  for (const auto& w : weights) {
    const std::string label = fmt::format("{} of model '{}' on {}", w, ref.path, s.endpoint);
    const FileMeta meta = d.head(w);
    if (meta.size < 8) fail("{}: is {} bytes, too short for a safetensors file", label, meta.size);
    const std::string len = d.range(w, meta, 0, 7);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(len[i]);
    if (n > kMaxHeaderBytes || n > meta.size - 8) {
      fail("{}: header length {} exceeds the file ({} bytes) or the {} byte limit", label, n,
           meta.size, kMaxHeaderBytes);
    }
    const std::string header = n == 0 ? std::string() : d.range(w, meta, 8, 8 + n - 1);
    opened.push_back(std::make_shared<RemoteSafetensorsFile>(
        out.root / w, meta.size, parse_safetensors_header(header, meta.size, label)));
    out.weight_files.push_back(out.root / w);
  }
  return Model::from_files(out, std::move(opened));
}

}  // namespace smelt::io
