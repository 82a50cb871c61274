"""A local stand-in for the Hugging Face hub's file-resolve API, on 127.0.0.1, for download tests.

Serves `/{repo}/resolve/{revision}/{path}` (HEAD and GET, byte ranges) with the headers huggingface_hub reads:
X-Repo-Commit, ETag, Content-Length. Gated repos answer 401/403 with X-Error-Code: GatedRepo unless the right
bearer token is sent. Faults can be injected per file: cut the first GET short, or refuse GETs.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")


@dataclass
class FakeHub:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, path in repo) -> content
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the token that opens it
    cut_first_get: dict[str, int] = field(default_factory=dict)  # path -> bytes its first GET sends before a cut
    refuse_get: set[str] = field(default_factory=set)  # paths whose GET answers 403 (no error code)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths_requested(self, method: str) -> list[str]:
        with self._lock:
            return [p for m, p, _ in self.requests if m == method]

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
        match = _RESOLVE.match(h.path.split("?")[0])
        if match is None:  # e.g. the reachability probe on "/"
            return self._send(h, 200, {"Content-Type": "text/plain"}, b"fake hub", body)
        repo, path = match["repo"], match["path"]
        if repo in self.gated:
            auth = h.headers.get("Authorization", "")
            if auth != f"Bearer {self.gated[repo]}":
                status = 403 if auth else 401
                return self._send(h, status, {"X-Error-Code": "GatedRepo",
                                              "X-Error-Message": "Access to this model is restricted."}, b"", body)
        if not any(r == repo for r, _ in self.files):
            return self._send(h, 401, {"X-Error-Code": "RepoNotFound"}, b"", body)
        content = self.files.get((repo, path))
        if content is None:
            return self._send(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", body)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if not body:
            return self._send(h, 200, headers, content, body=False)
        if path in self.refuse_get:
            return self._send(h, 403, {}, b"", body)
        start = range_start(h.headers.get("Range"))
        if path in self.cut_first_get and start == 0:
            cut = self.cut_first_get.pop(path)
            # Promise the whole file, deliver part of it, drop the connection: a network cut mid-download.
            h.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(content))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(content[:cut])
            h.wfile.flush()
            h.close_connection = True
            return
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            return self._send(h, 206, headers, content[start:], body)
        return self._send(h, 200, headers, content, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict, content: bytes, body: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(content)))
        h.end_headers()
        if body:
            h.wfile.write(content)


def range_start(value: str | None) -> int:
    found = re.match(r"bytes=(\d+)-", value or "")
    return int(found.group(1)) if found else 0
