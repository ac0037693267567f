"""Airflow UI plugin: a menu entry that lists the benchmark reports and shows each one.

Airflow 3.3 mounts a plugin's FastAPI app with ``app.mount()`` and adds no authentication to it.
On 3.3.2 an anonymous GET reached a plugin route while ``/api/v2/dags`` returned 401, and Airflow's
plugins guide (administration-and-deployment/plugins.rst) warns about it too. Every route here therefore
resolves the caller with Airflow's own auth manager, from the ``Authorization: Bearer`` header or
else the ``_token`` cookie that the UI sets, and requires ``is_authorized_view(WEBSITE)``, the
permission to use the UI at all. An anonymous request gets 401 and an invalid token 403.

Reports are read from the bucket under ``report.prefix`` (connection ``connections.s3``), or from
``report.local_dir`` when the bucket cannot be listed.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

log = logging.getLogger(__name__)

URL_PREFIX = "/benchmark-reports"
LIST_LIMIT = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
FILE_TYPES = {
    "report.html": "text/html; charset=utf-8",
    "report.json": "application/json",
    # Served as plain text so a browser shows it instead of downloading it.
    "report.md": "text/plain; charset=utf-8",
}
LIST_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; }
table { border-collapse: collapse; } th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f4f4f6; } .bad { color: #9b1c1c; font-weight: 600; } .note { color: #555; }
"""


async def require_report_reader(request: Request) -> Any:
    """Return the Airflow user behind the request, or raise 401 (no token) or 403 (invalid token or no access).

    The bearer header wins over the cookie, as in Airflow's core API.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi.security.utils import get_authorization_scheme_param

    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() != "bearer" or not token:
        token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    user = await resolve_user_from_token(token)
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status_code=403, detail="Forbidden")
    return user


def _stores() -> tuple[list[Any], list[str], int]:
    """Return the report stores to read, warnings about stores that failed, and ``report.trend_runs``."""
    from pathlib import Path

    from attachment_ops.airflow_support import get_config
    from attachment_ops.config import DEFAULTS
    from attachment_ops.errors import MaintenanceError
    from attachment_ops.report.airflow_task import report_stores
    from attachment_ops.report.history import LocalReportStore

    try:
        config = get_config()
    except MaintenanceError as error:
        return [], [f"The maintenance_config Variable is invalid: {error}"], DEFAULTS["report"]["trend_runs"]
    report = config.section("report")
    try:
        return report_stores(config), [], report["trend_runs"]
    except (MaintenanceError, LookupError, ValueError) as error:
        log.warning("Could not set up the report bucket: %s", error)
        stores = [LocalReportStore(Path(report["local_dir"]))] if report["local_dir"] else []
        return stores, [f"Could not open the report bucket: {error}"], report["trend_runs"]


def _list_reports() -> tuple[str | None, list[str], list[dict[str, Any]], list[str]]:
    """Return the location listed, the report ids (newest first), summaries of the newest, warnings."""
    import json

    from attachment_ops.errors import MaintenanceError
    from attachment_ops.report.history import summarize_for_listing

    stores, warnings, summary_count = _stores()
    for store in stores:
        try:
            ids = store.list_ids()[:LIST_LIMIT]
        except (MaintenanceError, OSError) as error:
            log.warning("Could not list reports in %s: %s", store.location, error)
            warnings.append(f"Could not list reports in {store.location}: {error}")
            continue
        summaries = []
        for report_id in ids[:summary_count]:
            try:
                body = store.read(report_id, "report.json")
                if body is not None:
                    summaries.append(summarize_for_listing(json.loads(body)))
            except (MaintenanceError, OSError, ValueError) as error:
                log.warning("Could not read the summary of report %s: %s", report_id, error)
                warnings.append(f"Could not read the summary of report {report_id}: {error}")
        return store.location, ids, summaries, warnings
    return None, [], [], warnings


def _read_report_file(report_id: str, name: str) -> bytes:
    from attachment_ops.errors import MaintenanceError
    from attachment_ops.report.history import validate_report_id

    try:
        validate_report_id(report_id)
    except ValueError as error:
        raise HTTPException(status_code=404, detail="Report not found") from error
    stores, _, _ = _stores()
    for store in stores:
        try:
            body = store.read(report_id, name)
        except (MaintenanceError, OSError) as error:
            log.warning("Could not read %s/%s from %s: %s", report_id, name, store.location, error)
            continue
        if body is not None:
            return body
    raise HTTPException(status_code=404, detail="Report not found")


def render_list_page(
    location: str | None, ids: list[str], summaries: list[dict[str, Any]], warnings: list[str]
) -> str:
    """Render the list of reports, newest first; every stored value is escaped."""
    by_id = {summary["report_id"]: summary for summary in summaries}
    rows = []
    for report_id in ids:
        summary = by_id.get(report_id, {})
        regressions = summary.get("regressions") or []
        regression_cell = (
            f'<span class="bad">{html.escape(", ".join(regressions))}</span>'
            if regressions
            else ("none" if summary else "")
        )
        rows.append(
            "<tr>"
            f'<td><a href="reports/{html.escape(report_id)}/">{html.escape(report_id)}</a></td>'
            f"<td>{html.escape(str(summary.get('created_at') or ''))}</td>"
            f"<td>{html.escape(str(summary.get('dag_id') or ''))}</td>"
            f"<td>{html.escape(str(summary.get('trigger') or ''))}</td>"
            f"<td>{regression_cell}</td>"
            f"<td>{html.escape(str(summary.get('warnings', '')))}</td>"
            "</tr>"
        )
    warning_items = "".join(f'<li class="bad">{html.escape(w)}</li>' for w in warnings)
    where = html.escape(location) if location else "no store"
    body = (
        "<table><thead><tr><th>report</th><th>created</th><th>DAG</th><th>trigger</th><th>regressions</th>"
        f"<th>warnings</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>No reports yet. The benchmark_report DAG and the maintenance chain write them.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Benchmark reports</title>'
        f"<style>{LIST_STYLE}</style></head><body><h1>Benchmark reports</h1>"
        f'<p class="note">From {where}, newest first (at most {LIST_LIMIT}).</p>'
        f"<ul>{warning_items}</ul>{body}</body></html>\n"
    )


def create_app() -> FastAPI:
    """Build the plugin's FastAPI app; every route requires an Airflow user allowed to use the UI."""
    app = FastAPI(
        title="Benchmark reports",
        dependencies=[Depends(require_report_reader)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/", response_class=HTMLResponse)
    def list_reports() -> HTMLResponse:
        location, ids, summaries, warnings = _list_reports()
        return HTMLResponse(render_list_page(location, ids, summaries, warnings), headers=SECURITY_HEADERS)

    @app.get("/reports/{report_id}/", response_class=HTMLResponse)
    def show_report(report_id: str) -> Response:
        body = _read_report_file(report_id, "report.html")
        return Response(body, media_type=FILE_TYPES["report.html"], headers=SECURITY_HEADERS)

    @app.get("/reports/{report_id}/{name}")
    def report_file(report_id: str, name: str) -> Response:
        if name not in FILE_TYPES:
            raise HTTPException(status_code=404, detail="Report file not found")
        body = _read_report_file(report_id, name)
        return Response(body, media_type=FILE_TYPES[name], headers=SECURITY_HEADERS)

    return app


class BenchmarkReportsPlugin(AirflowPlugin):
    """Plugin with the report pages and their entry in the UI's Browse menu."""

    name = "benchmark_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Benchmark reports"}]
    external_views = [
        {
            "name": "Benchmark reports",
            "href": URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "category": "browse",
            "url_route": "benchmark-reports",
        }
    ]
