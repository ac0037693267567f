"""Failure and warning alerts: always the task log, plus e-mail or Slack when configured."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def describe_failure(context: dict[str, Any]) -> str:
    """Build a one-paragraph alert: which DAG, run and stage failed, and why."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    map_index = getattr(ti, "map_index", -1)
    run_id = getattr(ti, "run_id", None) or context.get("run_id", "?")
    error = context.get("exception")
    stage = task_id if map_index in (None, -1) else f"{task_id}[{map_index}]"
    reason = f"{type(error).__name__}: {error}" if error else "no exception was recorded; see the task log"
    return f"attachment-ops: stage {stage} of {dag_id} (run {run_id}) failed. Reason: {reason}"


class MaintenanceNotifier(BaseNotifier):
    """Send an alert through the configured channels.

    ``message`` overrides the failure text (the preflight uses it for WARN results). Channels
    come from the ``alerts`` configuration section; a channel that fails to send is logged and
    never hides the alert from the task log.
    """

    template_fields = ("message",)

    def __init__(self, message: str | None = None) -> None:
        super().__init__()
        self.message = message

    def notify(self, context: dict[str, Any]) -> None:
        text = self.message or describe_failure(context)
        log.error("%s", text)
        try:
            from attachment_ops.airflow_support import get_config

            alerts = get_config().section("alerts")
        except Exception as error:  # noqa: BLE001 - an invalid config must not swallow the alert
            log.warning(
                "Alert channels not read (configuration error: %s); the alert went to the log only.", error
            )
            return
        if alerts["email_to"] and alerts["smtp_conn_id"]:
            self._send_email(alerts, text, context)
        if alerts["slack_webhook_conn_id"]:
            self._send_slack(alerts["slack_webhook_conn_id"], text)

    def _send_email(self, alerts: dict[str, Any], text: str, context: dict[str, Any]) -> None:
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(
                to=alerts["email_to"],
                smtp_conn_id=alerts["smtp_conn_id"],
                subject=text[:120],
                html_content=text,
            ).notify(context)
        except Exception as error:  # noqa: BLE001 - log and keep going with the other channels
            log.warning("E-mail alert through connection %s failed: %s", alerts["smtp_conn_id"], error)

    def _send_slack(self, conn_id: str, text: str) -> None:
        import httpx
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(conn_id)
            url = (conn.extra_dejson or {}).get("webhook_url") or conn.password
            if not url:
                raise ValueError(f"connection {conn_id} has no webhook_url in extra and no password")
            httpx.post(url, json={"text": text}, timeout=10).raise_for_status()
        except Exception as error:  # noqa: BLE001 - log and keep going
            log.warning("Slack alert through connection %s failed: %s", conn_id, error)


def on_failure(context: dict[str, Any]) -> None:
    """Task failure callback for every DAG of the package."""
    MaintenanceNotifier().notify(context)
