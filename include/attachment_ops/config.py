"""Package configuration: defaults, the ``maintenance_config`` Variable merged over them, validation.

The Variable holds JSON with the same nesting as ``DEFAULTS``. A key that the defaults do not
contain is an error that names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attachment_ops.errors import ConfigurationError

VARIABLE_NAME = "maintenance_config"
MIB = 1024 * 1024
GIB = 1024 * MIB

# Keys whose value may be null, or whose type is free (lists of dicts, nested dicts of any shape).
_NULLABLE = object()

DEFAULTS: dict[str, Any] = {
    "connections": {
        "postgres": "app_postgres",
        "s3": "attachments_s3",
        "api": "app_api",
        "api_proxy": "app_api_proxy",
    },
    "alerts": {
        # The task log always gets the alert; these add e-mail or Slack when set.
        "email_to": [],
        "smtp_conn_id": None,
        "slack_webhook_conn_id": None,
        "notify_on_warn": True,
    },
    "attachments": {
        "table": "public.document_attachments",
        "primary_key": "id",
        "content_column": "bytes",
        "backend_column": "storage_backend",
        "inline_value": "db",
        "offloaded_value": "s3",
        "key_column": "storage_key",
        "created_at_column": "created_at",
        "content_type_column": "content_type",
        "filename_column": "filename",
    },
    "storage": {
        "bucket": "attachments",
        "prefix": "attachments/",
        "storage_class": None,
        "server_side_encryption": None,
        "sse_kms_key_id": None,
        # Blobs up to this size go in one PUT; larger ones are read in slices of part_size_bytes
        # and uploaded as a multipart upload, so memory stays bounded for a 1 GB bytea.
        "multipart_threshold_bytes": 16 * MIB,
        "part_size_bytes": 8 * MIB,
        # Verify every upload by reading it back and hashing it, even when the server returns the
        # SHA-256 it stored. Use it for servers whose stored checksum is not trusted.
        "verify_read_back": False,
        # Accept the checksum returned by PUT (or CompleteMultipartUpload) as proof of the stored
        # bytes and skip the HEAD, about 12% of a row's time here. Only for servers that check the
        # body against the sent checksum and reject a mismatch (BadDigest), as Amazon S3 does and
        # SeaweedFS 4.48 did here: a server that echoes the header unchecked would pass.
        "trust_upload_checksum": False,
        "connect_timeout_seconds": 10,
        "read_timeout_seconds": 120,
        "max_attempts": 5,
        "backoff_base_seconds": 0.5,
        "backoff_max_seconds": 20.0,
    },
    "offload": {
        # Safe defaults for a scheduled run: a bounded number of rows and bytes per run.
        "limit": 500,
        # Each mapped task costs Airflow about half a second to start and finish, so batches carry
        # a few seconds of work at least. max_batch_bytes closes batches of large files first.
        "batch_rows": 200,
        "max_batch_bytes": 512 * MIB,
        # Stays well under Airflow's [core] max_map_length (1024 by default).
        "max_batches": 200,
        "workers_per_batch": 4,
        "min_size_bytes": 0,
        "max_size_bytes": None,
        "lock_timeout_ms": 5000,
        "statement_timeout_ms": 600000,
        "ledger_schema": "attachment_ops",
    },
    "preflight": {
        # Extra paths to check, each a path string or {"path": ..., "label": ..., "headroom": [...]}
        # where headroom lists "offload" and/or "rewrite", the planned work that lands on that disk.
        # A plain string gets both, because the package cannot know what lives there.
        "disk_paths": [],
        # Also check the temp directory, the Airflow log folder, and the Docker data root and the
        # Postgres data directory when they are on this host.
        "disk_default_paths": True,
        # Free space: WARN or FAIL when below either the percent or the byte threshold.
        # 15% is kubelet's imagefs.available eviction level, 5% node_exporter's warning level.
        # 2 GiB: the incident host died with 1.1 GiB free.
        "disk_warn_free_percent": 15.0,
        "disk_fail_free_percent": 5.0,
        "disk_warn_free_bytes": 10 * GIB,
        "disk_fail_free_bytes": 2 * GIB,
        # 5% is kubelet's nodefs.inodesFree eviction level.
        "inode_warn_free_percent": 10.0,
        "inode_fail_free_percent": 5.0,
        # The offload's planned bytes (in flight, temp and WAL) are multiplied by this factor
        # before they are subtracted from the free space. A full reclaim uses
        # reclaim.rewrite_headroom_factor instead.
        "headroom_factor": 2.0,
        # Time to full: a linear fit over the free-space samples of the last fill_window_hours
        # (node_exporter's predict_linear uses 6 h); WARN when full within fill_warn_hours.
        "fill_warn_hours": 24.0,
        "fill_window_hours": 6.0,
        "fill_min_samples": 3,
        # docker_enabled false skips the Docker checks. An unreachable engine is a FAIL when
        # docker_required is true and a WARN otherwise.
        "docker_enabled": True,
        "docker_required": False,
        # null means DOCKER_HOST from the environment, else the default local socket.
        "docker_host": None,
        "docker_timeout_seconds": 10,
        # GET /system/df walks every layer and volume and can take minutes on a large host.
        "docker_df_timeout_seconds": 60,
        # An image present locally with a POSIX df (busybox works); the probe runs `df -P -k /`
        # in a throwaway container with --network none and never pulls. null skips the probe.
        "docker_vm_probe_image": None,
        "docker_vm_probe_timeout_seconds": 30,
        "docker_vm_warn_free_bytes": 5 * GIB,
        "docker_vm_fail_free_bytes": 2 * GIB,
        "postgres_timeout_seconds": 10,
        # Transactions older than this, and sessions idle in a transaction, hold back VACUUM.
        "postgres_old_transaction_seconds": 300,
        "s3_timeout_seconds": 10,
        "s3_probe_prefix": "_preflight/",
    },
    "verification": {
        "scope": "run",
        "sample_size": 100,
        "reread_fraction": 0.1,
        "reread_max_bytes": 1 * GIB,
        "orphan_grace_hours": 24,
        "delete_orphans": False,
        # Concurrent HEAD and GET requests while checking objects.
        "workers": 4,
    },
    "reclaim": {
        "lock_timeout_ms": 5000,
        "statement_timeout_ms": 3600000,
        "maintenance_window": None,
        "rewrite_headroom_factor": 1.2,
        "unattended_approval": False,
        # Sessions whose transaction is older than this are named as holding back VACUUM's cleanup.
        "old_transaction_seconds": 60,
        # Path on this worker of the database server's data directory (or a mount of its volume), for
        # the disk-room check; null means $PG_DATA_DIR, then the server's data_directory if visible here.
        "data_dir": None,
        # pg_repack client; null means PATH, then /usr/lib/postgresql/<server major>/bin/pg_repack.
        "pg_repack_path": None,
    },
    "report": {
        "endpoints": [],
        "warmup": 2,
        "samples": 12,
        "timeout_seconds": 10.0,
        # An endpoint is abandoned after this many timeouts or refused connections in a row.
        "abort_after_errors": 3,
        "large_payload_bytes": 100000,
        # Coefficient of variation (stddev / mean) above which an endpoint is flagged as spread.
        "high_spread_cv": 0.5,
        "regression_percent": 20.0,
        "regression_min_ms": 2.0,
        "fail_on_regression": False,
        "baseline_runs": 5,
        # Past runs drawn in the trend chart of each report.
        "trend_runs": 20,
        "prefix": "reports/",
        "sql_probes": [],
        "probe_timeout_ms": 5000,
        "local_dir": None,
    },
}

# Leaves whose default is null but which take a value of a known type.
_TYPES_FOR_NULL_DEFAULTS: dict[tuple[str, str], tuple[type, ...]] = {
    ("alerts", "smtp_conn_id"): (str,),
    ("alerts", "slack_webhook_conn_id"): (str,),
    ("attachments", "created_at_column"): (str,),
    ("attachments", "content_type_column"): (str,),
    ("attachments", "filename_column"): (str,),
    ("storage", "storage_class"): (str,),
    ("storage", "server_side_encryption"): (str,),
    ("storage", "sse_kms_key_id"): (str,),
    ("offload", "max_size_bytes"): (int,),
    ("preflight", "docker_host"): (str,),
    ("preflight", "docker_vm_probe_image"): (str,),
    ("reclaim", "maintenance_window"): (str,),
    ("reclaim", "data_dir"): (str,),
    ("reclaim", "pg_repack_path"): (str,),
    ("report", "local_dir"): (str,),
}
# Optional mapping columns: the defaults name them, but a table may lack them.
_OPTIONAL_KEYS = {
    ("attachments", "created_at_column"),
    ("attachments", "content_type_column"),
    ("attachments", "filename_column"),
}


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _check_value(path: tuple[str, ...], default: Any, value: Any) -> Any:
    dotted = ".".join(path)
    if value is None:
        if default is None or path in _OPTIONAL_KEYS:
            return None
        raise ConfigurationError(f"Configuration key '{dotted}' must not be null.")
    if default is None:
        types = _TYPES_FOR_NULL_DEFAULTS.get(path, (object,))
    elif isinstance(default, bool):
        types = (bool,)
    elif isinstance(default, float):
        types = (int, float)
    else:
        types = (type(default),)
    if isinstance(value, bool) and bool not in types and object not in types:
        raise ConfigurationError(
            f"Configuration key '{dotted}' must be {_type_name(types)}, not a boolean ({value!r})."
        )
    if not isinstance(value, types):
        raise ConfigurationError(
            f"Configuration key '{dotted}' must be {_type_name(types)}, got {type(value).__name__} {value!r}."
        )
    return value


def _merge(path: tuple[str, ...], defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    merged = copy.deepcopy(dict(defaults))
    for key, value in overrides.items():
        if key not in defaults:
            where = ".".join((*path, key))
            known = ", ".join(sorted(defaults))
            raise ConfigurationError(
                f"Unknown configuration key '{where}' in the '{VARIABLE_NAME}' Variable. Known keys here: {known}."
            )
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"Configuration key '{'.'.join((*path, key))}' must be an object.")
            merged[key] = _merge((*path, key), default, value)
        else:
            merged[key] = _check_value((*path, key), default, value)
    return merged


@dataclass(frozen=True)
class AttachmentMapping:
    """Names of the attachments table and its columns, as configured."""

    table: str
    primary_key: str
    content_column: str
    backend_column: str
    inline_value: str
    offloaded_value: str
    key_column: str
    created_at_column: str | None
    content_type_column: str | None
    filename_column: str | None

    @property
    def schema_and_table(self) -> tuple[str, str]:
        """Split ``table`` into schema and name; a bare name means the ``public`` schema."""
        parts = self.table.split(".")
        if len(parts) == 1:
            return "public", parts[0]
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
        raise ConfigurationError(
            f"attachments.table {self.table!r} must be 'table' or 'schema.table'; quote nothing, "
            "the package quotes identifiers itself."
        )


@dataclass(frozen=True)
class MaintenanceConfig:
    """Validated configuration. ``data`` has the shape of ``DEFAULTS``."""

    data: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]

    @property
    def mapping(self) -> AttachmentMapping:
        return AttachmentMapping(**self.data["attachments"])

    @property
    def bucket(self) -> str:
        return self.data["storage"]["bucket"]

    @property
    def prefix(self) -> str:
        return self.data["storage"]["prefix"]

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=True)


def load_config(overrides: Mapping[str, Any] | str | None = None) -> MaintenanceConfig:
    """Merge ``overrides`` (a dict or JSON text) over ``DEFAULTS`` and validate the result.

    :raises ConfigurationError: on invalid JSON, an unknown key, or a value of the wrong type.
    """
    if overrides is None or overrides == "":
        overrides = {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as error:
            raise ConfigurationError(
                f"Variable '{VARIABLE_NAME}' is not valid JSON: {error}. Fix it in Admin > Variables, or in the "
                "AIRFLOW_VAR_MAINTENANCE_CONFIG environment variable when it is set there."
            ) from error
    if not isinstance(overrides, Mapping):
        raise ConfigurationError(
            f"Variable '{VARIABLE_NAME}' must hold a JSON object, got {type(overrides).__name__}."
        )
    data = _merge((), DEFAULTS, overrides)
    _validate_semantics(data)
    return MaintenanceConfig(data)


def _validate_semantics(data: dict[str, Any]) -> None:
    storage = data["storage"]
    if not storage["bucket"]:
        raise ConfigurationError("storage.bucket must name a bucket.")
    prefix = storage["prefix"]
    if prefix and not prefix.endswith("/"):
        raise ConfigurationError(f"storage.prefix {prefix!r} must end with '/', e.g. {prefix + '/'!r}.")
    if storage["part_size_bytes"] < 5 * MIB:
        raise ConfigurationError(
            f"storage.part_size_bytes {storage['part_size_bytes']} is below S3's 5 MiB minimum part size."
        )
    if storage["multipart_threshold_bytes"] < storage["part_size_bytes"]:
        raise ConfigurationError(
            "storage.multipart_threshold_bytes must be at least storage.part_size_bytes."
        )
    offload = data["offload"]
    for key in ("limit", "batch_rows", "max_batch_bytes", "max_batches", "workers_per_batch"):
        if offload[key] < 1:
            raise ConfigurationError(f"offload.{key} must be at least 1, got {offload[key]}.")
    if offload["max_batches"] > 1024:
        raise ConfigurationError(
            f"offload.max_batches {offload['max_batches']} exceeds Airflow's default "
            "[core] max_map_length of 1024; lower it, or raise max_map_length first."
        )
    mapping = data["attachments"]
    if mapping["inline_value"] == mapping["offloaded_value"]:
        raise ConfigurationError("attachments.inline_value and attachments.offloaded_value must differ.")
