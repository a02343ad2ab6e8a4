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


#: File systems whose changes made by other machines produce no inotify events.
NETWORK_FS = {
    "cifs",
    "smb3",
    "smbfs",
    "nfs",
    "nfs4",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "beegfs",
    "davfs",
    "fuse.sshfs",
    "fuse.rclone",
    "fuse.blobfuse",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.juicefs",
    "virtiofs",
}


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")  # /proc/mounts escapes spaces as \040


def fs_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (Linux ``/proc/mounts``), if known."""
    try:
        text = mounts if mounts is not None else Path("/proc/mounts").read_text()
    except OSError:
        return None
    target, best = str(path.resolve()), None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2])
    return best[1] if best else None


def choose_mode(folder: Path, mode: str) -> str:
    """``events`` or ``poll``; ``auto`` polls on network file systems."""
    if mode != "auto":
        return mode
    return "poll" if fs_type(folder) in NETWORK_FS else "events"


@contextmanager
def watch(
    folder: Path,
    wake: Callable[[], None],
    written: Callable[[str], None] = lambda path: None,
    *,
    mode: str = "auto",
) -> Iterator[None]:
    """Call ``wake`` on any change under ``folder``, and ``written(path)`` when a file is
    complete. In ``poll`` mode, or if events are unavailable (inotify limits), the loop's
    periodic rescan does all the work."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = choose_mode(folder, mode)
    log.info(
        "watching %s with %s (%s file system)",
        folder,
        "rescans only" if chosen == "poll" else "file events and rescans",
        fs_type(folder) or "unknown",
    )
    if chosen == "poll":
        yield
        return
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
