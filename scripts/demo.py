"""Run the whole `attachment_maintenance` chain in Airflow on generated demo data.

Called by `make demo`, after the services are up and `.local/services.env` is exported. Steps:
generate the demo table (and upload the objects of the rows that start offloaded), start a
local API and a proxy for the report to measure, run `airflow dags test attachment_maintenance`,
then print the report's Markdown summary and where its files are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "scripts")]

from demo_api import DEMO_TOKEN, start_servers  # noqa: E402

REPORTS_DIR = ROOT / ".local" / "reports"
VENV_BIN = Path(sys.executable).parent


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def clear_demo_prefix(bucket: str, prefix: str) -> None:
    """Empty the demo bucket's attachment prefix, so a second demo starts from the same state."""
    from attachment_ops.storage import S3Settings, make_s3_client

    client = make_s3_client(
        S3Settings(
            endpoint_url=os.environ["S3_ENDPOINT_URL"],
            access_key_id=os.environ["S3_ACCESS_KEY"],
            secret_access_key=os.environ["S3_SECRET_KEY"],
        )
    )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


def demo_config(api_port: int, proxy_port: int) -> dict:
    endpoints = []
    for name, path, query in (
        ("customers_page", "/api/customers", {"page": "1", "page_size": "25"}),
        ("customers_all", "/api/customers/all", {}),
        ("items_all", "/api/items/all", {}),
    ):
        for connection in ("api", "api_proxy"):
            endpoints.append(
                {"name": name, "method": "GET", "path": path, "query": query, "connection": connection}
            )
    return {
        "preflight": {
            "disk_paths": [os.environ["PG_DATA_DIR"], os.environ.get("S3_DATA_DIR", str(ROOT / ".local"))],
            "docker_host": os.environ.get("DOCKER_HOST"),
            "docker_vm_probe_image": os.environ.get("DOCKER_PROBE_IMAGE"),
        },
        # 20 samples make p95 a measured percentile rather than the slowest request.
        "report": {"endpoints": endpoints, "local_dir": str(REPORTS_DIR), "samples": 20},
    }


def main() -> int:
    timings: dict[str, float] = {}
    bucket, prefix = os.environ.get("S3_BUCKET", "attachments"), "attachments/"

    started = step("Generating the demo attachments table (seed 42)")
    clear_demo_prefix(bucket, prefix)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "attachment_ops.demo_data",
            "--dsn",
            os.environ["APP_PG_DSN"],
            "--scale",
            "demo",
            "--seed",
            "42",
            "--reset",
            "--bucket",
            bucket,
            "--prefix",
            prefix,
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "include")},
    )
    timings["generate"] = time.monotonic() - started

    api_port, proxy_port, _servers = start_servers()
    env = dict(os.environ)
    env["AIRFLOW_CONN_APP_API"] = json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": api_port,
            "schema": "http",
            "extra": {"auth_type": "bearer", "token": DEMO_TOKEN},
        }
    )
    env["AIRFLOW_CONN_APP_API_PROXY"] = json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": proxy_port,
            "schema": "http",
            "extra": {"auth_type": "bearer", "token": DEMO_TOKEN},
        }
    )
    env["AIRFLOW_VAR_MAINTENANCE_CONFIG"] = json.dumps(demo_config(api_port, proxy_port))

    started = step("Running attachment_maintenance with `airflow dags test`")
    conf = {"limit": 1000, "batch_rows": 25, "reclaim": "none"}
    log_file = ROOT / ".local" / "demo-dags-test.log"
    with open(log_file, "w") as log:
        result = subprocess.run(
            [str(VENV_BIN / "airflow"), "dags", "test", "attachment_maintenance", "--conf", json.dumps(conf)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    timings["chain"] = time.monotonic() - started
    states = [
        line
        for line in log_file.read_text(errors="replace").splitlines()
        if "Marking run" in line or "DagRun Finished" in line or "dag_run_state" in line
    ]
    print("\n".join(states[-3:]))
    if result.returncode != 0:
        print(f"airflow dags test failed with exit code {result.returncode}; full log: {log_file}")
        print("\n".join(log_file.read_text(errors="replace").splitlines()[-40:]))
        return 1

    reports = sorted(REPORTS_DIR.glob("*/report.md"))
    if not reports:
        print(f"No report was written under {REPORTS_DIR}; see {log_file}")
        return 1
    latest = reports[-1].parent
    print(reports[-1].read_text())
    print(
        f"\nReport: {latest / 'report.html'}\n        {latest / 'report.json'}\n        {latest / 'report.md'}"
    )
    print(
        f"Also in bucket '{bucket}' under reports/ (listed in the Airflow UI: make airflow, then Browse > Benchmark reports)."
    )
    print(f"Task log of the whole run: {log_file}")
    print("Timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
