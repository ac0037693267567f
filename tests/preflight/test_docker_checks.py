from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from attachment_ops.config import DEFAULTS
from attachment_ops.preflight.docker_engine import (
    PROBE_LABEL,
    check_docker,
    check_docker_disk_usage,
    parse_df_output,
    parse_disk_usage,
)
from attachment_ops.preflight.model import Status
from tests.preflight.helpers import MIB


def section(**overrides: Any) -> dict[str, Any]:
    values = dict(DEFAULTS["preflight"])
    values.update(overrides)
    return values


def test_healthy_engine_passes(docker_host: str) -> None:
    results, facts = check_docker(section(), docker_host=docker_host)
    assert [(result.name, result.status) for result in results] == [
        ("docker engine", Status.PASS),
        ("docker storage", Status.PASS),
        ("docker disk usage", Status.PASS),
    ]
    assert facts.reachable is True
    assert facts.data_root == os.environ["DOCKER_DATA_ROOT"]
    assert results[0].metrics["api_version"] == facts.api_version
    assert results[1].metrics["driver"] == "overlay2"


def test_docker_host_from_environment(docker_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    _, facts = check_docker(section())
    assert facts.docker_host == docker_host
    assert facts.reachable is True


@pytest.mark.parametrize(("required", "expected"), [(False, Status.WARN), (True, Status.FAIL)])
def test_missing_socket(socket_dir: Path, required: bool, expected: Status) -> None:
    host = f"unix://{socket_dir}/absent.sock"
    results, facts = check_docker(section(docker_required=required), docker_host=host)
    assert len(results) == 1
    assert results[0].status is expected
    assert results[0].metrics["reason"] == "missing"
    assert results[0].value == f"Docker socket {socket_dir}/absent.sock does not exist"
    assert facts.reachable is False


def test_silent_daemon_times_out(silent_socket: Any) -> None:
    started = time.monotonic()
    results, _ = check_docker(section(docker_timeout_seconds=1), docker_host=f"unix://{silent_socket.path}")
    elapsed = time.monotonic() - started
    assert results[0].metrics["reason"] == "timeout"
    assert results[0].status is Status.WARN
    assert "accepted the connection but did not respond within 1 s (timed out)" in results[0].value
    assert silent_socket.accepted >= 1
    assert 1.0 <= elapsed < 3.0


def test_stale_socket_is_refused(socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()
    results, _ = check_docker(section(docker_required=True), docker_host=f"unix://{path}")
    assert results[0].metrics["reason"] == "refused"
    assert results[0].status is Status.FAIL


def run_as_nobody(function: Any) -> Any:
    """Run ``function`` in a forked child with uid and gid 65534 and return its JSON result.

    Everything the child needs must be imported before the fork, because the interpreter's own
    files may live under a folder that the unprivileged user cannot read.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            payload = json.dumps(function())
        except BaseException as error:  # noqa: BLE001 - the child reports every error to the parent
            payload = json.dumps({"child_error": repr(error)})
        os.write(write_fd, payload.encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def test_permission_denied_on_socket(docker_host: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("This test switches to uid 65534 and must run as root (CI runs as root).")
    check_docker(section(), docker_host=docker_host)

    def check() -> dict[str, Any]:
        results, _ = check_docker(section(docker_required=True), docker_host=docker_host)
        return results[0].to_dict()

    result = run_as_nobody(check)
    assert result.get("child_error") is None
    assert result["metrics"]["reason"] == "permission"
    assert result["status"] == "FAIL"
    assert result["value"].startswith("permission denied on Docker socket")


def test_disk_usage_counts_objects(docker_host: str, docker_api: Any, probe_image: str, request: Any) -> None:
    before = check_docker_disk_usage(docker_host, None, 30).metrics
    image_size = docker_api.inspect_image(probe_image)["Size"]
    objects = request.getfixturevalue("docker_objects")
    after = check_docker_disk_usage(docker_host, None, 30).metrics
    raw = docker_api.df()
    container = next(item for item in raw["Containers"] if item["Id"] == objects["container"])

    assert after["shape"] == "legacy"
    assert container["SizeRw"] == 32 * 1024
    assert after["containers"]["total_count"] - before["containers"]["total_count"] == 1
    assert after["containers"]["size_bytes"] - before["containers"]["size_bytes"] == 32 * 1024
    assert after["containers"]["reclaimable_bytes"] - before["containers"]["reclaimable_bytes"] == 32 * 1024
    assert after["volumes"]["total_count"] - before["volumes"]["total_count"] == 2
    assert after["volumes"]["active_count"] - before["volumes"]["active_count"] == 1
    assert after["volumes"]["size_bytes"] - before["volumes"]["size_bytes"] == 80 * 1024
    assert after["volumes"]["reclaimable_bytes"] - before["volumes"]["reclaimable_bytes"] == 16 * 1024
    assert after["images"]["active_count"] - before["images"]["active_count"] == 1
    assert before["images"]["reclaimable_bytes"] - after["images"]["reclaimable_bytes"] == image_size


def test_disk_usage_timeout_is_unknown(silent_socket: Any) -> None:
    result = check_docker_disk_usage(f"unix://{silent_socket.path}", "1.41", 1)
    assert result.status is Status.UNKNOWN
    assert result.metrics["reason"] == "timeout"
    assert result.value.startswith("GET /system/df: Docker engine at")


LEGACY_PAYLOAD = {
    "LayersSize": 3000,
    "Images": [
        {"Id": "a", "Containers": 1, "Size": 2000, "SharedSize": 500},
        {"Id": "b", "Containers": 0, "Size": 1500, "SharedSize": 500},
        {"Id": "c", "Containers": 0, "Size": 700, "SharedSize": -1},
    ],
    "Containers": [
        {"Id": "r", "State": "running", "SizeRw": 100},
        {"Id": "s", "State": "exited", "SizeRw": 40},
        {"Id": "p", "State": "paused", "SizeRw": 7},
    ],
    "Volumes": [
        {"Name": "used", "UsageData": {"RefCount": 1, "Size": 900}},
        {"Name": "loose", "UsageData": {"RefCount": 0, "Size": 300}},
        {"Name": "unsized", "UsageData": {"RefCount": 0, "Size": -1}},
    ],
    "BuildCache": [
        {"ID": "x", "Size": 50, "InUse": True, "Shared": False},
        {"ID": "y", "Size": 20, "InUse": False, "Shared": False},
        {"ID": "z", "Size": 999, "InUse": False, "Shared": True},
    ],
}

# The API 1.52+ shape, as documented for GET /system/df (ImageUsage etc., TotalSize, Reclaimable).
SUMMARY_PAYLOAD = {
    "ImageUsage": {"ActiveCount": 1, "TotalCount": 4, "TotalSize": 98765432, "Reclaimable": 12345678},
    "ContainerUsage": {"ActiveCount": 2, "TotalCount": 3, "TotalSize": 4096, "Reclaimable": 1024},
    "VolumeUsage": {"ActiveCount": 1, "TotalCount": 2, "TotalSize": 2048, "Reclaimable": 512},
    "BuildCacheUsage": {"ActiveCount": 0, "TotalCount": 1, "TotalSize": 64, "Reclaimable": 64},
}


@pytest.mark.parametrize(
    ("payload", "shape", "kind", "expected"),
    [
        (LEGACY_PAYLOAD, "legacy", "images", (3, 1, 3000, 1000)),
        (LEGACY_PAYLOAD, "legacy", "containers", (3, 2, 147, 40)),
        (LEGACY_PAYLOAD, "legacy", "volumes", (3, 1, 1200, 300)),
        (LEGACY_PAYLOAD, "legacy", "build_cache", (3, 1, 70, 20)),
        (SUMMARY_PAYLOAD, "summary", "images", (4, 1, 98765432, 12345678)),
        (SUMMARY_PAYLOAD, "summary", "containers", (3, 2, 4096, 1024)),
        (SUMMARY_PAYLOAD, "summary", "volumes", (2, 1, 2048, 512)),
        (SUMMARY_PAYLOAD, "summary", "build_cache", (1, 0, 64, 64)),
        (
            {"ImagesDiskUsage": {"TotalImages": 2, "ActiveImages": 1, "TotalSize": 10, "Reclaimable": 4}},
            "summary",
            "images",
            (2, 1, 10, 4),
        ),
        ({"ImageUsage": {"TotalCount": 1, "TotalSize": 10}}, "summary", "volumes", (0, 0, 0, 0)),
        (
            {"LayersSize": 0, "Images": [], "Containers": [], "Volumes": [], "BuildCache": None},
            "legacy",
            "build_cache",
            (0, 0, 0, 0),
        ),
    ],
)
def test_parse_disk_usage_shapes(
    payload: dict[str, Any], shape: str, kind: str, expected: tuple[int, int, int, int]
) -> None:
    usage = parse_disk_usage(payload)
    kind_usage = usage.kinds[kind]
    assert usage.shape == shape
    assert (
        kind_usage.total_count,
        kind_usage.active_count,
        kind_usage.size_bytes,
        kind_usage.reclaimable_bytes,
    ) == expected


def test_vm_probe_measures_engine_disk(docker_host: str, probe_image: str) -> None:
    results, facts = check_docker(section(docker_vm_probe_image=probe_image), docker_host=docker_host)
    probe = results[-1]
    stats = os.statvfs(facts.data_root)
    assert probe.name == "docker VM free space"
    assert probe.status is Status.PASS
    assert probe.metrics["total_bytes"] == stats.f_blocks * stats.f_frsize
    assert abs(probe.metrics["free_bytes"] - stats.f_bavail * stats.f_frsize) < 256 * MIB


def test_vm_probe_fail_threshold(docker_host: str, probe_image: str) -> None:
    huge = 1024**5
    results, _ = check_docker(
        section(
            docker_vm_probe_image=probe_image, docker_vm_fail_free_bytes=huge, docker_vm_warn_free_bytes=huge
        ),
        docker_host=docker_host,
    )
    assert results[-1].status is Status.FAIL
    assert results[-1].source == "configured preflight.docker_vm_fail_free_bytes"


def test_vm_probe_missing_image(docker_host: str, docker_api: Any) -> None:
    results, _ = check_docker(
        section(docker_vm_probe_image="attachment-ops/absent:none"), docker_host=docker_host
    )
    probe = results[-1]
    assert probe.status is Status.UNKNOWN
    assert probe.metrics["reason"] == "image_missing"
    assert "is not present in the engine" in probe.value
    assert docker_api.containers(all=True, filters={"label": PROBE_LABEL}) == []


def test_vm_probe_leaves_no_container(docker_host: str, docker_api: Any, probe_image: str) -> None:
    check_docker(section(docker_vm_probe_image=probe_image), docker_host=docker_host)
    assert docker_api.containers(all=True, filters={"label": PROBE_LABEL}) == []


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "Filesystem 1024-blocks Used Available Capacity Mounted on\noverlay 1000 400 600 40% /\n",
            (1024000, 614400),
        ),
        ("Filesystem 1024-blocks Used Available Capacity Mounted on\nmy disk 10 4 6 40% /\n", (10240, 6144)),
    ],
)
def test_parse_df_output(output: str, expected: tuple[int, int]) -> None:
    assert parse_df_output(output) == expected


@pytest.mark.parametrize("output", ["", "Filesystem 1024-blocks Used\n", "header\noverlay x y z 1% /\n"])
def test_parse_df_output_rejects(output: str) -> None:
    with pytest.raises(ValueError):
        parse_df_output(output)
