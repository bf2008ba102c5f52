"""A local stand-in for the Hugging Face hub, for offline download tests.

It serves, from memory on 127.0.0.1, the part of the hub API that huggingface_hub and pipelines.hub use for
dataset repos at one fixed commit (`FakeHub.COMMIT`, also reachable as the branch "main"):

    GET  /api/datasets/{repo}/revision/{rev}        repo_info: {"id", "sha"}
    POST /api/datasets/{repo}/paths-info/{rev}      get_paths_info: size, git oid, lfs {oid (sha256), size}
    HEAD/GET /datasets/{repo}/resolve/{rev}/{path}  X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size; files in
                                                    git are served here, LFS files redirect (302) to the CDN
    HEAD/GET {cdn}/cdn/{sha256}                     the LFS bytes, on a second port (another origin, as on the
                                                    hub), with Range support (206, Content-Range)

Faults are scripted per file path (or "api" for the two metadata calls): each request that serves the file's
bytes (or an API answer) takes the next action of its list, then the file is served normally. Actions:
an int (answer with that HTTP status), a (status, {header: value}) pair (that status with those headers, e.g.
(429, {"Retry-After": "1"})), "drop" (send half of the bytes asked for, then close the connection), "hang"
(send half, then stall until the server stops), "ignore-range" (answer 200 with the whole file), "corrupt"
(flip one byte), "truncate" / "extend" (serve a copy 1,000 bytes shorter / longer than the metadata says). Every request is logged in `requests` as (method, path, Range header or None).

    with FakeHub({"org/name": {"data/a.parquet": payload}}, faults={"data/a.parquet": [503, "drop"]}) as hub:
        hub.point_huggingface_hub(monkeypatch)   # or pass hub.env() to a subprocess
        pipelines.hub.download("org/name", ["data/a.parquet"], FakeHub.COMMIT, tmp_path)
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote


class FakeHub:
    COMMIT = "5eed0123456789abcdef0123456789abcdef0123"

    def __init__(self, repos: dict[str, dict[str, bytes]], *, faults: dict[str, list] | None = None,
                 in_git: tuple[str, ...] = ()):
        """`repos`: {repo_id: {path: bytes}}; `in_git`: paths stored in git (served directly) rather than LFS."""
        self.repos = repos
        self.in_git = set(in_git)
        self.faults = {key: deque(actions) for key, actions in (faults or {}).items()}
        self.by_sha256 = {hashlib.sha256(data).hexdigest(): (path, data)
                          for files in repos.values() for path, data in files.items()}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._servers = [_Server(self), _Server(self)]  # the hub, and its CDN on another origin
        self.url, self.cdn_url = (f"http://127.0.0.1:{server.server_address[1]}" for server in self._servers)

    def __enter__(self) -> FakeHub:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def point_huggingface_hub(self, monkeypatch) -> None:
        """Point huggingface_hub, in this process, at this server (what HF_ENDPOINT does at import)."""
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def env(self, hf_home) -> dict[str, str]:
        """Environment variables that point a fresh Python process at this server, with its own HF_HOME."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home),
                "HF_HUB_DISABLE_TELEMETRY": "1"}

    def next_fault(self, key: str):
        with self._lock:
            actions = self.faults.get(key)
            return actions.popleft() if actions else None

    def log(self, method: str, path: str, byte_range: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, byte_range))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_POST(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        self.hub.log(self.command, self.path, self.headers.get("Range"))
        parts = [unquote(p) for p in self.path.split("?")[0].split("/")]
        if parts[1:3] == ["api", "datasets"] and len(parts) == 7:
            self._api(f"{parts[3]}/{parts[4]}", parts[5], parts[6])
        elif parts[1] == "datasets" and len(parts) >= 7 and parts[4] == "resolve":
            self._resolve(f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:]), body)
        elif parts[1] == "cdn" and len(parts) == 3 and parts[2] in self.hub.by_sha256:
            path, data = self.hub.by_sha256[parts[2]]
            self._serve(path, data, body, {})
        else:
            self._error(404, "EntryNotFound", f"no route for {self.path}")

    def _files(self, repo: str, revision: str) -> dict[str, bytes] | None:
        if repo not in self.hub.repos:
            self._error(404, "RepoNotFound", f"Repository {repo} not found")
        elif revision not in (FakeHub.COMMIT, "main"):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        else:
            return self.hub.repos[repo]
        return None

    def _api(self, repo: str, call: str, revision: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else {}
        fault = self.hub.next_fault("api")
        if isinstance(fault, (int, tuple)):
            return self._scripted_error(fault)
        files = self._files(repo, revision)
        if files is None:
            return
        if call == "revision" and self.command == "GET":
            return self._json({"id": repo, "sha": FakeHub.COMMIT})
        if call == "paths-info" and self.command == "POST":
            infos = []
            for path in form.get("paths", []):
                if path in files:
                    data = files[path]
                    info = {"type": "file", "path": path, "size": len(data), "oid": _git_sha1(data)}
                    if path not in self.hub.in_git:
                        info["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    infos.append(info)
            return self._json(infos)
        self._error(404, "EntryNotFound", f"no API route {call} for {self.command}")

    def _resolve(self, repo: str, revision: str, path: str, body: bool) -> None:
        files = self._files(repo, revision)
        if files is None:
            return
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
        data = files[path]
        headers = {"X-Repo-Commit": FakeHub.COMMIT}
        if path in self.hub.in_git:
            headers["ETag"] = f'"{_git_sha1(data)}"'
            return self._serve(path, data, body, headers)
        sha256 = hashlib.sha256(data).hexdigest()
        headers.update({"ETag": f'"{_git_sha1(data)}"', "X-Linked-Etag": f'"{sha256}"',
                        "X-Linked-Size": str(len(data)), "Location": f"{self.hub.cdn_url}/cdn/{sha256}",
                        "Content-Length": "0"})
        self._send(302, headers)

    def _serve(self, path: str, data: bytes, body: bool, headers: dict) -> None:
        fault = self.hub.next_fault(path) if body else None
        if isinstance(fault, (int, tuple)):
            return self._scripted_error(fault)
        if fault == "truncate":
            data = data[:-1000]
        elif fault == "extend":
            data = data + bytes(1000)
        start, end = 0, len(data)
        asked = _RANGE.fullmatch(self.headers.get("Range", ""))
        status = 200
        if asked and fault != "ignore-range":
            start = int(asked.group(1))
            end = min(len(data), int(asked.group(2)) + 1) if asked.group(2) else len(data)
            if start >= len(data):
                return self._error(416, None, "range not satisfiable")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        payload = data[start:end]
        if fault == "corrupt" and payload:
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        headers.update({"Content-Length": str(len(payload)), "Accept-Ranges": "bytes",
                        "Content-Type": "application/octet-stream"})
        self._send(status, headers)
        if not body:
            return
        if fault in ("drop", "hang"):
            self.wfile.write(payload[:len(payload) // 2])
            self.wfile.flush()
            if fault == "hang":
                self.hub._stopping.wait(60)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _json(self, obj) -> None:
        payload = json.dumps(obj).encode()
        self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(payload))})
        self.wfile.write(payload)

    def _scripted_error(self, fault: int | tuple[int, dict]) -> None:
        status, headers = fault if isinstance(fault, tuple) else (fault, {})
        self._error(status, None, "scripted fault", headers)

    def _error(self, status: int, code: str | None, message: str, extra_headers: dict | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)),
                   "X-Error-Message": message, **(extra_headers or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers)
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
