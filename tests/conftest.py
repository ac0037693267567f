"""Session fixtures for the real services that `make test` starts (scripts/services.py).

The addresses come from `.local/services.env`, exported by the Makefile. A test that needs a
service which is not running fails with a message saying how to start it, never skips silently.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT))


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"Environment variable {name} is not set. Run the tests with `make test`, or start the "
            "services with `make services-up` and `set -a; source .local/services.env; set +a`."
        )
    return value


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """Conninfo of the application role (owner of the `app` database)."""
    return required_env("APP_PG_DSN")


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    """Conninfo of the superuser, for tests that terminate backends or need pg_repack."""
    return required_env("ADMIN_PG_DSN")


@pytest.fixture(scope="session")
def s3_settings():
    from attachment_ops.storage import S3Settings

    return S3Settings(
        endpoint_url=required_env("S3_ENDPOINT_URL"),
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        access_key_id=required_env("S3_ACCESS_KEY"),
        secret_access_key=required_env("S3_SECRET_KEY"),
    )


@pytest.fixture(scope="session")
def s3_client(s3_settings):
    from attachment_ops.storage import make_s3_client

    return make_s3_client(s3_settings)


@pytest.fixture
def bucket(s3_client):
    """A new empty bucket per test, removed with its objects afterwards."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=item["Key"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def pg_schema(pg_dsn):
    """A fresh schema per test, dropped afterwards; yields its name."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def docker_host() -> str:
    return required_env("DOCKER_HOST")
