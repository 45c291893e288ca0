#!/usr/bin/env python3
"""A mock Hugging Face Hub for tests/hub_test.cpp, on 127.0.0.1 (docs/hub.md).

Usage: mock_hub.py CONFIG.json PORT_FILE LOG_FILE

CONFIG: {"repos": {"org/name": {"commit": "<40 hex>", "revisions": ["main"], "gated": false,
                                 "files": {"config.json": "/path/on/disk", ...}}},
         "token": "hf_...",              # the token that opens gated repos
         "cut_after": {"org/name/file": N},  # close the connection after N body bytes, once
         "corrupt": ["org/name/file"],   # serve the file with its last byte changed
         "ignore_range": ["org/name/file"]}  # answer Range requests with 200 and every byte
Serves GET /api/models/{repo}/revision/{rev}; HEAD/GET /{repo}/resolve/{rev}/{file}: regular
files 307 to a relative /api/resolve-cache/... URL (ETag = git blob sha1), LFS files
(.safetensors, .bin, .model) 302 to an absolute http://localhost:PORT/cdn/... URL (another origin)
with X-Linked-Etag (sha256) and X-Linked-Size; Range requests (206); errors with X-Error-Code.
Every request is appended to LOG_FILE as a JSON line: method, path, range, auth, bytes.
"""
import hashlib
import json
import os
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIG = json.load(open(sys.argv[1]))
LOG_FILE = sys.argv[3]
LOCK = threading.Lock()
CUT_DONE = set()
LFS_SUFFIXES = (".safetensors", ".bin", ".model")


def content_of(repo, name):
    with open(CONFIG["repos"][repo]["files"][name], "rb") as f:
        data = f.read()
    return data


def etag_of(name, data):
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def log_request_line(self, sent):
        entry = {
            "method": self.command,
            "path": self.path,
            "range": self.headers.get("Range", ""),
            "auth": self.headers.get("Authorization", ""),
            "bytes": sent,
        }
        with LOCK, open(LOG_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def reply(self, status, headers, body=b""):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            sent = len(body)
        self.log_request_line(sent)

    def error(self, status, code, message, commit=None):
        headers = {"X-Error-Code": code, "X-Error-Message": message,
                   "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self.reply(status, headers, json.dumps({"error": message}).encode())

    def repo_or_error(self, repo, rev):
        r = CONFIG["repos"].get(repo)
        if r is None:
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        if r.get("gated") and self.headers.get("Authorization") != "Bearer " + CONFIG.get("token", ""):
            self.error(401, "GatedRepo", "Access to model %s is restricted." % repo)
            return None
        if rev != r["commit"] and rev not in r.get("revisions", ["main"]):
            self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
            return None
        return r

    def serve_bytes(self, key, data, headers):
        """200 or 206 (Range) with the file's bytes; cuts or corrupts as configured."""
        if key in CONFIG.get("corrupt", []):
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        total = len(data)
        start, end = 0, total - 1
        status = 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and key not in CONFIG.get("ignore_range", []):
            a, _, b = rng[6:].partition("-")
            start = int(a)
            end = int(b) if b else total - 1
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, total)
        body = data[start:end + 1]
        headers["Content-Length"] = str(len(body))
        cut = CONFIG.get("cut_after", {}).get(key)
        if cut is not None and key not in CUT_DONE and self.command == "GET" and cut < len(body):
            CUT_DONE.add(key)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.log_request_line(cut)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.reply(status, headers, body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        # /api/models/{org}/{name}/revision/{rev}
        if parts[1:3] == ["api", "models"] and len(parts) >= 7 and parts[5] == "revision":
            repo = parts[3] + "/" + parts[4]
            rev = urllib.parse.unquote("/".join(parts[6:]))
            r = self.repo_or_error(repo, rev)
            if r is None:
                return
            info = {"id": repo, "sha": r["commit"],
                    "siblings": [{"rfilename": n} for n in sorted(r["files"])]}
            self.reply(200, {"Content-Type": "application/json"}, json.dumps(info).encode())
            return
        # /api/resolve-cache/models/{org}/{name}/{commit}/{file}
        if parts[1:4] == ["api", "resolve-cache", "models"] and len(parts) >= 8:
            repo = parts[4] + "/" + parts[5]
            name = urllib.parse.unquote("/".join(parts[7:]))
            r = CONFIG["repos"][repo]
            data = content_of(repo, name)
            headers = {"ETag": '"%s"' % etag_of(name, data), "X-Repo-Commit": r["commit"]}
            self.serve_bytes(repo + "/" + name, data, headers)
            return
        # /cdn/{org}/{name}/{file}: the "other host" of LFS files; must never see a token.
        if parts[1] == "cdn" and len(parts) >= 5:
            repo = parts[2] + "/" + parts[3]
            name = urllib.parse.unquote("/".join(parts[4:]))
            data = content_of(repo, name)
            self.serve_bytes(repo + "/" + name, data, {"ETag": '"%s"' % etag_of(name, data)})
            return
        # /{org}/{name}/resolve/{rev}/{file}
        if len(parts) >= 6 and parts[3] == "resolve":
            repo = parts[1] + "/" + parts[2]
            rev = urllib.parse.unquote(parts[4])
            name = urllib.parse.unquote("/".join(parts[5:]))
            r = self.repo_or_error(repo, rev)
            if r is None:
                return
            if name not in r["files"]:
                self.error(404, "EntryNotFound", "Entry not found", r["commit"])
                return
            data = content_of(repo, name)
            quoted = urllib.parse.quote(name)
            if name.endswith(LFS_SUFFIXES):
                port = self.server.server_address[1]
                self.reply(302, {
                    "Location": "http://localhost:%d/cdn/%s/%s" % (port, repo, quoted),
                    "X-Repo-Commit": r["commit"],
                    "X-Linked-Etag": '"%s"' % etag_of(name, data),
                    "X-Linked-Size": str(len(data)),
                    "ETag": '"not-the-checksum"',
                })
            else:
                self.reply(307, {
                    "Location": "/api/resolve-cache/models/%s/%s/%s" % (repo, r["commit"], quoted),
                    "X-Repo-Commit": r["commit"],
                })
            return
        self.error(404, "NotFound", "no such endpoint")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
