"""Run controls of an offload: configuration defaults overridden by the run's parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from attachment_ops.config import MaintenanceConfig
from attachment_ops.errors import ConfigurationError

STORAGE_CLASSES = {
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
}
SSE_VALUES = {"AES256", "aws:kms", "aws:kms:dsse"}
# Run parameters that override the offload and storage configuration for one run.
RUN_PARAMETERS = (
    "limit",
    "batch_rows",
    "max_batch_bytes",
    "dry_run",
    "min_size_bytes",
    "max_size_bytes",
    "created_from",
    "created_to",
    "prefix",
    "storage_class",
    "server_side_encryption",
    "workers_per_batch",
    "max_batches",
)


@dataclass(frozen=True)
class OffloadParams:
    """Limits and options of one offload run. Sizes are in bytes, and the window is [created_from, created_to)."""

    limit: int
    batch_rows: int
    max_batch_bytes: int
    max_batches: int
    workers_per_batch: int
    dry_run: bool = False
    min_size_bytes: int = 0
    max_size_bytes: int | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    prefix: str = "attachments/"
    storage_class: str | None = None
    server_side_encryption: str | None = None
    sse_kms_key_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("created_from", "created_to"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OffloadParams:
        data = dict(data)
        for key in ("created_from", "created_to"):
            if data.get(key):
                data[key] = datetime.fromisoformat(data[key])
        return cls(**data)


def _parse_time(name: str, value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as error:
            raise ConfigurationError(
                f"Parameter {name}={value!r} is not an ISO 8601 date or time; use e.g. '2025-01-31' or "
                "'2025-01-31T00:00:00+00:00'."
            ) from error
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigurationError(f"Parameter {name}={value!r} must be a whole number.")
    if value < minimum:
        raise ConfigurationError(f"Parameter {name}={value!r} must be at least {minimum}.")
    return int(value)


def build_params(config: MaintenanceConfig, overrides: dict[str, Any] | None = None) -> OffloadParams:
    """Merge run parameters over the ``offload`` and ``storage`` configuration and validate them.

    ``overrides`` keys: limit, batch_rows, max_batch_bytes, dry_run, min_size_bytes, max_size_bytes,
    created_from, created_to, prefix, storage_class, server_side_encryption. A None value keeps
    the configured default.

    :raises ConfigurationError: naming the parameter, its value and the accepted range.
    """
    offload = config.section("offload")
    storage = config.section("storage")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    known = set(RUN_PARAMETERS)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigurationError(
            f"Unknown offload parameter(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
        )
    created_from = _parse_time("created_from", given.get("created_from"))
    created_to = _parse_time("created_to", given.get("created_to"))
    if created_from and created_to and created_from >= created_to:
        raise ConfigurationError(
            f"created_from {created_from.isoformat()} must be before created_to {created_to.isoformat()}."
        )
    min_size = _positive_int("min_size_bytes", given.get("min_size_bytes", offload["min_size_bytes"]), 0)
    max_size = given.get("max_size_bytes", offload["max_size_bytes"])
    if max_size is not None:
        max_size = _positive_int("max_size_bytes", max_size, 0)
        if max_size < min_size:
            raise ConfigurationError(f"max_size_bytes {max_size} is below min_size_bytes {min_size}.")
    prefix = given.get("prefix", storage["prefix"])
    if not isinstance(prefix, str) or (prefix and not prefix.endswith("/")) or prefix.startswith("/"):
        raise ConfigurationError(
            f"Parameter prefix={prefix!r} must be a relative key prefix ending with '/', e.g. 'attachments/'."
        )
    storage_class = given.get("storage_class", storage["storage_class"])
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise ConfigurationError(
            f"storage_class {storage_class!r} is not an S3 storage class; use one of "
            f"{', '.join(sorted(STORAGE_CLASSES))}."
        )
    sse = given.get("server_side_encryption", storage["server_side_encryption"])
    if sse is not None and sse not in SSE_VALUES:
        raise ConfigurationError(
            f"server_side_encryption {sse!r} is not valid; use one of {', '.join(sorted(SSE_VALUES))}."
        )
    dry_run = given.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ConfigurationError(f"Parameter dry_run={dry_run!r} must be true or false.")
    max_batches = _positive_int("max_batches", given.get("max_batches", offload["max_batches"]))
    if max_batches > 1024:
        raise ConfigurationError(
            f"max_batches {max_batches} exceeds Airflow's default [core] max_map_length of 1024."
        )
    return OffloadParams(
        limit=_positive_int("limit", given.get("limit", offload["limit"])),
        batch_rows=_positive_int("batch_rows", given.get("batch_rows", offload["batch_rows"])),
        max_batch_bytes=_positive_int(
            "max_batch_bytes", given.get("max_batch_bytes", offload["max_batch_bytes"])
        ),
        max_batches=max_batches,
        workers_per_batch=_positive_int(
            "workers_per_batch", given.get("workers_per_batch", offload["workers_per_batch"])
        ),
        dry_run=dry_run,
        min_size_bytes=min_size,
        max_size_bytes=max_size,
        created_from=created_from,
        created_to=created_to,
        prefix=prefix,
        storage_class=storage_class,
        server_side_encryption=sse,
        sse_kms_key_id=storage["sse_kms_key_id"],
    )
