"""A real Airflow api-server with the project's report plugin, on a free 127.0.0.1 port.

Its plugins folder contains a link to plugins/benchmark_reports.py and a probe plugin whose route
has no authentication of its own.

It runs in a private AIRFLOW_HOME (a copy of the project's migrated metadata database), with the
simple auth manager and two users, ``admin`` and ``viewer``. Reports are read from a bucket made
for the session. The server is started once per session and stopped by its process group id.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"admin": "admin-" + secrets.token_hex(8), "viewer": "viewer-" + secrets.token_hex(8)}
STARTUP_TIMEOUT_SECONDS = 180
# A plugin route without any authentication of its own, to show what Airflow does for it.
OPEN_PROBE_PLUGIN = """
from fastapi import FastAPI

from airflow.plugins_manager import AirflowPlugin

app = FastAPI()


@app.get("/")
def probe() -> dict:
    return {"open": True}


class OpenProbePlugin(AirflowPlugin):
    name = "open_probe"
    fastapi_apps = [{"app": app, "url_prefix": "/open-probe", "name": "open probe"}]
"""


@dataclass(frozen=True)
class ApiServer:
    base_url: str
    bucket: str
    log_path: Path

    def token(self, user: str) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": user, "password": PASSWORDS[user]},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["access_token"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_metadata_database(target: Path) -> None:
    """Copy the project's migrated SQLite database with SQLite's backup API, consistent even mid-write."""
    source_path = Path(os.environ.get("AIRFLOW_HOME", ROOT / ".local" / "airflow")) / "airflow.db"
    if not source_path.is_file():
        pytest.fail(f"{source_path} is missing; run `make airflow-init` to migrate Airflow's database.")
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    destination = sqlite3.connect(target)
    with destination:
        source.backup(destination)
    source.close()
    destination.close()


@pytest.fixture(scope="session")
def report_bucket(s3_client) -> Iterator[str]:
    name = f"t-plugin-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=item["Key"])
    s3_client.delete_bucket(Bucket=name)


def prepare_home(home: Path) -> Path:
    """Fill a private AIRFLOW_HOME: metadata database, passwords, empty dags and the plugins folder."""
    (home / "dags").mkdir()
    copy_metadata_database(home / "airflow.db")
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    plugins = home / "plugins"
    plugins.mkdir()
    (plugins / "benchmark_reports.py").symlink_to(ROOT / "plugins" / "benchmark_reports.py")
    (plugins / "open_probe.py").write_text(OPEN_PROBE_PLUGIN)
    return plugins


def server_environment(home: Path, plugins: Path, bucket: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW_VAR_MAINTENANCE_CONFIG": json.dumps({"storage": {"bucket": bucket}}),
        "PYTHONPATH": str(ROOT / "include"),
    }


def wait_until_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"airflow api-server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{base_url}/api/v2/version", timeout=2).status_code in (200, 401):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"airflow api-server did not respond within {STARTUP_TIMEOUT_SECONDS} s:\n"
                f"{log_path.read_text()[-3000:]}"
            )
        time.sleep(0.5)


@pytest.fixture(scope="session")
def api_server(tmp_path_factory, report_bucket) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("airflow-home")
    plugins = prepare_home(home)
    port = free_port()
    command = [
        str(ROOT / ".venv" / "bin" / "airflow"),
        "api-server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--workers", "1", "--apps", "core"]

    log_path = home / "api-server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=server_environment(home, plugins, report_bucket),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, base_url, log_path)
        yield ApiServer(base_url=base_url, bucket=report_bucket, log_path=log_path)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
