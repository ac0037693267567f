"""Run Airflow's components on 127.0.0.1 for the UI and the end-to-end tests.

`airflow standalone` would start the scheduler's and the triggerer's log servers, which listen on
every interface (ports 8793 and 8794, fixed). This launcher starts the api-server on 127.0.0.1
and the scheduler and triggerer with `--skip-serve-logs`, plus the dag-processor, so nothing
listens beyond loopback. Task logs are still readable in the UI from the shared log folder.

Usage: `python scripts/airflow_local.py [--port N]` (default: AIRFLOW__API__PORT or 8080); Ctrl+C
or SIGTERM stops every component. The admin password is written by the api-server to
`$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def component_commands(port: int) -> dict[str, list[str]]:
    airflow = str(VENV_BIN / "airflow")
    return {
        "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
    }


def local_environment(port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment the components need: the venv on PATH and the API on 127.0.0.1."""
    env = dict(base if base is not None else os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{port}"
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
    return env


def start(port: int, env: dict[str, str], log_dir: Path) -> list[subprocess.Popen]:
    """Start every component in its own process group, logging to ``log_dir/<component>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for name, command in component_commands(port).items():
        log = open(log_dir / f"{name}.log", "ab")
        processes.append(
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    return processes


def stop(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("AIRFLOW__API__PORT") or 8080),
        help="port of the api-server on 127.0.0.1 (default: AIRFLOW__API__PORT or 8080)",
    )
    args = parser.parse_args()
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    env = local_environment(args.port)
    processes = start(args.port, env, home / "component-logs")
    print(
        f"Airflow UI: http://127.0.0.1:{args.port}/ (user admin; password in "
        f"{home / 'simple_auth_manager_passwords.json.generated'}). Logs: {home / 'component-logs'}. "
        "Ctrl+C stops it.",
        flush=True,
    )
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stopping:
            for process, name in zip(processes, component_commands(args.port), strict=True):
                if process.poll() is not None:
                    print(
                        f"error: the {name} exited with code {process.returncode}; see "
                        f"{home / 'component-logs' / (name + '.log')}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(1)
    finally:
        stop(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
