"""The loop's inbox: what wakes it (file events, finished builds, ready or stopped servers),
put from any thread, taken by the loop's thread only."""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass

from runner.envs.builds import EnvDone
from runner.servers.retire import Stopped
from runner.servers.starts import ServerDone


@dataclass(frozen=True)
class Wake:
    rescan: bool = False  # files may have changed: rescan the share now
    written: str | None = None  # a local writer finished this file


Message = Wake | EnvDone | ServerDone | Stopped


class Inbox:
    def __init__(self) -> None:
        self._queue: queue.Queue[Message] = queue.Queue()

    def put(self, msg: Message) -> None:
        self._queue.put(msg)

    def drain(self, handle: Callable[[Message], None], *, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a message, then hand every one waiting on."""
        try:
            msg = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            handle(msg)
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                return
