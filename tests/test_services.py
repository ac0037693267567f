"""The local services start and stop cleanly, twice in a row, from the project's own script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATTACHMENT_OPS_STATE_DIR": str(state_dir)}
    return subprocess.run([*SERVICES, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.docker
def test_services_cycle_twice(tmp_path):
    state_dir = tmp_path / "state"
    try:
        for cycle in (1, 2):
            started = run(state_dir, "up", "postgres", "s3", "docker")
            assert started.returncode == 0, started.stderr
            state = json.loads((state_dir / "services.json").read_text())
            ports = {"postgres": state["postgres"]["port"], "s3": state["s3"]["port"]}
            assert all(port_open(port) for port in ports.values()), cycle
            env_lines = (state_dir / "services.env").read_text()
            dsn = next(
                line.split("=", 1)[1].strip("'")
                for line in env_lines.splitlines()
                if line.startswith("export APP_PG_DSN=")
            )
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            docker = subprocess.run(
                ["docker", "-H", f"unix://{state['docker']['socket']}", "info"],
                capture_output=True,
                timeout=30,
            )
            assert docker.returncode == 0

            stopped = run(state_dir, "down", "postgres", "s3", "docker")

            assert stopped.returncode == 0, stopped.stderr
            assert not any(port_open(port) for port in ports.values()), cycle
            assert not Path(state["docker"]["socket"]).exists()
    finally:
        run(state_dir, "clean")


def test_missing_weed_is_named(tmp_path):
    env = {**os.environ, "ATTACHMENT_OPS_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    script = (
        "import sys; sys.argv = ['services.py', 'up', 's3'];"
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r}); import services;"
        "services.VENV_BIN = services.Path('/nonexistent'); sys.exit(services.main())"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert "The SeaweedFS binary 'weed' was not found" in result.stderr
