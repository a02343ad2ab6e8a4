"""The Dagster instance the roles share (``DAGSTER_HOME``)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.dagster_side.container_runs import Kind, launcher_kind
from runner.isolation import tenancy

if TYPE_CHECKING:
    from dagster import DagsterInstance

log = logging.getLogger(__name__)


@contextmanager
def open_instance(home: Path) -> Iterator[DagsterInstance]:
    """The instance configured in ``home`` (its dagster.yaml), as ``DAGSTER_HOME`` would."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


@dataclass(frozen=True)
class Ready:
    """What the runner needs to know of a prepared instance."""

    #: Packages every location's environment needs to open this instance (e.g.
    #: ``dagster-postgres``): code servers and run workers open it in the file's environment.
    packages: tuple[str, ...]
    #: Where its run launcher starts runs: ``local`` (processes), ``docker`` or ``k8s``.
    launcher: Kind = "local"
    #: Its storage is SQLite files below ``home`` (which every run writes).
    sqlite: bool = False


#: How the entrypoint hands the instance it prepared to the runner it starts next, which
#: then need not open it again (a second or two of CPU while every role starts).
READY_ENV = "RUNNER_INSTANCE_READY"


def hand_over(home: Path, ready: Ready, database_url: str | None) -> str:
    """``ready`` as the value of :data:`READY_ENV`, for the roles started now."""
    return json.dumps(
        {
            "home": str(home),
            "config": _config_stamp(home, database_url),
            "packages": list(ready.packages),
            "launcher": ready.launcher,
            "sqlite": ready.sqlite,
        }
    )


def handed_over(home: Path, value: str | None, database_url: str | None) -> Ready | None:
    """What the entrypoint prepared before starting this process (``value`` of
    :data:`READY_ENV`), if it was this instance, configured as it is now; else None."""
    try:
        data = json.loads(value or "null")
        stamp = _config_stamp(home, database_url)
        if not data or data["home"] != str(home) or data["config"] != stamp:
            return None
        return Ready(tuple(data["packages"]), data["launcher"], sqlite=bool(data["sqlite"]))
    except (ValueError, KeyError, TypeError):
        return None


def _config_stamp(home: Path, database_url: str | None) -> str:
    """What the instance is configured with: its dagster.yaml and the database it names."""
    try:
        config = (home / "dagster.yaml").read_bytes()
    except OSError:
        config = b""
    url = (database_url or "").encode()
    return hashlib.sha256(config + b"\0" + url).hexdigest()[:16]


def prepare(
    home: Path,
    *,
    retry_for: float = float("inf"),
    shared_with: tuple[int, int] | None = None,
    database_url: str | None = None,
) -> Ready:
    """Create and migrate the instance's storage once, before several processes open it.

    With SQLite, the webserver, the daemon and every code server (Dagster's code server opens
    the instance too) would otherwise create the databases at the same moment, and
    concurrent schema stamping can leave the storage unusable ("more than one head"). A
    database that cannot be reached is reported in one line and retried with backoff.

    ``shared_with``: locations run as users of their own, and the service's roles as this
    (uid, gid): what every run writes in ``home`` is opened to them (``tenancy``).
    """
    started, delay = time.monotonic(), 1.0
    while True:
        try:
            with _exclusive(home), open_instance(home) as instance:
                instance.get_runs(limit=1)
                storage = type(instance.run_storage).__name__
                ready = Ready(
                    storage_packages(instance),
                    launcher_kind(instance.run_launcher),
                    sqlite=storage.startswith("Sqlite"),
                )
                if shared_with is not None:
                    tenancy.share_instance(home, service=shared_with, sqlite=ready.sqlite)
                log.info(
                    "instance ready in %s (%s, runs: %s, %.1fs)",
                    home,
                    storage,
                    ready.launcher,
                    time.monotonic() - started,
                )
                return ready
        except Exception as exc:  # any failure to open it: say why, in one line, and retry
            if time.monotonic() - started + delay > retry_for:
                raise
            log.error(
                "cannot open the Dagster instance in %s%s: %s; retrying in %.0fs",
                home,
                _database_where(database_url),
                _first_line(exc),
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


@contextmanager
def _exclusive(home: Path) -> Iterator[None]:
    """One process at a time creates the storage (roles started together on one machine)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".runner-prepare.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def storage_packages(instance: DagsterInstance) -> tuple[str, ...]:
    """Distributions outside dagster itself that the instance's configured classes live in."""
    parts = [
        instance.run_storage,
        instance.event_log_storage,
        instance.schedule_storage,
        instance.compute_log_manager,
        instance.run_launcher,
        instance.run_coordinator,
    ]
    roots = {type(p).__module__.split(".")[0] for p in parts if p is not None}
    return tuple(sorted(r.replace("_", "-") for r in roots if r != "dagster"))


def _database_where(url: str | None) -> str:
    """ " (PostgreSQL at HOST:PORT, database DB)" for the configured URL; never its password."""
    from urllib.parse import urlsplit

    if not url:
        return ""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = "?"
    return f" (PostgreSQL at {parts.hostname}:{port}, database {parts.path.lstrip('/') or '-'})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def share_new_sqlite_files() -> None:
    """In the webserver and the daemon, where locations run as users of their own: the SQLite
    files they create (a run's event log, as the run is queued) are writable by the runs of
    every location, as the ones :func:`prepare` opened (SQLite creates files with mode 0644).
    Leans on ``SqliteEventLogStorage._initdb``, which runs before a shard is first opened."""
    from runner.dagster_side.internals import SqliteEventLogStorage

    initdb = SqliteEventLogStorage._initdb

    def _initdb(self: SqliteEventLogStorage, engine, for_index_shard: bool = False) -> None:  # type: ignore[no-untyped-def]
        if engine.url.database:
            tenancy.create_shared(engine.url.database)
        initdb(self, engine, for_index_shard)

    SqliteEventLogStorage._initdb = _initdb  # type: ignore[method-assign]
