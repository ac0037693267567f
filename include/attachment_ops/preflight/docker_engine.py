"""Docker engine checks through the Docker SDK: reachable, version, storage, disk usage, VM free space.

``docker.DockerClient`` requests the daemon's API version in its constructor, so a missing
socket, a denied permission or a hung daemon raises from the constructor. The constructor is
therefore inside the same error handling as every later call. The Engine API
reports no free-space figure. On Docker Desktop the engine's disk is a VM image that the host
disk checks cannot see, so an optional probe runs ``df`` in a throwaway container.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from attachment_ops.preflight.disk import describe_source
from attachment_ops.preflight.model import CheckResult, Status, format_bytes

log = logging.getLogger(__name__)

GROUP = "docker"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
PROBE_LABEL = "attachment_ops.preflight"


def resolve_docker_host(configured: str | None = None) -> str:
    """Return ``configured``, else ``$DOCKER_HOST``, else the default local socket."""
    return configured or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def socket_path(docker_host: str) -> str | None:
    """Return the file path of a ``unix://`` host, None for other schemes."""
    if docker_host.startswith("unix://"):
        return docker_host[len("unix://") :]
    return None


@dataclass(frozen=True)
class DockerFacts:
    """Engine facts that the runner uses besides the rows: reachability, API version, data root, OS."""

    reachable: bool
    docker_host: str
    api_version: str | None = None
    data_root: str | None = None
    operating_system: str | None = None

    @property
    def is_docker_desktop(self) -> bool:
        return "docker desktop" in (self.operating_system or "").lower()


@dataclass(frozen=True)
class DockerFailure:
    """A classified reason why the engine could not be used."""

    kind: str
    message: str
    hint: str


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    """Yield ``error`` and every exception it wraps (cause, context, args, urllib3's reason)."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(
            [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        )


def classify_docker_error(error: BaseException, docker_host: str, timeout_seconds: float) -> DockerFailure:
    """Tell apart a missing socket, a denied permission, a refused connection and a daemon that hangs."""
    import requests
    import urllib3

    path = socket_path(docker_host)
    chain = list(_exception_chain(error))
    where = path or docker_host
    if any(
        isinstance(
            item,
            requests.exceptions.Timeout | urllib3.exceptions.TimeoutError | TimeoutError | socket.timeout,
        )
        for item in chain
    ):
        return DockerFailure(
            "timeout",
            f"Docker engine at {docker_host} accepted the connection but did not respond within "
            f"{timeout_seconds:g} s (timed out)",
            "The daemon is hung or overloaded: check `docker info` and its log, restart it, and on Docker "
            "Desktop check the VM's disk (a full VM disk stalls the engine).",
        )
    if any(isinstance(item, FileNotFoundError) for item in chain):
        return DockerFailure(
            "missing",
            f"Docker socket {where} does not exist",
            "Start the Docker engine, or point preflight.docker_host (or DOCKER_HOST) at its socket.",
        )
    if any(isinstance(item, PermissionError) for item in chain):
        return DockerFailure(
            "permission",
            f"permission denied on Docker socket {where} for uid {os.getuid()}",
            "Add the worker's user to the socket's group (usually `docker`), or mount the socket with "
            "access for that user.",
        )
    if any(isinstance(item, ConnectionRefusedError) for item in chain):
        return DockerFailure(
            "refused",
            f"Docker engine at {docker_host} refused the connection (nothing listens there)",
            "The socket file is stale or the engine stopped: start the engine, or fix preflight.docker_host.",
        )
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DockerFailure(
        "error",
        f"Docker engine at {docker_host} failed: {text}",
        "Run `docker info` with the same DOCKER_HOST to see the engine's own message.",
    )


def _absent_result(failure: DockerFailure, section: Mapping[str, Any], name: str) -> CheckResult:
    required = section["docker_required"]
    return CheckResult(
        group=GROUP,
        name=name,
        status=Status.FAIL if required else Status.WARN,
        value=failure.message,
        threshold=f"reachable within {section['docker_timeout_seconds']:g} s; "
        + ("required" if required else "optional"),
        source="preflight.docker_required; preflight.docker_timeout_seconds",
        hint=failure.hint,
        metrics={"reason": failure.kind},
    )


def check_docker(
    section: Mapping[str, Any], *, docker_host: str | None = None
) -> tuple[list[CheckResult], DockerFacts]:
    """Run the Docker checks with the ``preflight`` configuration ``section``.

    Every call to the engine has ``docker_timeout_seconds``, except ``GET /system/df`` (its own
    ``docker_df_timeout_seconds``) and the VM probe (``docker_vm_probe_timeout_seconds``). An
    unreachable engine gives one row, FAIL when ``docker_required`` is true, WARN otherwise.
    Engine errors become rows, not exceptions.
    """
    import docker
    import requests

    host = resolve_docker_host(docker_host or section["docker_host"])
    timeout = section["docker_timeout_seconds"]
    name = "docker engine"
    try:
        client = docker.DockerClient(base_url=host, timeout=timeout, version="auto")
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
        failure = classify_docker_error(error, host, timeout)
        log.warning("Docker engine check failed (%s): %s", failure.kind, failure.message)
        return [_absent_result(failure, section, name)], DockerFacts(False, host)

    try:
        try:
            version = client.version()
            info = client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
            failure = classify_docker_error(error, host, timeout)
            log.warning("Docker engine check failed (%s): %s", failure.kind, failure.message)
            return [_absent_result(failure, section, name)], DockerFacts(False, host)

        facts = DockerFacts(
            reachable=True,
            docker_host=host,
            api_version=client.api.api_version,
            data_root=info.get("DockerRootDir"),
            operating_system=info.get("OperatingSystem"),
        )
        results = [_engine_result(version, facts, section), _storage_result(info, facts)]
        results.append(check_docker_disk_usage(host, facts.api_version, section["docker_df_timeout_seconds"]))
        image = section["docker_vm_probe_image"]
        if image:
            results.append(check_vm_free_space(client, image, section, host))
        elif facts.is_docker_desktop:
            results.append(_vm_probe_not_configured())
        return results, facts
    finally:
        client.close()


def _engine_result(version: Mapping[str, Any], facts: DockerFacts, section: Mapping[str, Any]) -> CheckResult:
    return CheckResult(
        group=GROUP,
        name="docker engine",
        status=Status.PASS,
        value=(
            f"Docker {version.get('Version', '?')}, API {facts.api_version}, "
            f"{facts.operating_system or version.get('Os', '?')} at {facts.docker_host}"
        ),
        threshold=f"reachable within {section['docker_timeout_seconds']:g} s",
        source=describe_source("preflight", "docker_timeout_seconds", section["docker_timeout_seconds"]),
        metrics={
            "version": version.get("Version"),
            "api_version": facts.api_version,
            "operating_system": facts.operating_system,
        },
    )


def _storage_result(info: Mapping[str, Any], facts: DockerFacts) -> CheckResult:
    driver = info.get("Driver") or "unknown"
    value = f"storage driver {driver}, data root {facts.data_root or 'unknown'}"
    if facts.is_docker_desktop:
        value += " (inside the Docker Desktop VM, not on this host's disk)"
    return CheckResult(
        group=GROUP,
        name="docker storage",
        status=Status.PASS,
        value=value,
        threshold="information",
        metrics={"driver": driver, "data_root": facts.data_root},
    )


@dataclass(frozen=True)
class KindUsage:
    """Disk usage of one kind of Docker object (images, containers, volumes, build cache)."""

    total_count: int = 0
    active_count: int = 0
    size_bytes: int = 0
    reclaimable_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "total_count": self.total_count,
            "active_count": self.active_count,
            "size_bytes": self.size_bytes,
            "reclaimable_bytes": self.reclaimable_bytes,
        }


@dataclass(frozen=True)
class DockerDiskUsage:
    """``GET /system/df`` reduced to totals by kind; ``shape`` names the response format parsed."""

    shape: str
    kinds: dict[str, KindUsage] = field(default_factory=dict)

    @property
    def reclaimable_bytes(self) -> int:
        return sum(usage.reclaimable_bytes for usage in self.kinds.values())

    @property
    def size_bytes(self) -> int:
        return sum(usage.size_bytes for usage in self.kinds.values())


# API 1.52 and newer return one summary object per kind. The schemas behind those keys are
# named ImagesDiskUsage etc., and some clients use those names as keys, so both are accepted.
_SUMMARY_KEYS = {
    "images": ("ImageUsage", "ImagesDiskUsage"),
    "containers": ("ContainerUsage", "ContainersDiskUsage"),
    "volumes": ("VolumeUsage", "VolumesDiskUsage"),
    "build_cache": ("BuildCacheUsage", "BuildCacheDiskUsage"),
}
_ACTIVE_CONTAINER_STATES = {"running", "paused", "restarting"}


def parse_disk_usage(payload: Mapping[str, Any]) -> DockerDiskUsage:
    """Reduce a ``/system/df`` response of either shape to totals and reclaimable bytes by kind.

    The summary shape (API 1.52+) carries TotalCount, ActiveCount, TotalSize and Reclaimable.
    The legacy shape (LayersSize and lists of Images, Containers, Volumes, BuildCache) is summed
    here the way the Docker client sums it. An unused image counts its unique size (Size -
    SharedSize) as reclaimable. A container that is not running, a volume that no container
    refers to and a build cache record not in use count their whole size.
    """
    summaries = {
        kind: next((payload[key] for key in keys if isinstance(payload.get(key), Mapping)), None)
        for kind, keys in _SUMMARY_KEYS.items()
    }
    if any(summary is not None for summary in summaries.values()):
        return DockerDiskUsage(
            "summary",
            {kind: _parse_summary(summary or {}) for kind, summary in summaries.items()},
        )
    return DockerDiskUsage(
        "legacy",
        {
            "images": _legacy_images(payload),
            "containers": _legacy_containers(payload.get("Containers") or []),
            "volumes": _legacy_volumes(payload.get("Volumes") or []),
            "build_cache": _legacy_build_cache(payload.get("BuildCache") or []),
        },
    )


def _number(mapping: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int | float) and value >= 0:
            return int(value)
    return 0


def _parse_summary(summary: Mapping[str, Any]) -> KindUsage:
    return KindUsage(
        total_count=_number(summary, "TotalCount", "TotalImages", "TotalContainers", "TotalVolumes"),
        active_count=_number(summary, "ActiveCount", "ActiveImages", "ActiveContainers", "ActiveVolumes"),
        size_bytes=_number(summary, "TotalSize"),
        reclaimable_bytes=_number(summary, "Reclaimable"),
    )


def _legacy_images(payload: Mapping[str, Any]) -> KindUsage:
    images = payload.get("Images") or []
    active = 0
    reclaimable = 0
    for image in images:
        if (image.get("Containers") or 0) > 0:
            active += 1
            continue
        size, shared = image.get("Size", -1), image.get("SharedSize", -1)
        if size >= 0 and shared >= 0:
            reclaimable += size - shared
    return KindUsage(len(images), active, _number(payload, "LayersSize"), reclaimable)


def _legacy_containers(containers: list[Mapping[str, Any]]) -> KindUsage:
    total = sum(max(0, container.get("SizeRw") or 0) for container in containers)
    active = [container for container in containers if container.get("State") in _ACTIVE_CONTAINER_STATES]
    used = sum(max(0, container.get("SizeRw") or 0) for container in active)
    return KindUsage(len(containers), len(active), total, total - used)


def _legacy_volumes(volumes: list[Mapping[str, Any]]) -> KindUsage:
    total = 0
    used = 0
    active = 0
    for volume in volumes:
        usage = volume.get("UsageData") or {}
        size = max(0, usage.get("Size", -1))
        total += size
        if usage.get("RefCount", 0) > 0:
            active += 1
            used += size
    return KindUsage(len(volumes), active, total, total - used)


def _legacy_build_cache(records: list[Mapping[str, Any]]) -> KindUsage:
    total = sum(record.get("Size") or 0 for record in records if not record.get("Shared"))
    in_use = [record for record in records if record.get("InUse")]
    used = sum(record.get("Size") or 0 for record in in_use if not record.get("Shared"))
    return KindUsage(len(records), len(in_use), total, total - used)


_KIND_NAMES = {
    "images": "images",
    "containers": "containers",
    "volumes": "volumes",
    "build_cache": "build cache",
}


def check_docker_disk_usage(docker_host: str, api_version: str | None, timeout_seconds: float) -> CheckResult:
    """Fetch ``GET /system/df`` with its own timeout and report size and reclaimable bytes by kind."""
    import docker
    import requests

    name = "docker disk usage"
    source = describe_source("preflight", "docker_df_timeout_seconds", timeout_seconds)
    try:
        api = docker.APIClient(base_url=docker_host, version=api_version or "auto", timeout=timeout_seconds)
        try:
            payload = api.df()
        finally:
            api.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
        failure = classify_docker_error(error, docker_host, timeout_seconds)
        log.warning("GET /system/df failed (%s): %s", failure.kind, failure.message)
        return CheckResult(
            group=GROUP,
            name=name,
            status=Status.UNKNOWN,
            value=f"GET /system/df: {failure.message}",
            threshold=f"answer within {timeout_seconds:g} s",
            source=source,
            hint="Raise preflight.docker_df_timeout_seconds on a host with many images or volumes, "
            "or run `docker system df` to see how long it takes.",
            metrics={"reason": failure.kind},
        )
    usage = parse_disk_usage(payload)
    parts = [
        f"{_KIND_NAMES[kind]} {kind_usage.total_count}: {format_bytes(kind_usage.size_bytes)} "
        f"({format_bytes(kind_usage.reclaimable_bytes)} reclaimable)"
        for kind, kind_usage in usage.kinds.items()
    ]
    return CheckResult(
        group=GROUP,
        name=name,
        status=Status.PASS,
        value="; ".join(parts),
        threshold=f"information; answer within {timeout_seconds:g} s",
        source=source,
        metrics={
            "shape": usage.shape,
            "size_bytes": usage.size_bytes,
            "reclaimable_bytes": usage.reclaimable_bytes,
            **{kind: kind_usage.to_dict() for kind, kind_usage in usage.kinds.items()},
        },
    )


def parse_df_output(output: str) -> tuple[int, int]:
    """Return (total bytes, available bytes) from the last line of ``df -P -k`` output.

    :raises ValueError: when the output has no line in the POSIX ``df -P`` format.
    """
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"df printed no filesystem line: {output.strip()[:200]!r}")
    fields = lines[-1].split()
    # Filesystem, 1024-blocks, Used, Available, Capacity, Mounted on: read from the end, because a
    # filesystem name may contain spaces.
    try:
        total_kib, available_kib = int(fields[-5]), int(fields[-3])
    except (IndexError, ValueError) as error:
        raise ValueError(f"Unexpected df line {lines[-1]!r}") from error
    return total_kib * 1024, available_kib * 1024


def check_vm_free_space(client: Any, image: str, section: Mapping[str, Any], docker_host: str) -> CheckResult:
    """Measure the free space of the engine's own disk by running ``df -P -k /`` in a throwaway container.

    The container runs with ``--network none`` and is removed afterwards. The image must be
    present: the probe never pulls, so a missing image gives UNKNOWN with the fix.
    """
    import docker
    import requests

    name = "docker VM free space"
    warn_bytes, fail_bytes = section["docker_vm_warn_free_bytes"], section["docker_vm_fail_free_bytes"]
    threshold = f"warn < {format_bytes(warn_bytes)}; fail < {format_bytes(fail_bytes)}"
    timeout = section["docker_vm_probe_timeout_seconds"]
    api = client.api
    try:
        api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return CheckResult(
            group=GROUP,
            name=name,
            status=Status.UNKNOWN,
            value=f"probe image {image!r} is not present in the engine, so nothing was measured",
            threshold=threshold,
            source="preflight.docker_vm_probe_image",
            hint=f"Load the image first (`docker pull {image}` or `docker load`), or set "
            "preflight.docker_vm_probe_image to an image the engine has. The probe never pulls.",
            metrics={"reason": "image_missing", "image": image},
        )

    container_id = None
    try:
        container = api.create_container(
            image,
            command=["df", "-P", "-k", "/"],
            host_config=api.create_host_config(network_mode="none"),
            network_disabled=True,
            labels={PROBE_LABEL: "vm-free-space"},
        )
        container_id = container["Id"]
        api.start(container_id)
        exit_status = api.wait(container_id, timeout=timeout)
        output = api.logs(container_id, stdout=True, stderr=True).decode("utf-8", "replace")
        if exit_status.get("StatusCode") != 0:
            raise ValueError(f"df exited with {exit_status.get('StatusCode')}: {output.strip()[:200]}")
        total_bytes, free_bytes = parse_df_output(output)
    except (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        OSError,
        ValueError,
    ) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not isinstance(error, ValueError):
            message = classify_docker_error(error, docker_host, timeout).message
        log.warning("Docker VM probe with image %s failed: %s", image, message)
        return CheckResult(
            group=GROUP,
            name=name,
            status=Status.UNKNOWN,
            value=f"probe container from {image!r} failed: {message}",
            threshold=threshold,
            source="preflight.docker_vm_probe_image",
            hint="Check that the image has a POSIX `df`, and run it by hand: "
            f"`docker run --rm --network none {image} df -P -k /`.",
            metrics={"reason": "probe_failed", "image": image},
        )
    finally:
        if container_id:
            _remove_container(api, container_id)

    status = Status.PASS
    source = "preflight.docker_vm_{warn,fail}_free_bytes"
    if free_bytes < fail_bytes:
        status, source = Status.FAIL, describe_source("preflight", "docker_vm_fail_free_bytes", fail_bytes)
    elif free_bytes < warn_bytes:
        status, source = Status.WARN, describe_source("preflight", "docker_vm_warn_free_bytes", warn_bytes)
    hint = ""
    if status is not Status.PASS:
        hint = "Run `docker system prune`, or give the Docker VM a larger disk (Docker Desktop: Settings > Resources)."
    percent = 100.0 * free_bytes / total_bytes if total_bytes else 0.0
    return CheckResult(
        group=GROUP,
        name=name,
        status=status,
        value=f"{format_bytes(free_bytes)} free of {format_bytes(total_bytes)} ({percent:.1f}%) inside the engine",
        threshold=threshold,
        source=source,
        hint=hint,
        metrics={"free_bytes": free_bytes, "total_bytes": total_bytes, "image": image},
    )


def _remove_container(api: Any, container_id: str) -> None:
    import docker
    import requests

    try:
        api.remove_container(container_id, force=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
        log.warning("Could not remove the VM probe container %s: %s", container_id[:12], error)


def _vm_probe_not_configured() -> CheckResult:
    return CheckResult(
        group=GROUP,
        name="docker VM free space",
        status=Status.UNKNOWN,
        value="Docker Desktop keeps its data in a VM whose free space the Engine API does not report",
        threshold="not measured",
        source="preflight.docker_vm_probe_image is null",
        hint="Set preflight.docker_vm_probe_image to a small local image with df (busybox) to measure it.",
        metrics={"reason": "probe_not_configured"},
    )
