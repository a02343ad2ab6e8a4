"""Take in a new workspace.yaml by loading only the entries that changed.

Dagster's webserver and daemon reload a workspace by loading *every* location again, one
after another: with 50 locations that is about 2 s in each of them for every file a user
saves, and every ``dagster api grpc`` server logs a warning that it cannot reload. The
runner's entries name the server they expect (``additional_metadata.server_id``): an entry
whose origin is unchanged points at the same process, which never changes its code, so its
loaded copy (or its load error) stays as it is. Everything else (entries that are new,
changed, unreachable, or the user's own static entries) is loaded as Dagster would.

This leans on Dagster's internals (``WorkspaceProcessContext``), pinned by the project's
Dagster range and kept to this module; ``tests/test_reload.py`` fails loudly if they move.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.dagster_side.follow import WebserverFollower, file_digest
from runner.dagster_side.internals import (
    CodeLocationEntry,
    CodeLocationOrigin,
    CurrentWorkspace,
    GrpcServerCodeLocationOrigin,
    SerializableErrorInfo,
    WorkspaceProcessContext,
)
from runner.dagster_side.workspace import SERVER_ID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    loaded: tuple[str, ...]  # locations loaded (again)
    kept: int  # locations left as they were
    removed: int


def keeps(entry: CodeLocationEntry | None, origin: CodeLocationOrigin) -> bool:
    """An entry that can stay as it is: same origin, naming its server, and either loaded
    or showing that server's own error (a file that failed to load fails the same way again:
    reloading it at every publish only repeats the traceback in every log). An entry whose
    server could not be reached is loaded again."""
    if entry is None or not _names_server(origin) or entry.origin != origin:
        return False
    if entry.load_error is not None:
        return not _unreachable(entry.load_error)
    return entry.code_location is not None


def _unreachable(error: SerializableErrorInfo) -> bool:
    causes = [error]
    while causes[-1].cause is not None or causes[-1].context is not None:
        causes.append(causes[-1].cause or causes[-1].context)  # type: ignore[arg-type]
    return any(info.cls_name == "DagsterUserCodeUnreachableError" for info in causes)


def refresh_changed(context: WorkspaceProcessContext, *, reload: bool) -> Outcome:
    """Bring ``context`` to the workspace file's current entries, loading only what changed.

    ``reload``: what the UI's "Reload all" asks, as Dagster's ``reload_workspace``: reload
    the code of reloaded entries that do not name a server (a ``dagster code-server start``),
    and retry every runner location that failed to load: its server is asked to reload, as
    the location's own Reload does, and the runner starts a fresh one (the code may import
    fine now: a database that was down, a package published since).
    """
    with _refreshing(context):  # the follower and a user's "Reload all" take turns
        return _refresh(context, reload=reload)


def _refreshing(context: WorkspaceProcessContext) -> threading.Lock:
    lock = context.__dict__.get("_runner_refresh")
    if lock is None:
        lock = context.__dict__.setdefault("_runner_refresh", threading.Lock())
    return lock


def _refresh(context: WorkspaceProcessContext, *, reload: bool) -> Outcome:
    origins = {origin.location_name: origin for origin in context._origins}
    old: Mapping[str, CodeLocationEntry] = context._current_workspace.code_location_entries
    kept = {
        name: old[name]
        for name, origin in origins.items()
        if keeps(old.get(name), origin) and not (reload and _failed(old[name]))
    }
    fresh = {
        name: context._load_location(origin, reload=reload and _retries(origin, old.get(name)))
        for name, origin in origins.items()
        if name not in kept
    }
    with context._lock:
        events, threads = context._watch_thread_shutdown_events, context._watch_threads
        context._watch_thread_shutdown_events = {n: e for n, e in events.items() if n in kept}
        context._watch_threads = {n: t for n, t in threads.items() if n in kept}
        context._current_workspace = CurrentWorkspace(
            code_location_entries={name: kept.get(name) or fresh[name] for name in origins}
        )
        for entry in fresh.values():
            if isinstance(entry.origin, GrpcServerCodeLocationOrigin):
                context._start_watch_thread(entry.origin)
    # As Dagster does: stop the replaced entries' watch threads, then close their clients.
    for name, event in events.items():
        if name not in kept:
            event.set()
    for name, thread in threads.items():
        if name not in kept:
            thread.join()
    for name, entry in old.items():
        if name not in kept and entry.code_location is not None:
            entry.code_location.cleanup()
    return Outcome(tuple(fresh), len(kept), len(set(old) - set(origins)))


def _failed(entry: CodeLocationEntry) -> bool:
    return entry.load_error is not None


def _retries(origin: CodeLocationOrigin, entry: CodeLocationEntry | None) -> bool:
    """Whether "Reload all" asks this entry's server to reload: a user's own entry, or a
    runner location whose server could not load its file (a loaded one never changes)."""
    return not _names_server(origin) or (
        entry is not None and entry.origin == origin and _failed(entry)
    )


def _names_server(origin: CodeLocationOrigin) -> bool:
    return isinstance(origin, GrpcServerCodeLocationOrigin) and SERVER_ID in (
        origin.additional_metadata or {}
    )


def patch(*, follow: bool = False) -> None:
    """Make this process's workspaces (webserver or daemon) take in changes as above, and
    not watch the runner's servers; ``follow`` (the webserver): each workspace read from a
    file follows that file (see :mod:`follow`).

    Dagster pings every ``grpc_server`` location's server once a second from a watch thread,
    to notice a server that restarted with a new id. The runner's servers never do: a new
    version is a new server in a new workspace entry, which the runner publishes. At 50
    locations those pings cost about 40% of a core across the webserver, the daemon and the
    servers, for nothing (bench/README.md).
    """
    start_watch_thread = WorkspaceProcessContext._start_watch_thread

    def reload_workspace(self: WorkspaceProcessContext) -> None:
        outcome = refresh_changed(self, reload=True)
        log.info(
            "workspace reloaded: %d loaded, %d kept, %d removed",
            len(outcome.loaded),
            outcome.kept,
            outcome.removed,
        )

    def _start_watch_thread(self: WorkspaceProcessContext, origin: CodeLocationOrigin) -> None:
        if not _names_server(origin):
            start_watch_thread(self, origin)

    WorkspaceProcessContext.reload_workspace = reload_workspace  # type: ignore[method-assign]
    WorkspaceProcessContext._start_watch_thread = _start_watch_thread  # type: ignore[method-assign]
    if follow:
        _follow_files()


def _follow_files() -> None:
    init, shut = WorkspaceProcessContext.__init__, WorkspaceProcessContext.__exit__

    def __init__(self: WorkspaceProcessContext, *args: Any, **kwargs: Any) -> None:
        target = kwargs.get("workspace_load_target", args[1] if len(args) > 1 else None)
        paths = list(getattr(target, "paths", None) or [])
        loaded = file_digest(Path(paths[0])) if len(paths) == 1 else None  # before it loads
        init(self, *args, **kwargs)
        if len(paths) == 1:
            follower = WebserverFollower(Path(paths[0]), loaded, lambda: _refreshed(self))
            self.__dict__["_runner_follower"] = follower
            follower.start()

    def __exit__(self: WorkspaceProcessContext, *args: Any) -> Any:
        follower = self.__dict__.pop("_runner_follower", None)
        if follower is not None:
            follower.stop()
        return shut(self, *args)

    WorkspaceProcessContext.__init__ = __init__  # type: ignore[method-assign]
    WorkspaceProcessContext.__exit__ = __exit__  # type: ignore[method-assign]


def _refreshed(context: WorkspaceProcessContext) -> None:
    outcome = refresh_changed(context, reload=False)
    entries = context._current_workspace.code_location_entries
    for name in outcome.loaded:  # what the runner did not report already
        error = entries[name].load_error
        if error is not None and (not _names_server(entries[name].origin) or _unreachable(error)):
            log.warning("could not load %s: %s", name, error.message.strip().splitlines()[0])
    log.info(
        "workspace followed: %d loaded, %d kept, %d removed",
        len(outcome.loaded),
        outcome.kept,
        outcome.removed,
    )
