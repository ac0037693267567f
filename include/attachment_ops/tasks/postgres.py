"""Task bodies of verification, VACUUM ANALYZE and the gated full reclaim."""

from __future__ import annotations

import logging
from typing import Any

from attachment_ops.airflow_support import fail_permanent_errors, get_config, postgres_conninfo, s3_settings

log = logging.getLogger(__name__)


@fail_permanent_errors
def verify(context: dict[str, Any], offload_summary: dict[str, Any] | None) -> dict[str, Any]:
    """Verify this run's objects (or all, or a sample) and the table's invariants.

    :raises VerificationError: (a failed task without retries) naming the rows that failed.
    """
    from attachment_ops.storage import make_s3_client
    from attachment_ops.verification import verify as run

    config = get_config()
    connections = config.section("connections")
    params = dict(context.get("params") or {})
    scope = params.get("verify_scope") or config.section("verification")["scope"]
    client = make_s3_client(s3_settings(connections["s3"]), config.section("storage"))
    result = run(
        postgres_conninfo(connections["postgres"]),
        client,
        config,
        run_id=context["run_id"],
        scope=scope,
        sample_size=params.get("verify_sample_size"),
        delete_orphans=bool(params.get("delete_orphans")),
    )
    return result.to_dict()


@fail_permanent_errors
def vacuum(context: dict[str, Any]) -> dict[str, Any]:
    """VACUUM (ANALYZE) the table; skipped work on a dry run, which must write nothing."""
    from attachment_ops.reclaim import vacuum_analyze

    params = dict(context.get("params") or {})
    if params.get("dry_run"):
        log.info("Dry run: VACUUM ANALYZE skipped.")
        return {"skipped": "dry run"}
    config = get_config()
    result = vacuum_analyze(postgres_conninfo(config.section("connections")["postgres"]), config)
    log.info("%s", result.get("message", ""))
    return result


def choose_reclaim_path(context: dict[str, Any], vacuum_result: dict[str, Any]) -> list[str]:
    """Return the task ids to follow: the report alone, the approval step, or the reclaim itself.

    The window, the disk room and pg_repack's presence are checked before anyone is asked to
    approve, so no person is asked to approve a rewrite that cannot run.
    """
    from attachment_ops.reclaim_gate import evaluate_full_reclaim

    params = dict(context.get("params") or {})
    method = params.get("reclaim") or "none"
    skip = [task_id for task_id in ("report",) if task_id in context["dag"].task_ids]
    if method == "none" or params.get("dry_run"):
        log.info(
            "No full reclaim requested (reclaim=%s%s).", method, ", dry run" if params.get("dry_run") else ""
        )
        return skip
    config = get_config()
    unattended = bool(params.get("approve_unattended")) or config.section("reclaim")["unattended_approval"]
    decision = evaluate_full_reclaim(
        postgres_conninfo(config.section("connections")["postgres"]),
        config,
        method,
        unattended=unattended,
        check_approval=False,
    )
    if not decision.allow:
        log.warning("Full reclaim (%s) not started: %s", method, "; ".join(decision.reasons))
        return skip
    log.info("Full reclaim (%s) may run: %s", method, "; ".join(decision.reasons))
    return ["full_reclaim"] if unattended else ["approve_full_reclaim"]


@fail_permanent_errors
def full_reclaim(context: dict[str, Any]) -> dict[str, Any]:
    """Check the gate again (time passed while waiting for approval), then rewrite the table."""
    from attachment_ops.errors import PermanentError
    from attachment_ops.reclaim import full_reclaim as run
    from attachment_ops.reclaim_gate import evaluate_full_reclaim

    params = dict(context.get("params") or {})
    config = get_config()
    method = params["reclaim"]
    conninfo = postgres_conninfo(config.section("connections")["postgres"])
    unattended = bool(params.get("approve_unattended")) or config.section("reclaim")["unattended_approval"]
    # This task runs only after the approval step returned Approve, or was skipped as unattended.
    # An unattended run has no response at all, which is not a rejection.
    decision = evaluate_full_reclaim(
        conninfo, config, method, approved=None if unattended else True, unattended=unattended
    )
    if not decision.allow:
        raise PermanentError(
            f"Full reclaim ({method}) not started after approval because a check failed: {'; '.join(decision.reasons)}"
        )
    result = run(conninfo, config, method)
    log.info("%s", result.get("message", ""))
    return result
