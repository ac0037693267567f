from __future__ import annotations

import re
from datetime import datetime, timezone

import httpx
import pytest
from plugins.benchmark_reports import render_list_page

from attachment_ops.config import load_config
from attachment_ops.report.build import produce_report
from attachment_ops.report.history import BucketReportStore

SCRIPT = "<script>alert(1)</script>"
PAGE = "/benchmark-reports/"


@pytest.fixture(scope="module")
def stored_report(api_server, s3_client) -> str:
    """One report in the server's bucket whose DAG id and chain figures carry a script tag."""
    result = produce_report(
        load_config({}).section("report"),
        targets={},
        chain={"run_id": SCRIPT, "offload": {"rows": 3, "bytes": 3000, "seconds": 1.0}},
        stores=[BucketReportStore(s3_client, api_server.bucket, "reports/")],
        run_id="manual__plugin",
        dag_id=SCRIPT,
        created_at=datetime(2026, 4, 1, 8, 30, 0, tzinfo=timezone.utc),
    )
    return result.report_id


@pytest.fixture(scope="module")
def admin_token(api_server) -> str:
    return api_server.token("admin")


def get(api_server, path: str, **kwargs) -> httpx.Response:
    return httpx.get(api_server.base_url + path, timeout=30, **kwargs)


def test_core_api_requires_login(api_server):
    assert get(api_server, "/api/v2/dags").status_code == 401


def test_airflow_leaves_plugin_routes_open(api_server):
    # The reason the report plugin authenticates itself: Airflow adds nothing to a plugin's app.
    response = get(api_server, "/open-probe/")
    assert response.status_code == 200
    assert response.json() == {"open": True}


@pytest.mark.parametrize(
    "path",
    [
        PAGE,
        "/benchmark-reports/reports/20260401T083000Z_manual__plugin/",
        "/benchmark-reports/reports/20260401T083000Z_manual__plugin/report.json",
    ],
)
def test_anonymous_request_refused(api_server, stored_report, path):
    response = get(api_server, path)
    assert response.status_code == 401
    assert "alert" not in response.text


def test_invalid_token_refused(api_server):
    response = get(api_server, PAGE, headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code == 403


def test_forged_cookie_refused(api_server):
    response = get(api_server, PAGE, cookies={"_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."})
    assert response.status_code == 403


def test_list_renders_for_admin(api_server, stored_report, admin_token):
    response = get(api_server, PAGE, headers={"Authorization": f"Bearer {admin_token}"})
    assert response.status_code == 200
    assert f'href="reports/{stored_report}/"' in response.text
    assert re.search("<script", response.text, re.IGNORECASE) is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def test_report_renders_with_cookie(api_server, stored_report, s3_client):
    token = api_server.token("viewer")
    response = get(api_server, f"/benchmark-reports/reports/{stored_report}/", cookies={"_token": token})
    stored = s3_client.get_object(Bucket=api_server.bucket, Key=f"reports/{stored_report}/report.html")
    assert response.status_code == 200
    assert response.content == stored["Body"].read()
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("report.json", "application/json"), ("report.md", "text/plain; charset=utf-8")],
)
def test_report_files_served(api_server, stored_report, admin_token, name, content_type):
    response = get(
        api_server,
        f"/benchmark-reports/reports/{stored_report}/{name}",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type


@pytest.mark.parametrize(
    "path",
    [
        "/benchmark-reports/reports/20990101T000000Z_absent/",
        "/benchmark-reports/reports/not-a-report-id/",
        "/benchmark-reports/reports/20260401T083000Z_manual__plugin/secrets.txt",
        "/benchmark-reports/reports/..%2F..%2Fetc/report.json",
    ],
)
def test_unknown_report_not_found(api_server, stored_report, admin_token, path):
    response = get(api_server, path, headers={"Authorization": f"Bearer {admin_token}"})
    assert response.status_code == 404


def test_plugin_registered_with_menu(api_server, admin_token):
    response = get(api_server, "/api/v2/plugins", headers={"Authorization": f"Bearer {admin_token}"})
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "benchmark_reports")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/benchmark-reports"
    assert plugin["external_views"][0]["href"] == "benchmark-reports/"
    assert plugin["external_views"][0]["destination"] == "nav"


def test_list_page_escapes_summaries():
    summary = {
        "report_id": "20260101T000000Z_a",
        "created_at": SCRIPT,
        "dag_id": SCRIPT,
        "trigger": SCRIPT,
        "regressions": [SCRIPT],
        "warnings": 0,
    }
    page = render_list_page(SCRIPT, ["20260101T000000Z_a"], [summary], [SCRIPT])
    assert re.search("<script", page, re.IGNORECASE) is None
    assert page.count("&lt;script&gt;") == 6


def test_empty_list_explained():
    page = render_list_page("s3://b/reports/", [], [], [])
    assert "No reports yet." in page
