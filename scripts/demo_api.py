"""A small local stand-in for the application's API, and a reverse proxy in front of it.

The demo benchmarks real HTTP endpoints on 127.0.0.1: a 25-row customer page and the full
customer and item lists, whose payload sizes are of the same order as the production figures
(about 15 KB, 220 KB and 325 KB). Requests need the bearer token, and responses are deterministic JSON.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEMO_TOKEN = "demo-api-token"


def _customers(count: int) -> list[dict]:
    generator = random.Random(11)
    return [
        {
            "id": index + 1,
            "name": f"Customer {index + 1:05d}",
            "email": f"customer{index + 1}@example.invalid",
            "city": generator.choice(["Lisboa", "Porto", "Braga", "Faro", "Coimbra"]),
            "balance": round(generator.uniform(-500, 5000), 2),
            "notes": "".join(generator.choice("abcdefghij ") for _ in range(380)),
        }
        for index in range(count)
    ]


def _items(count: int) -> list[dict]:
    generator = random.Random(12)
    return [
        {
            "sku": f"SKU-{index + 1:06d}",
            "description": "".join(generator.choice("klmnopqrst ") for _ in range(110)),
            "price": round(generator.uniform(0.5, 900), 2),
            "stock": generator.randint(0, 400),
        }
        for index in range(count)
    ]


CUSTOMERS = _customers(400)
ITEMS = _items(1700)


class NoDelayHandler(BaseHTTPRequestHandler):
    """Send headers and body without waiting for delayed ACKs (Nagle), as real servers do."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ApiHandler(NoDelayHandler):
    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {DEMO_TOKEN}":
            self._send(401, b'{"error": "missing or invalid bearer token"}')
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/customers":
            size = int(query.get("page_size", ["25"])[0])
            page = int(query.get("page", ["1"])[0])
            body = CUSTOMERS[(page - 1) * size : page * size]
        elif url.path == "/api/customers/all":
            body = CUSTOMERS
        elif url.path == "/api/items/all":
            body = ITEMS
        else:
            self._send(404, b'{"error": "not found"}')
            return
        payload = json.dumps(body).encode()
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            self._send(200, gzip.compress(payload), encoding="gzip")
        else:
            self._send(200, payload)

    def _send(self, status: int, body: bytes, encoding: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def make_proxy_handler(upstream_port: int) -> type[BaseHTTPRequestHandler]:
    class ProxyHandler(NoDelayHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            headers = {key: value for key, value in self.headers.items() if key.lower() != "host"}
            upstream.request("GET", self.path, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            upstream.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Via", "1.1 attachment-ops-demo-proxy")
            self.end_headers()
            self.wfile.write(data)

    return ProxyHandler


def start_servers() -> tuple[int, int, list[ThreadingHTTPServer]]:
    """Start the API and its proxy on free loopback ports; return both ports and the servers."""
    api = ThreadingHTTPServer(("127.0.0.1", 0), ApiHandler)
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), make_proxy_handler(api.server_address[1]))
    for server in (api, proxy):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return api.server_address[1], proxy.server_address[1], [api, proxy]
