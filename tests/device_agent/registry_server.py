"""A small real HTTP server with the registry's device API (edgewire.device_api), and faults on demand.

Not the registry: just enough of its contract for the agent's tests, on a
loopback port, with switches for what a bad network or server does:
`stop()` / `start()` (down and up on the same port), `no_range` (ignores
Range), `wrong_content_range` (a 206 that does not continue where asked),
`replace_content` (other bytes under the same URL, with or without a new
ETag), `max_body` (closes every body after that many bytes), `hold` (sends
the first KB of a body, then waits for the event), `fail_next` (answers
503). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edgewire import (
    DesiredModel,
    DesiredResponse,
    EnrollRequest,
    EnrollResponse,
    MqttSettings,
    Paths,
    new_message_id,
)
from edgewire.messages import PayloadError, parse_payload
from tests.services import free_port


@dataclass
class Request:
    method: str
    path: str
    status: int
    range: str | None = None
    if_range: str | None = None
    authorization: bool = False


@dataclass
class Archive:
    data: bytes
    etag: str


@dataclass
class FakeRegistry:
    port: int = field(default_factory=free_port)
    device_token: str = field(default_factory=lambda: secrets.token_hex(16))
    enroll_token: str = field(default_factory=lambda: secrets.token_hex(16))
    mqtt: MqttSettings | None = None
    desired: DesiredModel | None = None
    # faults
    no_range: bool = False
    wrong_content_range: bool = False
    max_body: int | None = None
    hold: threading.Event | None = None
    fail_next: int = 0
    # what happened
    requests: list[Request] = field(default_factory=list)
    updates: list = field(default_factory=list)
    telemetry: list = field(default_factory=list)
    archives: dict[str, Archive] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ content

    def add_archive(self, path: Path) -> tuple[str, int]:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        self.archives[digest] = Archive(data, f'"{digest}"')
        return digest, len(data)

    def replace_content(self, sha256: str, data: bytes, *, new_etag: bool) -> None:
        etag = f'"{hashlib.sha256(data).hexdigest()}"' if new_etag else self.archives[sha256].etag
        self.archives[sha256] = Archive(data, etag)

    def desire(
        self, built, *, update_id: str | None = None, issued_at: float | None = None, **fields
    ) -> DesiredModel:
        """Make `built` (tests.device_agent.bundles.Built) the desired version, served at its bundle URL."""
        sha, size = self.add_archive(built.archive)
        values = {
            "msg_id": new_message_id(),
            "update_id": update_id
            or f"u-{built.manifest.name}-{built.manifest.version}-{secrets.token_hex(3)}",
            "issued_at": time.time() if issued_at is None else issued_at,
            "model": built.manifest.name,
            "version": built.manifest.version,
            "target": built.manifest.target,
            "archive_sha256": sha,
            "archive_size": size,
            "url": Paths.bundle_for(sha),
        }
        values.update(fields)
        self.desired = DesiredModel(**values)
        return self.desired

    def update_states(self, update_id: str) -> list[str]:
        """States reported for one update, duplicates (same msg_id) removed, in seq order."""
        with self._lock:
            unique = {u.msg_id: u for u in self.updates if u.update_id == update_id}
        return [u.state for u in sorted(unique.values(), key=lambda u: u.seq)]

    def update_reasons(self, update_id: str) -> dict[str, str | None]:
        with self._lock:
            return {u.state: u.reason for u in self.updates if u.update_id == update_id}

    def ranges_asked(self) -> list[str]:
        return [r.range for r in self.requests if r.range]

    # ------------------------------------------------------------------ life cycle

    def start(self) -> FakeRegistry:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _record(self, status: int) -> None:
                registry.requests.append(
                    Request(
                        self.command,
                        self.path,
                        status,
                        self.headers.get("Range"),
                        self.headers.get("If-Range"),
                        self.headers.get("Authorization") == f"Bearer {registry.device_token}",
                    )
                )

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self._record(status)
                self.send_response(status)
                for key, value in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {registry.device_token}":
                    self._reply(401, b'{"detail":"unauthorized"}')
                    return False
                return True

            def _faulted(self) -> bool:
                if registry.fail_next > 0:
                    registry.fail_next -= 1
                    self._reply(503, b'{"detail":"try later"}')
                    return True
                return False

            def do_GET(self) -> None:
                if self._faulted() or not self._authorized():
                    return
                if self.path == Paths.desired:
                    body = DesiredResponse(desired=registry.desired).model_dump_json().encode()
                    self._reply(200, body)
                elif self.path.startswith(Paths.bundle_for("")):
                    self._bundle(self.path.rsplit("/", 1)[1])
                else:
                    self._reply(404, b"{}")

            def _bundle(self, sha256: str) -> None:
                archive = registry.archives.get(sha256)
                if archive is None:
                    self._reply(404, b"{}")
                    return
                data, size = archive.data, len(archive.data)
                start, status = 0, 200
                wanted = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if wanted and not registry.no_range and (if_range is None or if_range == archive.etag):
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    status = 206
                body = data[start:]
                headers = {
                    "Content-Type": "application/octet-stream",
                    "ETag": archive.etag,
                    "Accept-Ranges": "bytes",
                }
                if status == 206:
                    shown = max(0, start - 7) if registry.wrong_content_range else start
                    headers["Content-Range"] = f"bytes {shown}-{size - 1}/{size}"
                self._record(status)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if registry.max_body is not None and len(body) > registry.max_body:
                    self.wfile.write(body[: registry.max_body])
                    self.wfile.flush()
                    self.close_connection = True  # the promised length never comes: a truncated body
                    return
                if registry.hold is not None and not registry.hold.is_set():
                    self.wfile.write(body[:1024])
                    self.wfile.flush()
                    registry.hold.wait(60)
                    body = body[1024:]
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self._faulted():
                    return
                if self.path == Paths.enroll:
                    request = EnrollRequest.model_validate_json(body)
                    if request.token != registry.enroll_token:
                        self._reply(401, b'{"detail":"bad token"}')
                        return
                    answer = EnrollResponse(
                        device=request.name or "dev-enrolled",
                        fleet="fleet-1",
                        device_token=registry.device_token,
                        mqtt=registry.mqtt,
                    )
                    self._reply(200, answer.model_dump_json().encode())
                    return
                if not self._authorized():
                    return
                kind = {Paths.update: "update", Paths.telemetry: "telemetry"}.get(self.path)
                if kind is None:
                    self._reply(404, b"{}")
                    return
                try:
                    message = parse_payload(kind, body)
                except PayloadError as exc:
                    self._reply(422, json.dumps({"detail": str(exc)}).encode())
                    return
                with registry._lock:
                    (registry.updates if kind == "update" else registry.telemetry).append(message)
                self._record(204)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address) -> None:
                pass  # clients that hang up (a cancelled or killed download) are part of the tests

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
