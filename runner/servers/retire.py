"""Servers the workspace no longer points at, and their stop.

A replaced or deleted generation's server is kept until the workspace version without it is
published (the daemon and the webserver have moved on), then stopped in a worker thread:
gRPC ShutdownServer lets its in-flight runs finish, SIGKILL comes after the grace period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from runner.lifecycle.model import Generation, Server

#: Seconds after which a retired server is stopped even if no version without it was
#: published: a webserver that stays unreachable must not keep old servers forever.
OVERDUE_AFTER = 120.0


@dataclass(eq=False)
class Retiring:
    server: Server
    gen: Generation | None  # None: an error server
    since: float  # when it was retired (the supervisor's clock)
    after_version: int | None = None  # stop once this workspace version is published

    @property
    def env_key(self) -> str | None:
        return self.gen.env.key if self.gen is not None else None


@dataclass(frozen=True)
class Stopped:
    """A worker finished stopping ``item``'s server."""

    item: Retiring


class Retirements:
    def __init__(
        self,
        *,
        grace: float,
        done: Callable[[Stopped], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.clock = clock
        self._done = done  # called from a worker thread
        self._pool = ThreadPoolExecutor(64, "retire")  # a stop may wait out its runs
        self._waiting: list[Retiring] = []
        self._stopping: list[Retiring] = []

    def add(self, server: Server, gen: Generation | None, *, immediately: bool = False) -> None:
        """Stop ``server`` once no published workspace points at it (``immediately``: it
        never was in one)."""
        self._waiting.append(Retiring(server, gen, self.clock(), 0 if immediately else None))

    def submitted(self, version: int) -> None:
        """Workspace ``version``, the first without the servers retired so far, is on its way."""
        for item in self._waiting:
            if item.after_version is None:
                item.after_version = version

    def stop_due(self, published: int) -> None:
        """Start stopping the servers no published workspace points at any more."""
        keep = []
        for item in self._waiting:
            due = item.after_version is not None and published >= item.after_version
            if due or self.clock() - item.since > OVERDUE_AFTER:
                self._stopping.append(item)
                self._pool.submit(self._stop, item)
            else:
                keep.append(item)
        self._waiting = keep

    def stopped(self, msg: Stopped) -> None:
        self._stopping.remove(msg.item)

    def items(self) -> list[Retiring]:
        """Every retired server not stopped yet."""
        return self._waiting + self._stopping

    def env_keys(self) -> set[str]:
        """Environments that retired servers still run in."""
        return {key for item in self.items() if (key := item.env_key) is not None}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _stop(self, item: Retiring) -> None:
        try:
            item.server.stop(grace=self.grace)
        finally:
            self._done(Stopped(item))
