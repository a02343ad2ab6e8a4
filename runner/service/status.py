"""What the runner is doing, per file: kept in a file beside workspace.yaml, read by
``python -m runner status``.

A file (not a socket) so that it works wherever the share is mounted: another container, an
operator's shell. The runner rewrites it when anything changes and at least every
``HEARTBEAT_EVERY`` seconds; a heartbeat older than ``STALE_AFTER``, or a pid that is gone,
means no runner is running.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.base.files import write_if_changed
from runner.base.process import pid_alive
from runner.envs.env import Resolution
from runner.lifecycle.model import Generation, Location, ignored_warning
from runner.share.script import location_name

STATUS_NAME = ".runner-status.json"
HEARTBEAT_EVERY = 5.0
STALE_AFTER = 20.0
STATES = (
    "waiting-for-stable",
    "building-env",
    "starting",
    "serving",
    "failed",
    "retrying",
    "retiring",
    "ignored",
)


@dataclass(frozen=True)
class FileStatus:
    """One file the runner knows (or one server still finishing the runs of an old version)."""

    file: str  # path relative to code_location/
    location: str
    state: str  # one of STATES
    env: str | None = None  # environment key (short)
    env_path: str | None = None
    port: int | None = None  # of the server the workspace points at
    socket: str | None = None  # ...or its Unix socket
    pid: int | None = None
    container: str | None = None  # the container it runs in (RUNNER_SERVERS=docker)
    user: int | None = None  # the uid its server runs as (None: the runner's own)
    start: str | None = None  # how its server started: warm, cold, or "cold: why"
    serving: bool = False  # a version that loaded answers (perhaps the last good one)
    progress: str | None = None  # what a build in progress is doing
    warning: str | None = None  # what the UI shows with the location (dropped definitions)
    settings: tuple[str, ...] = ()  # settings files that apply, and...
    variables: tuple[str, ...] = ()  # ...the names (never the values) they set
    ignored_by: str | None = None  # the ignore file and line that leave this file out
    #: How the environment it serves with was resolved: own (its lockfile), kept, fresh.
    pins: str | None = None
    versions: dict[str, str] | None = None  # of dagster and the file's direct dependencies
    #: What its runs are tagged with (see :mod:`provenance`): the file's digest, and the
    #: digest of the lock its environment was installed from.
    sha256: str | None = None
    lock_sha256: str | None = None
    error: str | None = None  # why it failed, in full, while it is failed
    last_error: str | None = None  # the most recent error, kept after recovery
    last_error_at: float | None = None
    last_loaded: float | None = None  # when a version last loaded without error
    since: float = 0.0  # when it entered ``state``


def describe(
    loc: Location,
    *,
    file: str,
    waiting_to_start: str | None,
    build_progress: str | None,
    env_path: Callable[[str], Path],
    resolution: Callable[[str], Resolution | None] = lambda key: None,
    wall: Callable[[float], float] = lambda t: t,
) -> FileStatus:
    """One location's row; its state follows from the generations the runner holds for it."""
    cur, nxt = loc.current, loc.next
    alive = cur is not None and cur.alive()
    serving = alive and cur is not None and cur.load_error is None
    error = loc.error or (cur.load_error if alive and cur is not None else None)
    progress = None
    if nxt is not None:
        if waiting_to_start:  # why its queued start waits
            state, progress = "starting", waiting_to_start
        elif nxt.server is None:
            state, progress = "building-env", build_progress
        else:
            state = "starting" if not nxt.ready else "waiting-for-stable"
    elif error is not None:
        state = "retrying" if loc.retry_at is not None else "failed"
    else:
        state = "serving" if serving else "starting"
    gen = nxt or cur
    server = (cur.server if alive and cur is not None else None) or (nxt and nxt.server)
    shown = cur if alive else None
    resolved = resolution((shown or gen).env.key) if (shown or gen) else None
    return FileStatus(
        file=file,
        location=loc.name,
        state=state,
        env=gen.env.short if gen else None,
        env_path=str(env_path(gen.env.key)) if gen else None,
        port=server.port or None if server else None,
        pid=server.pid if server else None,
        container=getattr(server, "container", None),
        socket=server.socket if server else None,
        user=server.user.uid if server and server.user else None,
        start=server.start if server else None,
        serving=serving,
        progress=progress,
        warning=ignored_warning(shown.ignored) if shown and shown.ignored else None,
        settings=gen.spec.settings.files if gen else (),
        variables=gen.spec.settings.names if gen else (),
        pins=resolved.pins if resolved else None,
        versions=resolved.versions if resolved else None,
        sha256=(shown or gen).spec.sha256 if (shown or gen) else None,
        lock_sha256=resolved.lock_sha256 if resolved else None,
        error=error.text if error else None,
        last_error=loc.last_error.text if loc.last_error else None,
        last_error_at=wall(loc.last_error_at) if loc.last_error_at is not None else None,
        last_loaded=wall(loc.last_loaded) if loc.last_loaded is not None else None,
    )


def rows(
    locations: Iterable[Location],
    *,
    file_of: Callable[[Location], str],
    env_path: Callable[[str], Path],
    resolution: Callable[[str], Resolution | None],
    waiting_to_start: Callable[[Location], str | None],
    build_progress: Callable[[str], str | None],
    retiring: Iterable[Generation],
    ignored: Mapping[str, str],
    pending: Iterable[str],
    wall: Callable[[float], float],
) -> list[FileStatus]:
    """Every row: the locations held, old servers finishing runs, ignored files, and files
    waiting to become stable that are not locations yet. ``wall``: the runner's clock to the
    wall clock's time, for people."""
    out = [
        describe(
            loc,
            file=file_of(loc),
            env_path=env_path,
            resolution=resolution,
            wall=wall,
            waiting_to_start=waiting_to_start(loc),
            build_progress=build_progress(loc.next.env.key) if loc.next else None,
        )
        for loc in locations
    ]
    names = {row.location for row in out}
    out += [retiring_row(gen, env_path=env_path) for gen in retiring]
    out += [ignored_row(relpath, why) for relpath, why in ignored.items()]
    out += [
        FileStatus(file=relpath, location=name, state="waiting-for-stable")
        for relpath in pending
        if (name := location_name(relpath)) not in names
    ]
    return out


def ignored_row(relpath: str, why: str) -> FileStatus:
    """The row of a file an ignore file leaves out."""
    return FileStatus(file=relpath, location="-", state="ignored", ignored_by=why)


def retiring_row(gen: Generation, *, env_path: Callable[[str], Path]) -> FileStatus:
    """The row of an old generation's server, finishing its runs."""
    return FileStatus(
        file=gen.spec.relpath,
        location=gen.spec.name,
        state="retiring",
        env=gen.env.short,
        env_path=str(env_path(gen.env.key)),
        port=gen.server.port or None if gen.server else None,
        pid=gen.server.pid if gen.server else None,
        container=getattr(gen.server, "container", None),
        socket=gen.server.socket if gen.server else None,
        user=gen.server.user.uid if gen.server and gen.server.user else None,
    )


class Board:
    """Keeps ``since`` per row and writes the snapshot when it changes (and as a heartbeat)."""

    def __init__(
        self,
        path: Path,
        *,
        share: Path,
        clock: Callable[[], float] = time.time,
        isolation: str = "",
    ) -> None:
        self.path = path
        self.clock = clock
        self._since: dict[tuple[str, str, int | None], tuple[str, float]] = {}
        self._head = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "share": str(share),
            "started": _iso(clock()),
            "isolation": isolation,  # who locations run as, and what that means
        }
        self._written: tuple[Any, float] | None = None
        self.rows: list[FileStatus] = []

    def update(self, rows: Iterable[FileStatus], *, stopped: bool = False) -> None:
        now = self.clock()
        since, out = {}, []
        for row in rows:
            key = (row.file, row.location, row.pid if row.state == "retiring" else None)
            state, at = self._since.get(key, (row.state, now))
            if state != row.state:
                at = now
            since[key] = (row.state, at)
            out.append(replace(row, since=at))
        self._since, self.rows = since, sorted(out, key=lambda r: (r.location, r.state))
        body = [_jsonable(r) for r in self.rows]
        if (
            stopped
            or self._written is None
            or self._written[0] != body
            or now - self._written[1] >= HEARTBEAT_EVERY
        ):
            head = {**self._head, "heartbeat": now, "stopped": _iso(now) if stopped else None}
            write_if_changed(self.path, json.dumps({**head, "files": body}, indent=1) + "\n")
            self._written = (body, now)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _jsonable(row: FileStatus) -> dict[str, Any]:
    data = asdict(row)
    for key in ("since", "last_loaded", "last_error_at"):
        data[key] = _iso(data[key])
    return data


# --- reading it -------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    data: dict[str, Any]
    running: bool
    why_not: str | None  # why the runner is not running, when it is not


def read(path: Path, *, now: float | None = None) -> Snapshot | None:
    """The last snapshot a runner wrote, and whether that runner is still running."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    now = time.time() if now is None else now
    age = now - float(data.get("heartbeat", 0))
    if data.get("stopped"):
        why = f"it stopped at {data['stopped']}"
    elif data.get("host") == socket.gethostname() and not pid_alive(int(data.get("pid", 0))):
        why = f"its process (pid {data.get('pid')}) is gone"
    elif age > STALE_AFTER:
        why = f"it has not written since {_iso(float(data.get('heartbeat', 0)))} ({age:.0f}s ago)"
    else:
        why = None
    return Snapshot(data, why is None, why)


def render(snapshot: Snapshot, *, now: float | None = None) -> str:
    """A table a person reads at a glance, then every error in full."""
    data, now = snapshot.data, time.time() if now is None else now
    who = f"runner pid {data.get('pid')} on {data.get('host')}, share {data.get('share')}"
    lines = [
        f"running: {who}, since {data.get('started')}"
        if snapshot.running
        else f"NOT RUNNING: the last runner ({who}) is not running: {snapshot.why_not}. "
        "Its last known state:"
    ]
    files = data.get("files", [])
    if not files:
        lines.append("no files in code_location/ yet")
        return "\n".join(lines) + "\n"
    if data.get("isolation"):
        lines.append(f"isolation: {data['isolation']}")
    contained = any(row.get("container") for row in files)
    where = "CONTAINER" if contained else "PID"
    header = ("LOCATION", "STATE", "SINCE", "PORT", where, "USER", "START", "ENV", "FILE")
    table = [header]
    for row in files:
        state = row["state"]
        if state == "failed" and row.get("serving"):
            state += " (last good serving)"
        port = "socket" if row.get("socket") else str(row.get("port") or "-")
        user = str(row["user"]) if row.get("user") is not None else "-"
        table.append(
            (
                row["location"],
                state,
                _ago(row.get("since"), now),
                port,
                row.get("container") or str(row.get("pid") or "-"),
                user,
                (row.get("start") or "-").split(":")[0],
                (row.get("env") or "-")[:12],
                row["file"],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    for row in files:
        if row.get("progress"):
            lines.append(f"\n{row['location']}: {row['progress']}")
        if ":" in (row.get("start") or ""):
            lines.append(f"\n{row['location']} started {row['start']}")
        if row.get("ignored_by"):
            lines.append(f"\n{row['file']}: ignored ({row['ignored_by']})")
        if row.get("warning"):
            lines.append(f"\n{row['location']} warning: {row['warning']}")
        if row.get("pins"):
            resolved = Resolution(row["pins"], row.get("versions") or {})
            lines.append(f"\n{row['location']} versions: {resolved.describe()}")
        if row.get("sha256"):
            lock = f", lock sha256 {row['lock_sha256']}" if row.get("lock_sha256") else ""
            lines.append(
                f"\n{row['location']} version: file sha256 {row['sha256']}, "
                f"environment {row.get('env') or '-'}{lock}"
            )
        if row.get("settings"):
            lines.append(
                f"\n{row['location']} settings: {', '.join(row['settings'])} "
                f"({', '.join(row.get('variables') or []) or 'no variables'})"
            )
        if row.get("error"):
            verb = "is retrying" if row["state"] == "retrying" else "failed"
            lines.append(f"\n{row['location']} {verb}:\n" + _indent(row["error"].rstrip()))
    return "\n".join(lines) + "\n"


def _ago(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    seconds = max(0, int(now - datetime.fromisoformat(iso).timestamp()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
