"""Airflow glue of the benchmark report: HTTP connections to targets, report stores, the task body.

An ``app_api`` or ``app_api_proxy`` connection is an ``http`` connection:

- ``host``: a host name, or a full base URL such as ``http://127.0.0.1:8080/api``;
- ``schema``: ``http`` or ``https`` when ``host`` has no scheme (Airflow's HTTP hook uses the
  field the same way); ``port``: optional;
- ``extra``: ``{"auth_type": "bearer", "token": "..."}`` for a bearer token (the password is used
  when ``token`` is absent), ``{"auth_type": "basic"}`` with login and password, or
  ``{"auth_type": "none"}``. Without ``auth_type`` a ``token`` means bearer, and a login means
  basic. ``headers`` (an object) adds request headers; ``verify`` (bool or CA bundle path)
  controls TLS verification.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attachment_ops.config import MaintenanceConfig
from attachment_ops.errors import ConfigurationError
from attachment_ops.report.endpoints import CONNECTION_KEYS, Target, parse_endpoints

log = logging.getLogger(__name__)

AUTH_TYPES = ("bearer", "basic", "none")


def target_from_connection_fields(
    key: str,
    *,
    host: str | None,
    schema: str | None = None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    extra: Mapping[str, Any] | str | None = None,
    conn_id: str | None = None,
) -> Target:
    """Build a ``Target`` from the fields of an HTTP connection.

    :raises ConfigurationError: when the host is missing, the extra is not a JSON object, or the
        authentication settings are incomplete. The message never contains a secret.
    """
    name = conn_id or key
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError as error:
            raise ConfigurationError(
                f"Connection {name!r}: extra is not valid JSON ({error.msg})."
            ) from error
    extra = dict(extra or {})
    if not host:
        raise ConfigurationError(f"Connection {name!r} has no host; set it to the API's host or base URL.")

    if "://" in host:
        base_url = host.rstrip("/")
        if port and ":" not in host.split("://", 1)[1].split("/", 1)[0]:
            scheme, rest = base_url.split("://", 1)
            authority, _, path = rest.partition("/")
            base_url = f"{scheme}://{authority}:{port}" + (f"/{path}" if path else "")
    else:
        scheme = schema if schema in ("http", "https") else "http"
        base_url = f"{scheme}://{host.strip('/')}" + (f":{port}" if port else "")

    auth_type = extra.get("auth_type")
    if auth_type is None and extra.get("token"):
        auth_type = "bearer"
    elif auth_type is None and login:
        auth_type = "basic"
    elif auth_type is None:
        auth_type = "none"
    if auth_type not in AUTH_TYPES:
        raise ConfigurationError(
            f"Connection {name!r}: extra.auth_type must be one of {', '.join(AUTH_TYPES)}, got {auth_type!r}."
        )
    bearer_token = None
    basic_auth = None
    if auth_type == "bearer":
        bearer_token = extra.get("token") or password
        if not bearer_token:
            raise ConfigurationError(
                f"Connection {name!r} uses bearer authentication but has neither extra.token nor a password."
            )
    elif auth_type == "basic":
        if not login:
            raise ConfigurationError(f"Connection {name!r} uses basic authentication but has no login.")
        basic_auth = (login, password or "")

    headers = extra.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigurationError(f"Connection {name!r}: extra.headers must be an object of string values.")
    verify = extra.get("verify", True)
    if not isinstance(verify, bool | str):
        raise ConfigurationError(
            f"Connection {name!r}: extra.verify must be true, false or a CA bundle path."
        )
    return Target(
        key=key,
        base_url=base_url,
        bearer_token=bearer_token,
        basic_auth=basic_auth,
        headers=dict(headers),
        verify=verify,
        conn_id=conn_id,
    )


def http_target_from_airflow(conn_id: str, key: str) -> Target:
    """Read the Airflow connection ``conn_id`` and build its ``Target``.

    :raises AirflowNotFoundException: when the connection is not defined.
    :raises ConfigurationError: when its fields are incomplete.
    """
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return target_from_connection_fields(
        key,
        host=conn.host,
        schema=conn.schema,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        extra=conn.extra_dejson,
        conn_id=conn_id,
    )


def resolve_targets(config: MaintenanceConfig) -> tuple[dict[str, Target], dict[str, str]]:
    """Resolve the connections that the configured endpoints use.

    Returns the targets by key and, for each key whose connection is not defined, the reason; the
    report lists those endpoints as skipped.

    :raises ConfigurationError: when a defined connection is incomplete.
    """
    from airflow.sdk.exceptions import AirflowNotFoundException

    used = {spec.connection for spec in parse_endpoints(config.section("report")["endpoints"])}
    targets: dict[str, Target] = {}
    unavailable: dict[str, str] = {}
    for key in CONNECTION_KEYS:
        if key not in used:
            continue
        conn_id = config.section("connections")[key]
        try:
            targets[key] = http_target_from_airflow(conn_id, key)
        except AirflowNotFoundException:
            unavailable[key] = (
                f"Airflow connection {conn_id!r} is not defined; add it under Admin > Connections."
            )
            log.warning("Connection %s for %s endpoints is not defined; they are skipped", conn_id, key)
    return targets, unavailable


def report_stores(config: MaintenanceConfig) -> list[Any]:
    """Return the stores reports go to: the bucket under ``report.prefix``, then ``report.local_dir``."""
    from attachment_ops.airflow_support import s3_settings
    from attachment_ops.report.history import BucketReportStore, LocalReportStore
    from attachment_ops.storage import RetryPolicy, make_s3_client

    storage = config.section("storage")
    report = config.section("report")
    settings = s3_settings(config.section("connections")["s3"])
    stores: list[Any] = [
        BucketReportStore(
            client=make_s3_client(settings, storage),
            bucket=storage["bucket"],
            prefix=report["prefix"],
            retry=RetryPolicy.from_storage_config(storage),
        )
    ]
    if report["local_dir"]:
        stores.append(LocalReportStore(Path(report["local_dir"])))
    return stores


def run_benchmark_report(
    chain: Mapping[str, Any] | None = None, *, run_id: str | None = None, dag_id: str | None = None
) -> dict[str, Any]:
    """Run the benchmark report as an Airflow task and return a small summary for XCom.

    Loads ``maintenance_config``, resolves the API, Postgres and S3 connections, measures, stores
    the report, and logs its Markdown summary.

    :raises ConfigurationError: on invalid report settings or connections.
    :raises BenchmarkRegression: after storing, when a regression is flagged and
        ``report.fail_on_regression`` is true.
    :raises TransientError: or PermanentError when the report could not be stored.
    """
    from attachment_ops.airflow_support import get_config, postgres_conninfo
    from attachment_ops.report.build import produce_report, raise_on_regression

    config = get_config()
    report_config = config.section("report")
    targets, unavailable = resolve_targets(config)
    result = produce_report(
        report_config,
        targets=targets,
        unavailable=unavailable,
        conninfo=postgres_conninfo(config.section("connections")["postgres"]),
        mapping=config.mapping,
        chain=chain,
        stores=report_stores(config),
        run_id=run_id,
        dag_id=dag_id,
    )
    log.info("Benchmark report summary:\n%s", result.markdown)
    raise_on_regression(result, report_config)
    return result.summary()
