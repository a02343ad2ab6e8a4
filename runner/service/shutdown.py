"""Stopping every server the runner started, when it stops: all at once, each with its
grace; in-flight runs are terminated first (recorded as CANCELED, not lost)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from runner.dagster_side.instance import open_instance
from runner.lifecycle.model import Server
from runner.servers import server as servers

log = logging.getLogger(__name__)


def stop_all(live: list[Server], *, grace: float, instance_home: Path) -> None:
    log.info("stopping %d server(s)", len(live))
    with ExitStack() as stack:
        terminate = None
        if any(isinstance(s, servers.CodeServer) for s in live):
            try:
                terminate = stack.enter_context(open_instance(instance_home)).run_launcher.terminate
            except Exception as exc:  # stop the servers all the same
                log.warning("cannot open the instance to terminate runs: %s", exc)
        threads = [
            threading.Thread(target=_stop_now, args=(s, grace, terminate), daemon=True)
            for s in live
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=grace + 10)


def _stop_now(server: Server, grace: float, terminate: Callable[[str], object] | None) -> None:
    if isinstance(server, servers.CodeServer):
        server.stop(grace=grace, terminate=terminate)
    else:
        server.stop(grace=grace)
