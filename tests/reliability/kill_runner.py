"""Run one stage of the product in this process and SIGKILL the process at a chosen point.

Run as ``python -m tests.reliability.kill_runner SPEC.json``, where the file holds:

``stage``
    ``offload`` (plan and every batch, as the DAG does), ``restore`` (``row_ids``) or
    ``full_reclaim`` (VACUUM FULL).
``dsn``, ``s3`` (``S3Settings`` fields), ``config`` (the configuration data), ``run_id``,
``overrides`` (offload run parameters), ``row_ids``
``kill``
    ``{"point": name, "call": n}``: die at the n-th call that reaches the point, or null to run
    until someone else kills the process. Points are listed in ``POINTS``.

The process exits 0 when the stage finished without reaching the kill point, so the caller can
tell a kill that never happened from one that did.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

POINTS = (
    "after_read",
    "between_parts",
    "before_verify",
    "before_flip",
    "inside_flip",
    "after_flip_commit",
    "restore_mid_download",
    "restore_before_flip",
    "restore_inside_flip",
    "restore_after_commit",
)


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Counter:
    """Count the calls that reach the kill point and die at the chosen one."""

    def __init__(self, call: int) -> None:
        self.call = call
        self.seen = 0
        self.lock = threading.Lock()

    def reached(self) -> None:
        with self.lock:
            self.seen += 1
            if self.seen == self.call:
                die()


def _wrap(module: Any, name: str, before: Callable[..., bool] | None, after: bool, counter: Counter) -> None:
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None and before(*args, **kwargs):
            counter.reached()
        result = original(*args, **kwargs)
        if after:
            counter.reached()
        return result

    setattr(module, name, wrapper)


def install(point: str, counter: Counter) -> None:
    """Patch the product so that each call reaching ``point`` is counted by ``counter``."""
    import psycopg

    from attachment_ops import ledger
    from attachment_ops.offload import restore, worker

    def always(*args: Any, **kwargs: Any) -> bool:
        return True

    if point == "after_read":
        # object_key runs once the row's bytes (or, for multipart, Postgres's digest) were read.
        _wrap(worker, "object_key", always, False, counter)
    elif point == "between_parts":
        # Parts after the first: at least one part is stored and the upload is unfinished.
        _wrap(
            worker,
            "call_with_retries",
            lambda operation, what, *a, **k: (
                what.startswith("upload part ") and not what.startswith("upload part 1 ")
            ),
            False,
            counter,
        )
    elif point == "before_verify":
        _wrap(worker, "verify_object", always, False, counter)
    elif point == "before_flip":
        _wrap(worker, "_flip", always, False, counter)
    elif point == "inside_flip":
        # The flip's UPDATE has run and its transaction is open when the ledger entry is written.
        _wrap(ledger, "record", lambda *a, **k: k.get("outcome") == "offloaded", False, counter)
    elif point == "after_flip_commit":
        _wrap(worker, "_flip", None, True, counter)
    elif point == "restore_mid_download":
        original = psycopg.Connection.execute

        def execute(self: psycopg.Connection, query: Any, params: Any = None, **kwargs: Any) -> Any:
            result = original(self, query, params, **kwargs)
            text = query if isinstance(query, str) else query.as_string(self)
            if text.startswith("INSERT INTO") and "restore_chunks" in text:
                counter.reached()
            return result

        psycopg.Connection.execute = execute  # type: ignore[method-assign]
    elif point == "restore_before_flip":
        _wrap(restore, "_flip_back", always, False, counter)
    elif point == "restore_inside_flip":
        _wrap(ledger, "record", lambda *a, **k: k.get("outcome") == "restored", False, counter)
    elif point == "restore_after_commit":
        _wrap(restore, "_flip_back", None, True, counter)
    else:
        raise ValueError(f"Unknown kill point {point!r}; use one of {', '.join(POINTS)}.")


def main() -> int:
    with open(sys.argv[1]) as spec_file:
        spec = json.load(spec_file)
    from attachment_ops.config import MaintenanceConfig
    from attachment_ops.storage import S3Settings, make_s3_client

    config = MaintenanceConfig(spec["config"])
    if spec.get("kill"):
        install(spec["kill"]["point"], Counter(spec["kill"]["call"]))
    stage = spec["stage"]
    if stage == "full_reclaim":
        from attachment_ops.reclaim import full_reclaim

        full_reclaim(spec["dsn"], config, "vacuum_full")
        return 0
    client = make_s3_client(S3Settings(**spec["s3"]), config.section("storage"))
    if stage == "offload":
        from tests.offload.helpers import run_offload

        run_offload(spec["dsn"], client, config, run_id=spec["run_id"], **spec.get("overrides", {}))
    elif stage == "restore":
        from attachment_ops.offload.restore import restore_rows

        restore_rows(spec["dsn"], client, config, run_id=spec["run_id"], row_ids=spec["row_ids"])
    else:
        raise ValueError(f"Unknown stage {stage!r}; use offload, restore or full_reclaim.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
