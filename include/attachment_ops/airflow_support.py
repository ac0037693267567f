"""Glue between Airflow and the library: connections, the configuration Variable, failures.

Only task code calls these; the library modules take plain conninfo strings and ``S3Settings``,
so they run and test without a scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from attachment_ops.config import VARIABLE_NAME, MaintenanceConfig, load_config
from attachment_ops.errors import ConfigurationError, PermanentError, PreflightFailed, VerificationError
from attachment_ops.storage import S3Settings

F = TypeVar("F", bound=Callable[..., Any])


def get_config() -> MaintenanceConfig:
    """Load ``maintenance_config`` (absent means all defaults) and validate it."""
    from airflow.sdk import Variable

    raw = Variable.get(VARIABLE_NAME, default=None)
    return load_config(raw)


def postgres_conninfo(conn_id: str) -> str:
    """Build a libpq conninfo string from an Airflow Postgres connection."""
    from airflow.sdk import BaseHook
    from psycopg.conninfo import make_conninfo

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type not in ("postgres", "postgresql"):
        raise ConfigurationError(
            f"Connection '{conn_id}' has type {conn.conn_type!r}; the attachments database needs a "
            "'postgres' connection."
        )
    extra = conn.extra_dejson or {}
    options = {
        key: extra[key] for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options") if key in extra
    }
    return make_conninfo(
        host=conn.host or "127.0.0.1",
        port=conn.port or 5432,
        user=conn.login or "",
        password=conn.password or "",
        dbname=conn.schema or "postgres",
        **options,
    )


def s3_settings(conn_id: str) -> S3Settings:
    """Read endpoint, region, addressing style and keys from an Airflow ``aws`` connection."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    config_kwargs = extra.get("config_kwargs") or {}
    if isinstance(config_kwargs, str):
        config_kwargs = json.loads(config_kwargs)
    addressing_style = (config_kwargs.get("s3") or {}).get("addressing_style") or extra.get(
        "addressing_style", "path"
    )
    return S3Settings(
        endpoint_url=extra.get("endpoint_url")
        or (extra.get("service_config", {}).get("s3", {}) or {}).get("endpoint_url"),
        region_name=extra.get("region_name") or "us-east-1",
        access_key_id=conn.login or extra.get("aws_access_key_id"),
        secret_access_key=conn.password or extra.get("aws_secret_access_key"),
        session_token=extra.get("aws_session_token"),
        addressing_style=addressing_style,
        verify=extra.get("verify", True),
    )


def fail_permanent_errors(function: F) -> F:
    """Turn the package's permanent errors into AirflowFailException, so Airflow does not retry."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return function(*args, **kwargs)
        except (ConfigurationError, PermanentError, PreflightFailed, VerificationError) as error:
            raise AirflowFailException(f"{type(error).__name__}: {error}") from error

    return wrapper  # type: ignore[return-value]
