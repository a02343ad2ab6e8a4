"""File-system events only wake the loop; the periodic rescan is what makes it correct.

One hint is taken from events: a file closed after writing, or renamed into place, by a
process on this machine is complete, so it need not wait out the stability window. Changes
made by other machines on a network share produce no events at all; the window covers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None], written: Callable[[str], None]) -> None:
        self._wake = wake
        self._written = written

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE):
            return
        if not event.is_directory:
            if event.event_type == EVENT_TYPE_CLOSED:
                self._written(str(event.src_path))
            elif event.event_type == EVENT_TYPE_MOVED:
                self._written(str(event.dest_path))
        self._wake()


@contextmanager
def watch(
    folder: Path, wake: Callable[[], None], written: Callable[[str], None] = lambda path: None
) -> Iterator[None]:
    """Call ``wake`` on any change under ``folder``, and ``written(path)`` when a file is
    complete. If events are unavailable (inotify limits), the loop just polls."""
    folder.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    try:
        observer.schedule(_Handler(wake, written), str(folder), recursive=True)
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
