"""Checks of the docker-compose deployment that need no image: validity and security properties.

No registry is reachable where the tests run, so the stack is never started here. Debian's
docker-compose (1.29) validates and resolves the file with `.env.example`, and the tests assert the
properties on the resolved configuration and on the raw YAML.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
INCLUDE_TARGET = "/opt/airflow/include"
PROXY = "docker-socket-proxy"
AIRFLOW_IMAGE = "attachment-ops-airflow:3.3.2"
# Endpoints the Docker preflight checks call: /_ping, /version, /info and /system/df.
PROXY_ENDPOINTS = {"PING", "VERSION", "INFO", "SYSTEM"}
SECRET_PATTERN = re.compile(r"PASSWORD|SECRET|FERNET|AIRFLOW_CONN_")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines. A value in single quotes is literal, as Compose reads it."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key] = value
    return values


def run_compose_config(env_file: Path, tmp_dir: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed. Run `make system` (Debian package docker-compose).")
    # A clean environment, so variables exported for the local services cannot fill in for .env.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_dir)}
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
        cwd=tmp_dir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """The configuration as docker-compose resolves it with `.env.example`."""
    result = run_compose_config(ENV_EXAMPLE, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def airflow_services(config: dict) -> list[str]:
    return [name for name, service in config["services"].items() if service.get("image") == AIRFLOW_IMAGE]


def volume_parts(volume: str | dict) -> tuple[str, str, bool]:
    """Return source, target and whether the mount is read-only."""
    if isinstance(volume, dict):
        return str(volume.get("source", "")), str(volume.get("target", "")), bool(volume.get("read_only"))
    parts = volume.split(":")
    read_only = len(parts) == 3 and "ro" in parts[2].split(",")
    return parts[0], parts[1] if len(parts) > 1 else parts[0], read_only


# --- Validity ----------------------------------------------------------------------------------


def test_config_valid_with_example(resolved):
    assert "services" in resolved


def test_config_rejects_missing_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = run_compose_config(empty, tmp_path)
    assert result.returncode != 0
    assert "in .env" in result.stderr


@pytest.mark.parametrize(
    "service",
    [
        "postgres",
        "redis",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
        "minio",
        "minio-init",
        PROXY,
        "demo-app-db",
        "demo-data",
    ],
)
def test_service_defined(resolved, service):
    assert service in resolved["services"]


def test_executor_is_celery(resolved):
    environment = resolved["services"]["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@pytest.mark.parametrize("service", ["demo-app-db", "demo-data"])
def test_demo_services_need_profile(raw, service):
    assert raw["services"][service]["profiles"] == ["demo"]


def test_only_demo_services_have_profiles(raw):
    with_profiles = {name for name, service in raw["services"].items() if "profiles" in service}
    assert with_profiles == {"demo-app-db", "demo-data"}


def test_init_creates_offload_pool(resolved):
    script = resolved["services"]["airflow-init"]["command"][-1]
    assert "airflow pools set attachment_offload" in script


def test_init_creates_config_variable(resolved):
    script = resolved["services"]["airflow-init"]["command"][-1]
    assert "airflow variables set maintenance_config" in script


def test_minio_init_creates_bucket(resolved):
    script = resolved["services"]["minio-init"]["command"][-1]
    assert 'mc mb --ignore-existing "local/$$ATTACHMENTS_BUCKET"' in script


@pytest.mark.parametrize(
    ("service", "shell"),
    [("airflow-init", "bash"), ("minio-init", "sh"), ("demo-data", "bash")],
)
def test_embedded_script_parses(resolved, service, shell):
    # Compose writes a literal $ as $$ in its output; the container's shell sees a single $.
    script = resolved["services"][service]["command"][-1].replace("$$", "$")
    result = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- The Docker socket -------------------------------------------------------------------------


def test_socket_mounted_only_by_proxy(resolved):
    mounting = {
        name
        for name, service in resolved["services"].items()
        for volume in service.get("volumes", [])
        if any("docker.sock" in part for part in volume_parts(volume)[:2])
    }
    assert mounting == {PROXY}


def test_no_writable_socket_mount(resolved):
    writable = [
        name
        for name, service in resolved["services"].items()
        for volume in service.get("volumes", [])
        if "docker.sock" in volume_parts(volume)[0] and not volume_parts(volume)[2]
    ]
    assert writable == []


def test_proxy_socket_read_only(resolved):
    mounts = [volume_parts(volume) for volume in resolved["services"][PROXY]["volumes"]]
    assert mounts == [("/var/run/docker.sock", "/var/run/docker.sock", True)]


def test_proxy_rejects_post(resolved):
    assert str(resolved["services"][PROXY]["environment"]["POST"]) == "0"


def test_proxy_allows_only_used_endpoints(resolved):
    environment = resolved["services"][PROXY]["environment"]
    allowed = {key for key, value in environment.items() if str(value) == "1"}
    assert allowed == PROXY_ENDPOINTS


def test_proxy_publishes_no_port(resolved):
    assert "ports" not in resolved["services"][PROXY]


def test_proxy_network_internal(resolved):
    assert resolved["networks"]["docker-api"]["internal"] is True


def test_proxy_only_on_internal_network(resolved):
    assert list(resolved["services"][PROXY]["networks"]) == ["docker-api"]


def test_only_worker_reaches_proxy(resolved):
    members = {
        name for name, service in resolved["services"].items() if "docker-api" in service.get("networks", {})
    }
    assert members == {"airflow-worker", PROXY}


def test_worker_docker_host_is_proxy(resolved):
    environment = resolved["services"]["airflow-worker"]["environment"]
    assert environment["DOCKER_HOST"] == f"tcp://{PROXY}:2375"


def test_no_privileged_service(resolved):
    assert [name for name, service in resolved["services"].items() if service.get("privileged")] == []


# --- Airflow services: the package on the path -------------------------------------------------


def test_airflow_services_found(resolved):
    assert set(airflow_services(resolved)) >= {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
    }


@pytest.mark.parametrize(
    "service",
    [
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
        "demo-data",
    ],
)
def test_pythonpath_has_include_mount(resolved, service):
    config = resolved["services"][service]
    targets = {volume_parts(volume)[1] for volume in config["volumes"]}
    assert INCLUDE_TARGET in targets
    assert INCLUDE_TARGET in config["environment"]["PYTHONPATH"].split(":")


@pytest.mark.parametrize("folder", ["dags", "plugins", "include"])
def test_code_mounted_read_only(resolved, folder):
    mounts = {
        volume_parts(volume)[1]: volume_parts(volume)
        for volume in resolved["services"]["airflow-worker"]["volumes"]
    }
    source, _, read_only = mounts[f"/opt/airflow/{folder}"]
    assert source == str(ROOT / folder)
    assert read_only


@pytest.mark.parametrize(
    "connection", ["AIRFLOW_CONN_APP_POSTGRES", "AIRFLOW_CONN_ATTACHMENTS_S3", "AIRFLOW_CONN_APP_API"]
)
def test_worker_gets_connection(resolved, env_example, connection):
    assert resolved["services"]["airflow-worker"]["environment"][connection] == env_example[connection]


# --- Ports -------------------------------------------------------------------------------------


def published_ports(config: dict) -> list[tuple[str, str | dict]]:
    return [(name, port) for name, service in config["services"].items() for port in service.get("ports", [])]


def test_some_ports_published(resolved):
    assert {name for name, _ in published_ports(resolved)} == {"airflow-apiserver", "minio"}


@pytest.mark.parametrize("source", ["resolved", "raw"])
def test_ports_bind_loopback_only(request, source):
    config = request.getfixturevalue(source)
    for name, port in published_ports(config):
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"{name} publishes {port!r}"


# --- .env.example ------------------------------------------------------------------------------


def referenced_variables() -> set[str]:
    # ${NAME...} is a Compose variable, while $${NAME} is a literal $ for the container's shell.
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))


def test_example_defines_every_variable(env_example):
    assert referenced_variables() - set(env_example) == set()


def test_example_defines_no_unused_variable(env_example):
    assert set(env_example) - referenced_variables() == set()


def test_secrets_have_no_defaults():
    text = COMPOSE_FILE.read_text()
    defaulted = {name for name in re.findall(r"\$\{([A-Za-z0-9_]+):-", text) if SECRET_PATTERN.search(name)}
    assert defaulted == set()


@pytest.mark.parametrize(
    ("connection", "conn_type"),
    [
        ("AIRFLOW_CONN_APP_POSTGRES", "postgres"),
        ("AIRFLOW_CONN_ATTACHMENTS_S3", "aws"),
        ("AIRFLOW_CONN_APP_API", "http"),
    ],
)
def test_example_connection_type(env_example, connection, conn_type):
    assert json.loads(env_example[connection])["conn_type"] == conn_type


def test_example_s3_connection_path_style(env_example):
    extra = json.loads(env_example["AIRFLOW_CONN_ATTACHMENTS_S3"])["extra"]
    assert extra["endpoint_url"] == "http://minio:9000"
    assert extra["config_kwargs"]["s3"]["addressing_style"] == "path"


def test_example_s3_keys_match_minio_user(env_example):
    connection = json.loads(env_example["AIRFLOW_CONN_ATTACHMENTS_S3"])
    assert connection["login"] == env_example["S3_ACCESS_KEY"]
    assert connection["password"] == env_example["S3_SECRET_KEY"]


def test_example_postgres_matches_demo_db(env_example):
    connection = json.loads(env_example["AIRFLOW_CONN_APP_POSTGRES"])
    assert connection["host"] == "demo-app-db"
    assert connection["password"] == env_example["DEMO_APP_DB_PASSWORD"]


def test_example_fernet_key_valid(env_example):
    import base64

    assert len(base64.urlsafe_b64decode(env_example["AIRFLOW_FERNET_KEY"])) == 32


def test_real_env_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert result.returncode == 0


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_base_image():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM apache/airflow:3.3.2"]


def test_dockerfile_installs_requirements():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.txt" in text
    assert re.search(r"RUN pip install --no-cache-dir -r \S+requirements\.txt", text)


def test_dockerignore_sends_only_requirements():
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules == ["*", "!requirements.txt"]
