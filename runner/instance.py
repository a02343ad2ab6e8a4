"""The Dagster instance the roles share (``DAGSTER_HOME``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance

log = logging.getLogger(__name__)


@contextmanager
def open_instance(home: Path) -> Iterator[DagsterInstance]:
    """The instance configured in ``home`` (its dagster.yaml), as ``DAGSTER_HOME`` would."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


def prepare(home: Path) -> None:
    """Create and migrate the instance's storage once, before several processes open it.

    With SQLite, the webserver, the daemon and every code server (Dagster's code server opens
    the instance too) would otherwise create the databases at the same moment, and
    concurrent schema stamping can leave the storage unusable ("more than one head").
    """
    started = time.monotonic()
    with open_instance(home) as instance:
        instance.get_runs(limit=1)
        log.info("instance ready in %s (%s, %.1fs)", home,
                 type(instance.run_storage).__name__, time.monotonic() - started)  # fmt: skip
