"""Error hierarchy of the package.

Permanent errors stop a task without retries (the task boundary turns them into
``AirflowFailException``); transient errors are retried by the library first and then by Airflow.
"""

from __future__ import annotations


class MaintenanceError(Exception):
    """Base class of every error the package raises on purpose."""


class ConfigurationError(MaintenanceError, ValueError):
    """The configuration or a run parameter is invalid; the message names the key and the fix."""


class MappingError(ConfigurationError):
    """The table mapping does not match the database: missing table, column, type or key."""


class PermanentError(MaintenanceError):
    """A failure that a retry cannot fix: access denied, missing bucket, bad credentials."""


class TransientError(MaintenanceError):
    """A failure that may pass on retry: 5xx, SlowDown, timeouts, resets, dropped connections."""


class VerificationError(MaintenanceError):
    """Stored data does not match what was recorded; the message names the rows."""


class PreflightFailed(MaintenanceError):
    """At least one preflight check returned FAIL; heavy stages must not start."""
