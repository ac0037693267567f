"""Alerts: the log always, and a Slack-style webhook when configured (a local server here)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from attachment_ops.notify import MaintenanceNotifier, describe_failure


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def failure_context() -> dict:
    ti = SimpleNamespace(
        dag_id="attachment_maintenance", task_id="offload_batch", map_index=3, run_id="manual__1"
    )
    return {"ti": ti, "exception": RuntimeError("S3 upload failed with SlowDown")}


def test_failure_message_names_stage():
    assert describe_failure(failure_context()) == (
        "attachment-ops: stage offload_batch[3] of attachment_maintenance (run manual__1) failed. "
        "Reason: RuntimeError: S3 upload failed with SlowDown"
    )


def test_alert_reaches_log_and_webhook(webhook, monkeypatch, caplog):
    url, received = webhook
    monkeypatch.setenv(
        "AIRFLOW_VAR_MAINTENANCE_CONFIG", json.dumps({"alerts": {"slack_webhook_conn_id": "alert_slack"}})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERT_SLACK", json.dumps({"conn_type": "http", "extra": {"webhook_url": url}})
    )

    with caplog.at_level(logging.ERROR, logger="attachment_ops.notify"):
        MaintenanceNotifier().notify(failure_context())

    assert received == [{"text": describe_failure(failure_context())}]
    assert describe_failure(failure_context()) in caplog.text


def test_broken_channel_keeps_log_alert(monkeypatch, caplog):
    monkeypatch.setenv(
        "AIRFLOW_VAR_MAINTENANCE_CONFIG", json.dumps({"alerts": {"slack_webhook_conn_id": "alert_slack"}})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERT_SLACK",
        json.dumps({"conn_type": "http", "extra": {"webhook_url": "http://127.0.0.1:9/"}}),
    )

    with caplog.at_level(logging.WARNING, logger="attachment_ops.notify"):
        MaintenanceNotifier(message="disk almost full").notify({})

    assert "disk almost full" in caplog.text
    assert "Slack alert through connection alert_slack failed" in caplog.text
