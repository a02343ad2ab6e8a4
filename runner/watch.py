"""File-system events only wake the loop; the periodic rescan is what makes it correct."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Waker(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type != "opened":
            self._wake()


@contextmanager
def watch(folder: Path, wake: Callable[[], None]) -> Iterator[None]:
    """Call ``wake`` on any change under ``folder``; if events are unavailable, just poll."""
    folder.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    try:
        observer.schedule(_Waker(wake), str(folder), recursive=True)
        observer.start()
    except OSError as exc:
        log.warning("file events unavailable for %s (%s): polling only", folder, exc)
        observer = None
    try:
        yield
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
