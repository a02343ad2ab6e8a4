"""How the daemon and the webserver follow workspace.yaml, and say what they have loaded.

Each writes an acknowledgement beside workspace.yaml: the digest of the version it has
loaded, its pid and host, and a heartbeat. The runner's publisher reads them: it makes the
webserver show a new version only once the daemon has it (so a location visible in the UI
can always be run), and retires an old server only once no webserver points at it.

The webserver follows the file on its own (:class:`WebserverFollower`), as the daemon does
(``daemon.run``): every webserver on the share shows the workspace its runner serves,
a standby runner's webserver included, and the GraphQL ``reloadWorkspace`` mutation is left
to the UI's "Reload all".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.base.files import write_if_changed
from runner.base.process import pid_alive

log = logging.getLogger(__name__)

DAEMON_ACK = ".workspace-daemon.json"
#: One per webserver process: ``.workspace-webserver.<host>.<pid>.json``.
WEBSERVER_ACK = ".workspace-webserver"
HEARTBEAT_EVERY = 5.0
#: An acknowledgement older than this means no one is following the workspace there.
ACK_FRESH_FOR = 30.0
#: Seconds a webserver waits for the daemon to take a new version in before it shows it anyway.
DAEMON_TIMEOUT = 60.0


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Ack:
    digest: str | None  # digest of the workspace.yaml loaded (None: starting)
    heartbeat: float  # wall-clock time of the last write
    pid: int
    host: str

    def fresh(self, now: float | None = None) -> bool:
        """Written recently, by a process that is still there (where this host can tell)."""
        if self.host == socket.gethostname() and not pid_alive(self.pid):
            return False
        return ((now or time.time()) - self.heartbeat) < ACK_FRESH_FOR


def ack_path(workspace: Path, role: str = "daemon") -> Path:
    if role == "daemon":
        return workspace.parent / DAEMON_ACK
    return workspace.parent / f"{WEBSERVER_ACK}.{socket.gethostname()}.{os.getpid()}.json"


def _read(path: Path) -> Ack | None:
    try:
        data = json.loads(path.read_text())
        return Ack(data["digest"], float(data["heartbeat"]), int(data["pid"]), str(data["host"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def read_ack(workspace: Path) -> Ack | None:
    """The daemon's acknowledgement."""
    return _read(ack_path(workspace))


def webserver_acks(workspace: Path) -> list[Ack]:
    """The fresh acknowledgements of the webservers following ``workspace``."""
    found = (_read(p) for p in workspace.parent.glob(f"{WEBSERVER_ACK}.*.json"))
    return [ack for ack in found if ack is not None and ack.fresh()]


def write_ack(workspace: Path, digest: str | None, role: str = "daemon") -> None:
    ack = {
        "digest": digest,
        "heartbeat": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    write_if_changed(ack_path(workspace, role), json.dumps(ack) + "\n")


def daemon_has(workspace: Path, digest: str | None) -> bool:
    """The daemon has loaded ``digest``, or no daemon follows the workspace."""
    ack = read_ack(workspace)
    return ack is None or not ack.fresh() or ack.digest == digest


class WebserverFollower:
    """Keeps a webserver's workspace at workspace.yaml's version, a few tens of ms after
    the daemon has it (``refresh``: load what changed, see ``reload.refresh_changed``)."""

    def __init__(
        self,
        workspace: Path,
        loaded: str | None,
        refresh: Callable[[], None],
        *,
        check_every: float = 0.05,
    ) -> None:
        self.workspace = workspace
        self.loaded = loaded
        self.refresh = refresh
        self.check_every = check_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workspace-follower", daemon=True)

    def start(self) -> None:
        write_ack(self.workspace, self.loaded, "webserver")
        self._thread.start()
        log.info("following %s (after the daemon has each change)", self.workspace)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        ack_path(self.workspace, "webserver").unlink(missing_ok=True)

    def _run(self) -> None:
        last_beat, waiting_since = time.monotonic(), None
        while not self._stop.wait(self.check_every):
            now = time.monotonic()
            current = file_digest(self.workspace)
            if current != self.loaded:
                waiting_since = waiting_since or now
                if daemon_has(self.workspace, current) or now - waiting_since > DAEMON_TIMEOUT:
                    try:
                        self.refresh()  # load errors are recorded on their entries
                    except Exception:  # never the end of following: the next change retries
                        log.exception("could not take in the new workspace")
                    self.loaded, waiting_since = current, None
                    write_ack(self.workspace, self.loaded, "webserver")
                    last_beat = now
                    continue
            if now - last_beat > HEARTBEAT_EVERY:
                write_ack(self.workspace, self.loaded, "webserver")
                last_beat = now
