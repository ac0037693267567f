"""Fixtures of the benchmark report tests: the local HTTP server of bench_server.py."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from tests.report.bench_server import BenchServer, handler_for


class QuietServer(ThreadingHTTPServer):
    """A threaded server that ignores clients which hung up, as the timeout tests make them do."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def bench_server() -> Iterator[BenchServer]:
    """A threaded HTTP/1.1 server on a free 127.0.0.1 port, stopped after the test."""
    state = BenchServer(base_url="")
    server = QuietServer(("127.0.0.1", 0), handler_for(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="bench-server", daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def refused_url() -> str:
    """A 127.0.0.1 URL on which nothing listens: the port was bound once, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
