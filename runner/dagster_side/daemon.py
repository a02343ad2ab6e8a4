"""Dagster's daemon, made to follow workspace.yaml within a second, and to say so.

Runs launched from the UI are queued and dequeued *by the daemon*; a run for a location the
daemon has not loaded fails at once. Stock ``dagster-daemon run`` re-reads workspace.yaml
only every 60 s (``RELOAD_WORKSPACE_INTERVAL``), so this module runs the same controller
with its own check loop: every 50 ms it looks at workspace.yaml, loads what changed in it
(see ``reload``) when the file changed, and records the digest it has loaded in an acknowledgement
file beside workspace.yaml (see ``follow``). The webserver takes a new version in only once the
daemon has acknowledged it, so a location visible in the UI can always be run.

This leans on Dagster internals (``daemon_controller_from_instance`` and the controller's
``_workspace_process_context``); the Dagster version is pinned in pyproject.toml and
``tests/test_daemon.py`` fails loudly if they move.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from runner.dagster_side.follow import HEARTBEAT_EVERY, file_digest, write_ack
from runner.dagster_side.follow import ack_path as _ack_path

log = logging.getLogger(__name__)


def run(workspace: Path, *, check_every: float = 0.05, log_format: str = "text") -> None:
    """Run all daemons configured on the instance (``DAGSTER_HOME``) until interrupted.

    ``log_format`` "json" makes Dagster's own daemon log lines JSON too."""
    write_ack(workspace, None)  # first: the runner waits for a daemon that is starting
    from dagster import DagsterInstance

    from runner.dagster_side import reload
    from runner.dagster_side.internals import (
        RELOAD_WORKSPACE_INTERVAL,
        THREAD_CHECK_INTERVAL,
        WorkspaceFileTarget,
        capture_interrupts,
        daemon_controller_from_instance,
        raise_interrupts_as,
    )

    reload.patch()

    try:
        with capture_interrupts(), DagsterInstance.get() as instance:
            loaded = file_digest(workspace)  # read before loading: a later write reloads
            with daemon_controller_from_instance(
                instance,
                workspace_load_target=WorkspaceFileTarget(paths=[str(workspace)]),
                log_format="json" if log_format == "json" else "colored",
            ) as controller:
                context = controller._workspace_process_context
                write_ack(workspace, loaded)
                log.info("following %s (reloading within 0.05 s of each change)", workspace)
                last_refresh = last_beat = last_health = last_threads = time.monotonic()
                while True:
                    with raise_interrupts_as(KeyboardInterrupt):
                        time.sleep(check_every)
                        now = time.monotonic()
                        if now - last_threads > THREAD_CHECK_INTERVAL:
                            controller.check_daemon_threads()
                            last_threads = now
                        current = file_digest(workspace)
                        if current != loaded or now - last_refresh > RELOAD_WORKSPACE_INTERVAL:
                            started = time.monotonic()
                            # Load errors are caught and recorded on their entries.
                            outcome = reload.refresh_changed(context, reload=False)
                            if current != loaded:
                                log.info(
                                    "loaded the new workspace in %.2fs: %d loaded, %d "
                                    "kept, %d removed",
                                    time.monotonic() - started,
                                    len(outcome.loaded),
                                    outcome.kept,
                                    outcome.removed,
                                )
                            loaded, last_refresh = current, time.monotonic()
                            write_ack(workspace, loaded)
                            last_beat = last_refresh
                        elif now - last_beat > HEARTBEAT_EVERY:
                            write_ack(workspace, loaded)
                            last_beat = now
                        if now - last_health > 60:
                            controller.check_daemon_heartbeats()
                            last_health = now
    except KeyboardInterrupt:
        pass
    finally:
        _ack_path(workspace).unlink(missing_ok=True)
