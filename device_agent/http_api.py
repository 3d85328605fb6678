"""The local HTTP API (stdlib ThreadingHTTPServer), on loopback by default.

| method | path        | answer |
|--------|-------------|--------|
| POST   | /v1/infer   | body: an image (image/*) or raw tensors (.npy / .npz); `?top_k=1&outputs=1` -> JSON result |
| GET    | /healthz    | 200 when a model serves, else 503 |
| GET    | /v1/status  | `AgentStatus`: device, model, slot, slots, update state, MQTT, queue |
| GET    | /metrics    | Prometheus text format |

Why the stdlib server: one thread per connection, no framework import, a few
MB of memory; the inference itself dominates the cost of a request (see
benchmarks/results/agent_throughput.md).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from device_agent.errors import InferenceInputError
from device_agent.pipeline import DEFAULT_TOP_K, InferenceFailed

if TYPE_CHECKING:
    from device_agent.agent import Agent

log = logging.getLogger(__name__)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
TENSOR_TYPES = ("application/x-npy", "application/x-npz", "application/npy", "application/octet-stream")


def is_tensor_body(content_type: str, head: bytes) -> bool:
    if content_type.startswith("image/"):
        return False
    return (content_type in TENSOR_TYPES and head.startswith((NPY_MAGIC, ZIP_MAGIC))) or head.startswith(
        NPY_MAGIC
    )


class _Handler(BaseHTTPRequestHandler):
    server: AgentHttpServer
    server_version = "edgectl-agent"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; with Nagle's algorithm the body would wait for the
        # client's delayed ACK (40 ms on Linux) on every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode())

    def _error(self, status: int, message: str, hint: str | None = None) -> None:
        self._json(status, {"error": message, "hint": hint})

    def do_GET(self) -> None:
        agent = self.server.agent
        path = urlsplit(self.path).path
        if path == "/healthz":
            pipeline = agent.pipeline
            if pipeline is None:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "no model"})
            else:
                self._json(HTTPStatus.OK, {"status": "ok", "model": pipeline.model_ref.model_dump()})
        elif path == "/v1/status":
            self._send(HTTPStatus.OK, agent.status().model_dump_json().encode())
        elif path == "/metrics":
            text = "\n".join(agent.prometheus()) + "\n"
            self._send(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such path {path}", "see GET /v1/status, POST /v1/infer")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/v1/infer":
            self._error(HTTPStatus.NOT_FOUND, f"no such path {url.path}", "POST /v1/infer")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(
                HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required", "send the file as the body"
            )
            return
        limit = self.server.max_request_bytes
        if int(length) > limit:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {limit} bytes", "send a smaller image"
            )
            return
        body = self.rfile.read(int(length))
        query = parse_qs(url.query)
        try:
            top_k = int(query.get("top_k", [str(DEFAULT_TOP_K)])[0])
            if not 1 <= top_k <= 1000:
                raise ValueError
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "top_k must be an integer from 1 to 1000")
            return
        include_outputs = query.get("outputs", ["0"])[0] in ("1", "true", "yes")
        pipeline = self.server.agent.pipeline
        if pipeline is None:
            self._error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "no model is installed yet",
                "wait for an update, or install one",
            )
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if is_tensor_body(content_type, body[:8]):
                result = pipeline.infer_tensors(body, top_k=top_k)
            else:
                result = pipeline.infer_image(body, top_k=top_k)
        except InferenceInputError as exc:
            self._error(HTTPStatus.BAD_REQUEST, exc.message, exc.hint)
            return
        except InferenceFailed as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
            return
        self._json(HTTPStatus.OK, result.to_json(include_outputs=include_outputs))


class AgentHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, agent: Agent, max_request_bytes: int) -> None:
        self.agent = agent
        self.max_request_bytes = max_request_bytes
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
