"""A fault-injecting HTTP proxy in front of the real S3 server, for tests.

Requests pass through to the upstream unchanged unless a rule matches; a matching rule then
answers in its place or damages the exchange. Rules fire a set number of times, so a test can
say "the first two PUTs get 503 SlowDown" and check that the retries recover.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error.</Message></Error>"
)


@dataclass
class Rule:
    """What to do to requests that match ``method`` and contain ``path_contains``.

    ``action`` is one of: ``status`` (answer ``status`` with ``body``), ``reset`` (close the
    connection without answering), ``reset_mid_body`` (forward, then cut the response body
    halfway), ``delay`` (sleep ``seconds`` before forwarding), ``truncate`` (announce the full
    length but send half the body). ``times`` is how many matches fire; -1 means always.
    """

    action: str
    method: str | None = None
    path_contains: str = ""
    times: int = 1
    status: int = 503
    body: bytes = SLOW_DOWN_BODY
    seconds: float = 0.0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times != -1 and self.fired >= self.times:
            return False
        if self.method and self.method != method:
            return False
        return self.path_contains in path


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultProxy:
        proxy = self
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                rule = proxy._take_rule(self.command, self.path)
                with proxy.lock:
                    proxy.requests.append((self.command, self.path))
                if rule is not None and rule.action == "status":
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(rule.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(rule.body)
                    return
                if rule is not None and rule.action == "reset":
                    self._reset()
                    return
                if rule is not None and rule.action == "delay":
                    time.sleep(rule.seconds)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {
                    key: value for key, value in self.headers.items() if key.lower() != "transfer-encoding"
                }
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD response announces the object's length without a body.
                announced = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", announced or str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if rule is not None and rule.action in ("reset_mid_body", "truncate") and data:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                self.wfile.write(data)

            def _read_chunked(self) -> bytes:
                chunks = bytearray()
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(chunks)
                    chunks += self.rfile.read(size)
                    self.rfile.readline()

            def _reset(self) -> None:
                self.close_connection = True
                try:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.close()
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _take_rule(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.fired += 1
                    return rule
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
