"""One runner per share: a lease in a file beside workspace.yaml, kept alive by a heartbeat.

Two runners on one share would start two servers per file and overwrite each other's
workspace.yaml. File locks do not help across machines on SMB or NFS, and a shared process
table does not exist there, so ownership is a small file: who holds it (a random token, the
host, the pid, since when) and when it last said so. A runner takes the lease when there is
none, when it is released, when its holder stopped renewing it for ``STALE_AFTER`` seconds
(a crashed or cut-off machine blocks nobody for long), or when its holder's pid is gone on
this host. Otherwise it waits as a standby and takes over when the holder goes. After
writing, a runner reads the file again a moment later: if two wrote at once, one token is
left and the other runner goes back to waiting. A holder that finds another token on renewal
has lost the lease (it was cut off for longer than ``STALE_AFTER``) and stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from runner.base.files import write_if_changed
from runner.base.process import pid_alive
from runner.service.status import STALE_AFTER

log = logging.getLogger(__name__)

LEASE_NAME = ".runner-lease.json"
#: Seconds between renewals, and between looks at the lease while waiting.
RENEW_EVERY = 5.0
#: Seconds to wait after writing before reading back (a concurrent writer shows by then).
SETTLE = 1.0


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    since: str  # ISO 8601, UTC
    heartbeat: float  # wall-clock time of the last renewal

    def describe(self) -> str:
        return f"runner pid {self.pid} on {self.host}, since {self.since}"


class Lease:
    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.path = path
        self.clock = clock
        self.stale_after = stale_after
        now = clock()
        self.mine = Holder(
            token=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            heartbeat=now,
        )
        self._renewed = 0.0

    def holder(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def free(self, holder: Holder | None) -> bool:
        """Whether ``holder`` (as read) lets this runner take the lease."""
        if holder is None or holder.token == self.mine.token:
            return True
        if self.clock() - holder.heartbeat > self.stale_after:
            return True
        if holder.host != self.mine.host:
            return False
        # Same host: a holder whose pid is gone, or is this very process (a restarted
        # container gives its processes the same pids again), is a previous runner.
        return holder.pid == self.mine.pid or not pid_alive(holder.pid)

    def held(self) -> bool:
        """Another runner, alive, holds the lease now."""
        holder = self.holder()
        return holder is not None and not self.free(holder)

    def acquire(self, stopping: threading.Event) -> bool:
        """Block until this runner holds the lease (``True``) or ``stopping`` is set."""
        said: str | None = None
        while not stopping.is_set():
            holder = self.holder()
            if self.free(holder):
                self._write()
                if stopping.wait(SETTLE):
                    break
                back = self.holder()
                if back is not None and back.token == self.mine.token:
                    if said is not None:
                        log.info("took over the share from %s", said)
                    return True
                continue  # another runner wrote at the same moment and won
            assert holder is not None
            if said != holder.describe():
                said = holder.describe()
                log.warning(
                    "standby: %s serves this share (%s); taking over when it stops or its "
                    "heartbeat is older than %.0fs",
                    said,
                    self.path,
                    self.stale_after,
                )
            stopping.wait(RENEW_EVERY / 2)
        return False

    def renew(self) -> bool:
        """Renew the lease every ``RENEW_EVERY`` seconds; ``False`` if another runner holds
        it now (this one was cut off for longer than ``STALE_AFTER``)."""
        now = self.clock()
        if now - self._renewed < RENEW_EVERY:
            return True
        holder = self.holder()
        if holder is not None and holder.token != self.mine.token and not self.free(holder):
            log.error("lost the share to %s: stopping", holder.describe())
            return False
        self._write()
        return True

    def release(self) -> None:
        holder = self.holder()
        if holder is not None and holder.token == self.mine.token:
            self.path.unlink(missing_ok=True)

    def _current(self) -> Holder:
        return Holder(**{**asdict(self.mine), "heartbeat": self._renewed})

    def _write(self) -> None:
        self._renewed = self.clock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(self.path, json.dumps(asdict(self._current())) + "\n")
