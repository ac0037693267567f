"""Options, seed, fixtures and the closing summary of the reliability suite.

Each fault kind runs at several random points. The points come from one session seed, printed
in the header and in the summary, and ``RELIABILITY_SEED=<n>`` replays them. Each test derives
its own generator from the seed and its node id, so the order of tests does not matter.
``--soak`` or ``RELIABILITY_SOAK=1`` raises the number of points and makes the large blob 300 MB.
``RELIABILITY_POINTS=<n>`` sets the number of points directly. ``RELIABILITY_LARGE=1`` makes the
large blob 300 MB without the rest of the soak.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.reliability.dataset import Dataset, suite_config
from tests.reliability.summary import RECORD, SUMMARY_PATH

CI_POINTS = 2
SOAK_POINTS = 8


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="Run the reliability suite as a soak: more random points per fault and a blob of 300 MB.",
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    soak = bool(config.getoption("--soak", default=False)) or _env_flag("RELIABILITY_SOAK")
    seed_text = os.environ.get("RELIABILITY_SEED", "").strip()
    RECORD.seed = int(seed_text) if seed_text else random.SystemRandom().randrange(10**9)
    RECORD.soak = soak
    points_text = os.environ.get("RELIABILITY_POINTS", "").strip()
    if points_text:
        RECORD.points = int(points_text)
    elif soak:
        RECORD.points = SOAK_POINTS
    else:
        RECORD.points = CI_POINTS


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"reliability: seed {RECORD.seed} (replay with RELIABILITY_SEED={RECORD.seed}), "
        f"{RECORD.points} random points per fault kind, soak {RECORD.soak}"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test that takes ``point`` one run per random point."""
    if "point" in metafunc.fixturenames:
        metafunc.parametrize("point", range(RECORD.points), ids=lambda index: f"p{index}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and hasattr(report, "wasxfail") and report.skipped:
        RECORD.known_fault(report.nodeid.split("::")[-1], report.wasxfail)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if RECORD.used:
        RECORD.write()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not RECORD.used:
        return
    terminalreporter.write_sep("=", "reliability summary")
    for line in RECORD.table_lines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {os.path.relpath(SUMMARY_PATH)}")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A generator seeded from the session seed and this test's node id (including its point)."""
    return random.Random(f"{RECORD.seed}:{request.node.nodeid}")


@pytest.fixture
def large_blob_bytes() -> int:
    """Size of the large-blob case: 40 MB in CI, 300 MB in a soak or with RELIABILITY_LARGE=1."""
    if RECORD.soak or _env_flag("RELIABILITY_LARGE"):
        return 300 * 1000 * 1000
    return 40 * 1000 * 1000


@pytest.fixture
def make_dataset(pg_dsn, pg_schema, bucket, s3_client) -> Iterator[Any]:
    """Create attachments tables in this test's schema; each call gets its own table and key prefix.

    ``make_dataset(rows, dsn=..., **sections)`` returns a filled ``Dataset``. Afterwards the ledger
    schema is dropped and unfinished multipart uploads are aborted before the bucket is removed.
    """
    made: list[Dataset] = []

    def make(rows: list | None = None, *, dsn: str | None = None, **sections: Any) -> Dataset:
        index = len(made)
        table = f"attachments_{index}"
        config = suite_config(pg_schema, table, bucket, prefix=f"t{index}/", **sections)
        dataset = Dataset(dsn or pg_dsn, pg_schema, table, bucket, config).create()
        if rows:
            dataset.insert(rows)
        made.append(dataset)
        return dataset

    RECORD.used = True
    yield make
    admin = os.environ.get("ADMIN_PG_DSN", pg_dsn)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"{pg_schema}_ledger"))
        )
    abort_uploads(s3_client, bucket)


def abort_uploads(s3_client: Any, bucket: str) -> int:
    """Abort every unfinished multipart upload in ``bucket``; return how many there were."""
    listing = s3_client.list_multipart_uploads(Bucket=bucket)
    uploads = listing.get("Uploads", [])
    for upload in uploads:
        s3_client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(uploads)


@dataclass
class Role:
    """A throwaway login role with a password, allowed to work in one test's schema."""

    name: str
    password: str
    dsn: str


@pytest.fixture
def throwaway_role(admin_dsn, pg_dsn, pg_schema) -> Iterator[Role]:
    """Create a login role that owns what it creates in the test's schema and may create schemas.

    Its sessions differ from every other project's by ``usename``, so a test may terminate them
    without touching anyone else's. Dropped, with everything it owns, afterwards.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"rel_{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    ident = sql.Identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(database), ident))
        conn.execute(
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(pg_schema), ident)
        )
    params = conninfo_to_dict(pg_dsn)
    params.update(user=name, password=password)
    yield Role(name=name, password=password, dsn=make_conninfo(**params))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test alone, which it may restart and break."""

    base: Path
    port: int
    dsn: str

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def pg_ctl(self, *args: str) -> None:
        from scripts.services import as_postgres, pg_bin

        as_postgres(
            [pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base / "postgres.log"), *args]
        )

    def restart(self) -> float:
        """Restart the server (fast shutdown, which ends every session) and return the seconds it took."""
        started = time.monotonic()
        self.pg_ctl("-m", "fast", "-w", "-t", "60", "restart")
        return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Start a throwaway cluster on a free 127.0.0.1 port under /tmp, as the ``postgres`` user.

    The server refuses to run as root, and the ``postgres`` user may not be able to traverse
    the checkout's parents, so the data folder lives in a mktemp folder under /tmp. Stopped and
    deleted afterwards.
    """
    import shutil

    from scripts.services import PG_SYSTEM_USER, as_postgres, free_port, pg_bin

    base = Path(tempfile.mkdtemp(prefix="attachment-ops-reliability-pg."))
    os.chmod(base, 0o755)
    password = uuid.uuid4().hex
    password_file = base / "pwfile"
    password_file.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, PG_SYSTEM_USER, PG_SYSTEM_USER)
        shutil.chown(password_file, PG_SYSTEM_USER, PG_SYSTEM_USER)
    port = free_port()
    as_postgres(
        [pg_bin("initdb"), "-D", str(base / "data"), "-U", "postgres", "-A", "scram-sha-256",
         f"--pwfile={password_file}", "-E", "UTF8", "--locale=C.UTF-8"]
    )  # fmt: skip
    password_file.unlink()
    with open(base / "data" / "postgresql.conf", "a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = '64MB'\n"
        )
    cluster = Cluster(base=base, port=port, dsn=f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres")
    cluster.pg_ctl("-w", "-t", "60", "start")
    try:
        yield cluster
    finally:
        try:
            cluster.pg_ctl("-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(base, ignore_errors=True)
