"""Fixtures for the preflight tests: a small tmpfs, a Docker socket that never responds, Docker objects."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from attachment_ops.config import MaintenanceConfig, load_config
from tests.preflight.helpers import TMPFS_BYTES, TMPFS_INODES


@pytest.fixture
def make_config() -> Callable[..., MaintenanceConfig]:
    """Build a configuration from per-section overrides: ``make_config(preflight={...})``."""

    def build(**sections: dict[str, Any]) -> MaintenanceConfig:
        return load_config(sections)

    return build


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 16 MiB tmpfs with 200 inodes, mounted for one test and unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("The disk tests mount a tmpfs and must run as root (CI runs them as root).")
    mount_point = Path(tempfile.mkdtemp(prefix="preflight-tmpfs-"))
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={TMPFS_BYTES},nr_inodes={TMPFS_INODES}",
            "tmpfs",
            str(mount_point),
        ],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.rmdir()


class SilentSocketServer:
    """A unix socket that accepts connections and never sends a byte, like a hung daemon."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, name="silent-docker-socket", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._connections.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for connection in self._connections:
            connection.close()
        self._listener.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="preflight-sock-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def silent_socket(socket_dir: Path) -> Iterator[SilentSocketServer]:
    server = SilentSocketServer(str(socket_dir / "docker.sock"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def probe_image() -> str:
    image = os.environ.get("DOCKER_PROBE_IMAGE")
    if not image:
        pytest.fail(
            "DOCKER_PROBE_IMAGE is not set; source .local/services.env (make services-up builds the image)."
        )
    return image


@pytest.fixture
def docker_api(docker_host: str) -> Iterator[Any]:
    import docker

    api = docker.APIClient(base_url=docker_host, version="auto", timeout=30)
    yield api
    api.close()


@pytest.fixture
def docker_objects(docker_api: Any, probe_image: str) -> Iterator[dict[str, Any]]:
    """A stopped container that wrote 32 KiB to its layer and 64 KiB to a volume it keeps, and an
    unreferenced volume holding 16 KiB; all removed afterwards."""
    suffix = uuid.uuid4().hex[:10]
    kept_volume, loose_volume = f"preflight-kept-{suffix}", f"preflight-loose-{suffix}"
    created: list[str] = []
    try:
        for volume in (kept_volume, loose_volume):
            docker_api.create_volume(volume)
        writer = _run_container(
            docker_api,
            probe_image,
            f"preflight-writer-{suffix}",
            "dd if=/dev/zero of=/data/f bs=1024 count=16 2>/dev/null",
            loose_volume,
        )
        docker_api.remove_container(writer)
        stopped = _run_container(
            docker_api,
            probe_image,
            f"preflight-stopped-{suffix}",
            "dd if=/dev/zero of=/data/f bs=1024 count=64 2>/dev/null; dd if=/dev/zero of=/layer bs=1024 count=32 2>/dev/null",
            kept_volume,
        )
        created.append(stopped)
        yield {"container": stopped, "kept_volume": kept_volume, "loose_volume": loose_volume}
    finally:
        for container in created:
            docker_api.remove_container(container, force=True)
        for volume in (kept_volume, loose_volume):
            docker_api.remove_volume(volume, force=True)


def _run_container(api: Any, image: str, name: str, script: str, volume: str) -> str:
    container = api.create_container(
        image,
        command=["sh", "-c", script],
        name=name,
        volumes=["/data"],
        host_config=api.create_host_config(
            network_mode="none", binds={volume: {"bind": "/data", "mode": "rw"}}
        ),
        network_disabled=True,
    )
    api.start(container["Id"])
    status = api.wait(container["Id"], timeout=30)
    assert status["StatusCode"] == 0, api.logs(container["Id"])
    return container["Id"]


@pytest.fixture
def attachments_table(pg_dsn: str, pg_schema: str) -> str:
    """A small attachments table in the test's schema with TOASTed rows; returns ``schema.table``."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.document_attachments (id bigserial PRIMARY KEY, bytes bytea,"
                " storage_backend text NOT NULL DEFAULT 'db', storage_key text, created_at timestamptz DEFAULT now(),"
                " content_type text, filename text)"
            ).format(sql.Identifier(pg_schema))
        )
        # 20 rows of 20000 random bytes each: incompressible, so they go to TOAST.
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.document_attachments (bytes)"
                " SELECT decode(string_agg(md5(random()::text || i::text || j::text), ''), 'hex')"
                " FROM generate_series(1, 20) AS i, generate_series(1, 1250) AS j GROUP BY i"
            ).format(sql.Identifier(pg_schema))
        )
    return f"{pg_schema}.document_attachments"
