"""The Dagster instance the roles share (``DAGSTER_HOME``)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def prepare(home: Path) -> None:
    """Create and migrate the instance's storage once, before several processes open it.

    With SQLite, the webserver, the daemon and every code server (Dagster's code server opens
    the instance too) would otherwise create the databases at the same moment, and
    concurrent schema stamping can leave the storage unusable ("more than one head").
    """
    from dagster import DagsterInstance

    started = time.monotonic()
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with DagsterInstance.get() as instance:
            instance.get_runs(limit=1)
            log.info("instance ready in %s (%s, %.1fs)", home,
                     type(instance.run_storage).__name__, time.monotonic() - started)  # fmt: skip
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
