"""Preflight checks that stop the maintenance chain before heavy work: disk, Docker, Postgres, S3.

``run_preflight`` runs them all and returns a ``PreflightReport``; ``raise_for_failures`` turns
its FAIL rows into ``PreflightFailed``. Importing this package loads no driver: docker, psycopg
and boto3 are imported when a check runs.
"""

from __future__ import annotations

from attachment_ops.preflight.model import (
    CheckResult,
    DiskSample,
    PreflightReport,
    Status,
    raise_for_failures,
)
from attachment_ops.preflight.runner import run_preflight

__all__ = [
    "CheckResult",
    "DiskSample",
    "PreflightReport",
    "Status",
    "raise_for_failures",
    "run_preflight",
]
