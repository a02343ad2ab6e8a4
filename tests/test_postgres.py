"""Production storage: the whole flow against a real PostgreSQL, in a fresh database.

Uses ``RUNNER_TEST_POSTGRES_URL`` (CI sets it, and there these tests must run), else a local
server at 127.0.0.1:5432 if one answers; otherwise they skip, saying why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import uv

from runner.base import paths
from runner.service import config
from tests.needs import missing
from tests.service import asset_file, drop, running, wait_for

pytestmark = pytest.mark.slow

SCRIPT = asset_file(["stored"])


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    configured = os.environ.get("RUNNER_TEST_POSTGRES_URL")
    server = configured or "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        admin = psycopg2.connect(server, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        if configured:
            pytest.fail(f"RUNNER_TEST_POSTGRES_URL is set but unreachable: {exc}")
        missing(f"needs PostgreSQL at {server} or RUNNER_TEST_POSTGRES_URL ({str(exc).strip()})")
    admin.autocommit = True
    db = f"runner_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    try:
        yield _with_db(server, db)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_runs_are_stored_in_postgres(database_url: str, tmp_path: Path, state_dir: Path) -> None:
    env = {"DAGSTER_DATABASE_URL": database_url}
    share = tmp_path / "share"
    with running(share, state_dir, tmp_path / "service.log", env) as service:
        drop(service.code_dir / "stored.py", SCRIPT)
        service.wait_loaded("stored")
        assert "adding dagster-postgres" in service.log_text()  # to the file's environment
        run_id = service.materialize_all("stored")
        assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)

        # A file with its own lock (no dagster-postgres in it): the storage package is
        # installed beside the locked versions, and its runs reach the database too.
        locked = asset_file(["locked"])
        checkout = tmp_path / "checkout"
        checkout.mkdir()
        (checkout / "locked.py").write_text(locked)
        # dagster as the runner's own: Dagster's libraries are not always released with
        # every dagster patch release, and dagster-postgres must match it exactly.
        subprocess.run(
            [
                uv.find_uv_bin(),
                "lock",
                "--script",
                "locked.py",
                "--quiet",
                "--upgrade-package",
                f"dagster=={version('dagster')}",
            ],
            cwd=checkout,
            check=True,
        )
        lock = (checkout / "locked.py.lock").read_text()
        assert "dagster-postgres" not in lock
        drop(service.code_dir / "locked.py.lock", lock)
        drop(service.code_dir / "locked.py", locked)
        service.wait_loaded("locked")
        locked_run = service.materialize_all("locked")
        assert service.wait_run(locked_run) == "SUCCESS", service.run_failure_text(locked_run)

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == ("SUCCESS",)
    assert (share / "dagster_home" / "postgres" / "dagster.yaml").exists()
    assert not (share / "dagster_home" / "history").exists()  # SQLite was not used


def test_an_unreachable_database_is_one_clear_error_retried(
    tmp_path: Path, state_dir: Path
) -> None:
    env = {"DAGSTER_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/nowhere"}
    with running(tmp_path / "share", state_dir, tmp_path / "service.log", env) as service:
        wait_for(
            "two attempts",
            lambda: service.log_text().count("cannot open the Dagster") >= 2,
            timeout=60,
        )
        assert service.proc.poll() is None  # still waiting, not crashed
        log = service.log_text()
        assert "retrying in" in log and "Traceback" not in log
        assert "(PostgreSQL at 127.0.0.1:9, database nowhere)" in log  # where it tried
        assert service.stop(signal.SIGTERM) < 15
    assert service.proc.returncode == 130


def test_database_url_from_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_DATABASE_URL", raising=False)
    monkeypatch.setenv("DAGSTER_POSTGRES_HOST", "db")
    monkeypatch.setenv("DAGSTER_POSTGRES_USER", "dagster")
    monkeypatch.setenv("DAGSTER_POSTGRES_PASSWORD", "p@ss word")
    monkeypatch.setenv("DAGSTER_POSTGRES_DB", "runs")
    assert config.database_url() == "postgresql+psycopg2://dagster:p%40ss%20word@db:5432/runs"
    monkeypatch.setenv("DAGSTER_DATABASE_URL", "postgres://x@y/z")
    assert config.database_url() == "postgresql+psycopg2://x@y/z"


def test_shipped_instance_settings_match_the_templates() -> None:
    share = Path(__file__).resolve().parent.parent / "share" / "dagster_home"
    assert (share / "dagster.yaml").read_text() == (paths.TEMPLATES / "dagster.yaml").read_text()
    assert (share / "postgres" / "dagster.yaml").read_text() == (
        paths.TEMPLATES / "postgres.dagster.yaml"
    ).read_text()


def test_roles_as_separate_processes_sharing_the_share_and_the_database(
    database_url: str, tmp_path: Path, state_dir: Path
) -> None:
    """As separate containers would: webserver, daemon and runner each alone, the code servers
    on another address, and a run launched from the webserver."""
    share, env = tmp_path / "share", {"DAGSTER_DATABASE_URL": database_url}
    with (
        running(share, state_dir, tmp_path / "web.log", env, role="webserver") as web,
        running(share, state_dir, tmp_path / "daemon.log", env, role="daemon") as daemon,
    ):
        runner_env = {
            **env,
            "DAGSTER_WEBSERVER_URL": web.url,
            "RUNNER_SERVER_HOST": "127.0.0.2",
            "RUNNER_ADVERTISE_HOST": "127.0.0.2",
        }
        with running(share, state_dir, tmp_path / "runner.log", runner_env, role="runner") as rn:
            drop(rn.code_dir / "stored.py", SCRIPT)
            web.wait_loaded("stored")
            run_id = web.materialize_all("stored")
            assert web.wait_run(run_id) == "SUCCESS", web.run_failure_text(run_id)
        assert daemon.proc.poll() is None and web.proc.poll() is None
