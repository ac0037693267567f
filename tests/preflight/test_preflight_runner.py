from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from attachment_ops.errors import PreflightFailed
from attachment_ops.preflight import Status, raise_for_failures, run_preflight
from tests.preflight.helpers import MIB, fill_file


@pytest.fixture
def healthy_config(
    make_config: Any, attachments_table: str, bucket: str, probe_image: str, docker_host: str, tmp_path: Path
) -> Any:
    return make_config(
        attachments={"table": attachments_table},
        storage={"bucket": bucket},
        preflight={
            "disk_paths": [{"path": str(tmp_path), "label": "work", "headroom": ["offload"]}],
            "docker_host": docker_host,
            "docker_vm_probe_image": probe_image,
        },
    )


def test_healthy_run_has_no_fail(healthy_config: Any, pg_dsn: str, s3_settings: Any) -> None:
    report = run_preflight(
        healthy_config,
        postgres_conninfo=pg_dsn,
        s3_settings=s3_settings,
        planned_bytes=MIB,
        rewrite_bytes=MIB,
    )
    groups = {result.group for result in report.results}
    assert report.failed == []
    assert groups == {"disk", "docker", "postgres", "s3"}
    assert raise_for_failures(report) is None


def test_healthy_run_checks_service_paths(
    healthy_config: Any, pg_dsn: str, s3_settings: Any, tmp_path: Path
) -> None:
    report = run_preflight(healthy_config, postgres_conninfo=pg_dsn, s3_settings=s3_settings)
    labels = " ".join(result.name for result in report.results if result.group == "disk")
    measured = {result.metrics.get("path") for result in report.results if result.group == "disk"}
    assert "temp" in labels
    assert "docker data root" in labels
    assert "postgres data" in labels
    assert report.disk_samples[0].path == str(tmp_path)
    assert {sample.path for sample in report.disk_samples} <= measured


def test_report_dict_is_small_json(healthy_config: Any, pg_dsn: str, s3_settings: Any) -> None:
    report = run_preflight(healthy_config, postgres_conninfo=pg_dsn, s3_settings=s3_settings)
    text = json.dumps(report.to_dict())
    assert len(text) < 16 * 1024
    assert json.loads(text)["status"] == report.status.value


def test_full_disk_fails_the_run(small_fs: Path, make_config: Any) -> None:
    fill_file(small_fs / "fill", 15 * MIB + MIB // 2)
    config = make_config(
        preflight={"disk_paths": [str(small_fs)], "disk_default_paths": False, "docker_enabled": False}
    )
    report = run_preflight(config, postgres_conninfo=None, s3_settings=None, planned_bytes=MIB)
    assert [(result.name, result.status) for result in report.results] == [
        ("disk configured: free space", Status.FAIL),
        ("disk configured: free inodes", Status.PASS),
        ("disk configured: offload headroom", Status.FAIL),
        ("postgres checks", Status.UNKNOWN),
        ("s3 checks", Status.UNKNOWN),
    ]
    with pytest.raises(PreflightFailed) as raised:
        raise_for_failures(report)
    assert f"512.0 KiB free of 16.0 MiB (3.1%) on {small_fs}" in str(raised.value)
    assert "2 of 5 checks blocking" in str(raised.value)


def test_history_adds_time_to_full(small_fs: Path, make_config: Any) -> None:
    fill_file(small_fs / "fill", 8 * MIB)
    now = time.time()
    history = {str(small_fs): [(now - 7200, 10 * MIB), (now - 3600, 9 * MIB)]}
    config = make_config(
        preflight={
            "disk_paths": [str(small_fs)],
            "disk_default_paths": False,
            "docker_enabled": False,
            "disk_fail_free_bytes": MIB,
            "disk_warn_free_bytes": 2 * MIB,
        }
    )
    report = run_preflight(config, postgres_conninfo=None, s3_settings=None, disk_history=history)
    fill_rows = [result for result in report.results if result.name == "disk configured: time to full"]
    assert len(fill_rows) == 1
    assert fill_rows[0].status is Status.WARN


def test_unreachable_docker_required_fails(make_config: Any, tmp_path: Path) -> None:
    config = make_config(
        preflight={"disk_default_paths": False, "docker_required": True, "docker_timeout_seconds": 2}
    )
    report = run_preflight(
        config, postgres_conninfo=None, s3_settings=None, docker_host=f"unix://{tmp_path}/absent.sock"
    )
    assert [result.name for result in report.failed] == ["docker engine"]


def test_broken_check_becomes_unknown(make_config: Any) -> None:
    config = make_config(preflight={"disk_default_paths": False, "docker_enabled": False})
    report = run_preflight(config, postgres_conninfo=None, s3_settings="not S3Settings")  # type: ignore[arg-type]
    s3_rows = [result for result in report.results if result.group == "s3"]
    assert [(result.name, result.status) for result in s3_rows] == [("s3 checks", Status.UNKNOWN)]
    assert s3_rows[0].error == "AttributeError"
    assert s3_rows[0].value.startswith("the check itself failed: AttributeError")
