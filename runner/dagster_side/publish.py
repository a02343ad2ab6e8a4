"""Publish workspace versions in order: file, then daemon, then webserver.

Webservers started as ``runner webserver`` follow the file themselves, after the daemon
(see :mod:`follow`): the publisher waits until each has the new version. A webserver that
does not (a stock ``dagster-webserver`` at ``webserver_url``) is asked to re-read the file
with the ``reloadWorkspace`` mutation, once the daemon has it.

A background thread so the reconcile loop never blocks on a slow reload. It always publishes
the newest version submitted (intermediate ones are skipped), and reports the newest version
that is fully published, so the loop knows when a retired server is no longer referenced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runner.base import metrics
from runner.base.files import write_if_changed
from runner.dagster_side import follow, workspace

#: Seconds the daemon has to take a new workspace in before the webserver is reloaded anyway.
DAEMON_TIMEOUT = 60.0

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self,
        workspace_path: Path,
        *,
        webserver_url: str | None,
        on_published: Callable[[int], None] = lambda version: None,
    ) -> None:
        self.path = workspace_path
        self.webserver_url = webserver_url
        self.on_published = on_published
        self._cond = threading.Condition()
        self._wanted: tuple[int, list[workspace.Entry], workspace.Static] | None = None
        self._version = 0
        self.published = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._warned_no_daemon = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def submit(self, entries: list[workspace.Entry], static: workspace.Static | None = None) -> int:
        """Ask for ``entries`` to be published; return the version number it will carry."""
        with self._cond:
            self._version += 1
            self._wanted = (self._version, sorted(entries), static or workspace.Static())
            self._cond.notify_all()
            return self._version

    def _newer_wanted(self, version: int) -> bool:
        with self._cond:
            return self._stopping or (self._wanted is not None and self._wanted[0] > version)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                version, entries, static = self._wanted
                self._wanted = None
            self._publish(version, entries, static)

    def _publish(
        self, version: int, entries: list[workspace.Entry], static: workspace.Static
    ) -> None:
        started = time.monotonic()
        text = workspace.render(entries, static)
        write_if_changed(self.path, text)
        digest = follow.file_digest(self.path)
        if not self._wait_for_daemon(digest, version):
            return
        daemon_done = time.monotonic()
        if not self._webservers_have(digest, version, entries):
            return
        self.published = version
        metrics.PUBLISH_SECONDS.observe(time.monotonic() - started)
        log.info(
            "workspace v%d published: %d location(s); daemon %.2fs, webserver %.2fs",
            version,
            len(entries) + len(static.names),
            daemon_done - started,
            time.monotonic() - daemon_done,
        )
        self.on_published(version)

    def _wait_for_daemon(self, digest: str | None, version: int) -> bool:
        """Wait until a live daemon has loaded ``digest``; False if superseded meanwhile."""
        deadline = time.monotonic() + DAEMON_TIMEOUT
        while True:
            ack = follow.read_ack(self.path)
            if ack is None or not ack.fresh():
                if not self._warned_no_daemon:
                    log.warning(
                        "no daemon is following %s: schedules, sensors and queued runs of new "
                        "locations wait for the daemon's own reload (up to 60s)",
                        self.path,
                    )
                    self._warned_no_daemon = True
                return True
            self._warned_no_daemon = False
            if ack.digest == digest:
                return True
            if self._newer_wanted(version):
                return False
            if time.monotonic() > deadline:
                log.warning(
                    "daemon (pid %d) has not loaded workspace v%d after %.0fs; "
                    "reloading the webserver anyway",
                    ack.pid,
                    version,
                    DAEMON_TIMEOUT,
                )
                return True
            time.sleep(0.05)

    def _webservers_have(
        self, digest: str | None, version: int, entries: list[workspace.Entry]
    ) -> bool:
        """Wait until every webserver following the file has ``digest`` (else reload the one
        at ``webserver_url``); False if superseded meanwhile."""
        deadline = time.monotonic() + DAEMON_TIMEOUT + follow.DAEMON_TIMEOUT
        while True:
            acks = follow.webserver_acks(self.path)
            if not acks:
                return not self.webserver_url or self._reload_webserver(version, entries)
            if all(ack.digest == digest for ack in acks):
                return True
            if self._newer_wanted(version):
                return False
            if time.monotonic() > deadline:
                log.warning(
                    "webserver(s) %s have not taken workspace v%d in; going on",
                    ", ".join(f"pid {a.pid} on {a.host}" for a in acks if a.digest != digest),
                    version,
                )
                return True
            with self._cond:
                self._cond.wait(timeout=0.02)

    def _reload_webserver(self, version: int, entries: list[workspace.Entry]) -> bool:
        delay, failures = 0.5, 0
        while True:
            if follow.webserver_acks(self.path):  # it follows the file now: nothing to ask
                return self._webservers_have(follow.file_digest(self.path), version, entries)
            try:
                statuses = workspace.reload_webserver(self.webserver_url)
            except workspace.ReloadError as exc:
                failures += 1
                # The webserver reads the file when it starts: waiting for it is normal.
                (log.warning if failures == 10 else log.debug)(
                    "webserver not reloaded yet (%s); retrying", exc
                )
            else:
                if failures >= 10:
                    log.info("webserver reachable again")
                # Errors the runner already reported are expected; others are news.
                expected = {e.name for e in entries if e.expect_error}
                for status in statuses:
                    if status.error and status.name not in expected:
                        log.warning(
                            "webserver could not load %s: %s",
                            status.name,
                            status.error.strip().splitlines()[0],
                        )
                return True
            with self._cond:
                self._cond.wait(timeout=delay)
            if self._newer_wanted(version):
                return False
            delay = min(delay * 2, 5.0)
