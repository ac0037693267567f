"""A fault-injecting HTTP proxy in front of the real S3 server, for tests.

Requests pass through to the upstream unchanged unless a rule matches; a matching rule then
responds in its place or damages the exchange. Rules fire a set number of times, optionally
after letting a number of matching requests through, so a test can have the proxy reject the
7th PUT and the two after it with 503 SlowDown and check that the retries recover.

With ``resign`` set, the proxy signs every request again (AWS Signature Version 4) with the
upstream's real credentials. Clients may then use any credentials, for example a distinctive
test secret that a test searches for in logs and reports.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error.</Message></Error>"
)
NO_SUCH_BUCKET_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code>'
    b"<Message>The specified bucket does not exist</Message></Error>"
)
INVALID_ACCESS_KEY_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
    b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>"
)
AUTHORIZATION_HEADER_MALFORMED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AuthorizationHeaderMalformed</Code>'
    b"<Message>The authorization header is malformed; the region is wrong; expecting 'us-east-1'."
    b"</Message></Error>"
)
ACTIONS = (
    "status",
    "reset",
    "reset_request",
    "reset_mid_body",
    "truncate",
    "delay",
    "delay_response",
    "rewrite_auth",
    "callback",
    "corrupt_request",
    "lying_server",
)
# Headers of one hop, and of the client's signature, which are not forwarded as received.
_HOP_HEADERS = {"transfer-encoding", "connection", "keep-alive", "expect"}
_SIGNATURE_HEADERS = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "host"}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


@dataclass
class Rule:
    """What to do to requests that match ``method`` and contain ``path_contains``.

    ``action`` is one of:

    - ``status``: respond with ``status`` and ``body`` instead of forwarding.
    - ``reset``: read the request, then close the connection without a response.
    - ``reset_request``: read half of the request body, then reset the connection.
    - ``reset_mid_body``: forward, then send half of the response body and reset the connection.
    - ``truncate``: forward, announce the full length, send half the body and close cleanly.
    - ``delay``: sleep ``seconds`` before forwarding.
    - ``delay_response``: forward at once, then sleep ``seconds`` before responding, so the
      upstream has done the work when the client gives up.
    - ``rewrite_auth``: forward with the access key id in the signature replaced by ``access_key``,
      so the upstream itself rejects the credentials.
    - ``callback``: read half of the request body, call ``callback(method, path)``, then go on.
    - ``corrupt_request``: flip one byte in the middle of the request body, change nothing else.
    - ``lying_server``: act as a server that trusts its clients: flip one byte of the body, drop
      the checksum headers before forwarding, and return the client's own
      ``x-amz-checksum-sha256`` in the response, as if the server had computed it. Needs ``resign``,
      because the client's signature covers the original body.

    The rule lets the first ``after`` matching requests through, then fires on the next
    ``times`` ones; -1 means on every one after that. ``seen`` and ``fired`` count them.
    """

    action: str
    method: str | None = None
    path_contains: str = ""
    times: int = 1
    after: int = 0
    status: int = 503
    body: bytes = SLOW_DOWN_BODY
    seconds: float = 0.0
    access_key: str = "WRONGACCESSKEY"
    callback: Callable[[str, str], None] | None = None
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Unknown proxy action {self.action!r}; use one of {', '.join(ACTIONS)}.")

    def take(self, method: str, path: str) -> bool:
        """Count a request that reaches this rule and return whether the rule fires on it."""
        if self.method and self.method != method:
            return False
        if self.path_contains not in path:
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times != -1 and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Signer:
    """Credentials the proxy signs upstream requests with."""

    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def __repr__(self) -> str:
        return f"Signer(access_key={self.access_key!r}, region={self.region!r})"


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    resign: Signer | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    # Bytes of each request's header section as received (method, path, size).
    header_sizes: list[tuple[str, str, int]] = field(default_factory=list)
    fired: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                return

            def _handle(self) -> None:
                rule = proxy._take_rule(self.command, self.path)
                with proxy.lock:
                    proxy.requests.append((self.command, self.path))
                    proxy.header_sizes.append((self.command, self.path, len(self.headers.as_string())))
                length = int(self.headers.get("Content-Length") or 0)
                head = b""
                if rule is not None and rule.action in ("reset_request", "callback"):
                    head = self.rfile.read(length // 2)
                    if rule.action == "reset_request":
                        self._reset()
                        return
                    assert rule.callback is not None
                    rule.callback(self.command, self.path)
                body = head + (self.rfile.read(length - len(head)) if length > len(head) else b"")
                if len(body) < length:
                    # The client went away mid-body; forwarding the rest would store a short object.
                    self.close_connection = True
                    return
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                if rule is not None and rule.action == "status":
                    self._answer(rule.status, rule.body)
                    return
                if rule is not None and rule.action == "reset":
                    self._reset()
                    return
                if rule is not None and rule.action == "delay":
                    time.sleep(rule.seconds)
                if rule is not None and rule.action in ("corrupt_request", "lying_server") and body:
                    middle = len(body) // 2
                    body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body, rule)
                if rule is not None and rule.action == "lying_server":
                    claimed = self.headers.get("x-amz-checksum-sha256")
                    headers = [(k, v) for k, v in headers if k.lower() != "x-amz-checksum-sha256"]
                    if claimed:
                        headers.append(("x-amz-checksum-sha256", claimed))
                if rule is not None and rule.action == "delay_response":
                    time.sleep(rule.seconds)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD response announces the object's length without a body.
                announced = dict((k.lower(), v) for k, v in headers).get("content-length")
                self.send_header(
                    "Content-Length", announced if self.command == "HEAD" and announced else str(len(data))
                )
                self.end_headers()
                if self.command == "HEAD":
                    return
                if rule is not None and rule.action in ("reset_mid_body", "truncate") and data:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if rule.action == "truncate":
                        self._close_cleanly()
                    else:
                        self._reset()
                    return
                self.wfile.write(data)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

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
                    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.connection.close()
                except OSError:
                    pass

            def _close_cleanly(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that gave up (timeout, killed process) leaves a broken pipe behind. Several
                # rules cause that on purpose, so it is not a proxy failure.
                return

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, method: str | None = None) -> int:
        """Return how many requests (of ``method``, if given) reached the proxy."""
        with self.lock:
            return sum(1 for seen, _ in self.requests if method is None or seen == method)

    def _take_rule(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.take(method, path):
                    self.fired.append((rule.action, method, path))
                    return rule
        return None

    def _forward(
        self, method: str, path: str, received: Any, body: bytes, rule: Rule | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        target = urlsplit(self.upstream)
        headers = {key: value for key, value in received.items() if key.lower() not in _HOP_HEADERS}
        if rule is not None and rule.action == "lying_server":
            assert self.resign is not None, "lying_server needs resign to sign the altered body"
            headers = {
                key: value
                for key, value in headers.items()
                if not key.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum", "content-md5"))
            }
        if self.resign is not None:
            headers = self._signed_headers(method, path, headers, body)
        # Otherwise the client's Host header (the proxy's address) is kept, because the signature covers it.
        if rule is not None and rule.action == "rewrite_auth":
            for name in list(headers):
                if name.lower() == "authorization":
                    headers[name] = _CREDENTIAL.sub(f"Credential={rule.access_key}/", headers[name])
        if body or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            upstream.request(method, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            upstream.close()

    def _signed_headers(self, method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        assert self.resign is not None
        kept = {key: value for key, value in headers.items() if key.lower() not in _SIGNATURE_HEADERS}
        request = AWSRequest(method=method, url=self.upstream.rstrip("/") + path, data=body, headers=kept)
        signer = S3SigV4Auth(
            Credentials(self.resign.access_key, self.resign.secret_key), "s3", self.resign.region
        )
        signer.add_auth(request)
        return dict(request.headers.items())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
