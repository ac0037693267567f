"""A local HTTP server with known delays, payload sizes and failures, for the benchmark report tests.

Routes (query parameters in brackets):

- ``/payload`` [size, delay_ms]: ``size`` bytes of a fixed pattern after sleeping ``delay_ms``.
- ``/gzip`` [size]: the same pattern gzip-compressed, with ``Content-Encoding: gzip``.
- ``/status/<code>``: that status with a short body.
- ``/flaky`` [every, delay_ms]: every ``every``-th request (1-based) sleeps ``delay_ms`` first,
  so the client times out on it; the others respond at once.
- ``/every_third_500``: requests 3, 6, 9... answer 500, the others 200.
- ``/secured``: 200 with the bearer token or basic credentials of ``SECRETS``, else 401.

The server records each request's path, client port and headers, so tests can check which
connection was used and what was sent.
"""

from __future__ import annotations

import base64
import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
BEARER_SECRET = "bearer-secret-7f3c9a1d"
BASIC_USER = "bench-user"
BASIC_SECRET = "basic-secret-52e8b0c4"


def pattern_bytes(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def gzip_body(size: int) -> bytes:
    # mtime=0 makes the compressed body, and so its length, the same on every call.
    return gzip.compress(pattern_bytes(size), mtime=0)


@dataclass
class RecordedRequest:
    path: str
    client_port: int
    headers: dict[str, str]


@dataclass
class BenchServer:
    base_url: str
    requests: list[RecordedRequest] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            self.counters[path] = self.counters.get(path, 0) + 1
            return self.counters[path]

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]


def handler_for(server_state: BenchServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
        # delayed ACKs would add about 40 ms to every response.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            with server_state.lock:
                server_state.requests.append(
                    RecordedRequest(parts.path, self.client_address[1], dict(self.headers.items()))
                )
            number = server_state.count(parts.path)
            delay_ms = int(query.get("delay_ms", "0"))
            if parts.path == "/payload":
                time.sleep(delay_ms / 1000)
                self._send(200, pattern_bytes(int(query["size"])))
            elif parts.path == "/gzip":
                self._send(200, gzip_body(int(query["size"])), {"Content-Encoding": "gzip"})
            elif parts.path.startswith("/status/"):
                self._send(int(parts.path.rsplit("/", 1)[1]), b"status body")
            elif parts.path == "/flaky":
                if number % int(query["every"]) == 0:
                    time.sleep(delay_ms / 1000)
                self._send(200, pattern_bytes(100))
            elif parts.path == "/every_third_500":
                self._send(500 if number % 3 == 0 else 200, pattern_bytes(50))
            elif parts.path == "/secured":
                expected = {
                    f"Bearer {BEARER_SECRET}",
                    "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_SECRET}".encode()).decode(),
                }
                authorized = self.headers.get("Authorization") in expected
                self._send(200 if authorized else 401, b"secured body" if authorized else b"denied")
            else:
                self._send(404, b"no such route")

        do_HEAD = do_GET

    return Handler
