"""Run every preflight check and assemble the report.

Docker, Postgres and S3 are checked in parallel threads, each bounded by its own timeouts. The
disk checks run last, because the Docker data root and the Postgres data directory join the
paths to check when they are on this host.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from attachment_ops.config import MaintenanceConfig
from attachment_ops.preflight.disk import (
    DiskTarget,
    DiskThresholds,
    check_disks,
    default_disk_targets,
    parse_disk_paths,
)
from attachment_ops.preflight.model import CheckResult, PreflightReport, Status

if TYPE_CHECKING:
    from attachment_ops.preflight.docker_engine import DockerFacts
    from attachment_ops.preflight.postgres import PostgresFacts
    from attachment_ops.storage import S3Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_preflight(
    config: MaintenanceConfig,
    *,
    postgres_conninfo: str | None,
    s3_settings: S3Settings | None,
    planned_bytes: int = 0,
    rewrite_bytes: int = 0,
    disk_history: Mapping[str, Sequence[tuple[datetime | float, int]]] | None = None,
    docker_host: str | None = None,
) -> PreflightReport:
    """Run the disk, Docker, Postgres and S3 checks and return the report.

    A failed check is a FAIL row in the report, not an exception.

    :param planned_bytes: the offload's planned bytes in flight plus temp and WAL estimate. It is
        multiplied by ``preflight.headroom_factor`` and subtracted from the free space of each
        path with "offload" headroom.
    :param rewrite_bytes: the size a full reclaim rewrites (0 when none is planned), multiplied by
        ``reclaim.rewrite_headroom_factor`` for paths with "rewrite" headroom.
    :param disk_history: earlier (timestamp, free bytes) samples by path, for example from
        ``load_disk_history``. The report's ``disk_samples`` are this run's samples to store.
    :param docker_host: overrides ``preflight.docker_host`` and ``DOCKER_HOST``.
    :raises ConfigurationError: when ``preflight.disk_paths`` is malformed.
    """
    started = time.time()
    section = config.section("preflight")
    targets = parse_disk_paths(section["disk_paths"])
    if section["disk_default_paths"]:
        targets += default_disk_targets()

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="preflight") as pool:
        docker_future = pool.submit(_run_docker, section, docker_host) if section["docker_enabled"] else None
        postgres_future = pool.submit(_run_postgres, postgres_conninfo, config)
        s3_future = pool.submit(_run_s3, s3_settings, config)
        docker_results, docker_facts = docker_future.result() if docker_future else ([], None)
        postgres_results, postgres_facts = postgres_future.result()
        s3_results = s3_future.result()

    if section["disk_default_paths"]:
        targets += _service_disk_targets(docker_facts, postgres_facts)
    disk_results, samples = _guard(
        "disk",
        lambda: check_disks(
            targets,
            DiskThresholds.from_config(section, config.section("reclaim")),
            planned_bytes=planned_bytes,
            rewrite_bytes=rewrite_bytes,
            history=disk_history,
        ),
        lambda row: ([row], []),
    )

    report = PreflightReport(
        results=tuple(disk_results + docker_results + postgres_results + s3_results),
        started_at=started,
        duration_seconds=time.time() - started,
        disk_samples=tuple(samples),
    )
    log.info("%s\n%s", report.summary(), report.as_table())
    return report


def _guard(group: str, function: Callable[[], T], on_error: Callable[[CheckResult], T]) -> T:
    """Run one group of checks, turning an unexpected exception into an UNKNOWN row."""
    try:
        return function()
    # A bug in one check must not hide the results of the others.
    except Exception as error:
        log.exception("Preflight %s checks raised unexpectedly", group)
        return on_error(
            CheckResult(
                group=group,
                name=f"{group} checks",
                status=Status.UNKNOWN,
                value=f"the check itself failed: {type(error).__name__}: {error}",
                hint="This is a bug in the preflight checks. The task log has the traceback.",
                error=type(error).__name__,
            )
        )


def _run_docker(
    section: Mapping[str, Any], docker_host: str | None
) -> tuple[list[CheckResult], DockerFacts | None]:
    from attachment_ops.preflight.docker_engine import check_docker

    return _guard("docker", lambda: check_docker(section, docker_host=docker_host), lambda row: ([row], None))


def _run_postgres(
    conninfo: str | None, config: MaintenanceConfig
) -> tuple[list[CheckResult], PostgresFacts | None]:
    if not conninfo:
        return [_not_configured("postgres", "no Postgres connection was given")], None
    from attachment_ops.preflight.postgres import check_postgres

    return _guard("postgres", lambda: check_postgres(conninfo, config), lambda row: ([row], None))


def _run_s3(settings: S3Settings | None, config: MaintenanceConfig) -> list[CheckResult]:
    if settings is None:
        return [_not_configured("s3", "no S3 connection was given")]
    from attachment_ops.preflight.s3 import check_s3

    return _guard("s3", lambda: check_s3(settings, config), lambda row: [row])


def _not_configured(group: str, why: str) -> CheckResult:
    return CheckResult(
        group=group,
        name=f"{group} checks",
        status=Status.UNKNOWN,
        value=f"not checked: {why}",
        hint=f"Pass the {group} connection to run_preflight.",
    )


def _service_disk_targets(docker: DockerFacts | None, postgres: PostgresFacts | None) -> list[DiskTarget]:
    """Add the Docker data root and the Postgres data directory when they are paths on this host."""
    from attachment_ops.preflight.docker_engine import socket_path

    targets = []
    if (
        docker is not None
        and docker.reachable
        and docker.data_root
        and not docker.is_docker_desktop
        and socket_path(docker.docker_host)
        and os.path.isdir(docker.data_root)
    ):
        targets.append(DiskTarget(docker.data_root, "docker data root"))
    if postgres is not None and postgres.local_data_directory:
        targets.append(
            DiskTarget(postgres.local_data_directory, "postgres data", frozenset({"offload", "rewrite"}))
        )
    return targets
