"""Dagster's private symbols the runner leans on, in one place, each with what it is for.

Dagster exports no public API for these: serving a gRPC code server's answers, following a
workspace file in a running webserver or daemon, and reading a server's load error. Every
other module takes them from here, so an upgrade of Dagster is checked in one file (and by
``tests/test_internals.py``, which imports each one and checks the shapes used). Dagster is
pinned to 1.13.x in ``pyproject.toml`` for the same reason.

The imports are lazy (a name is imported when first used): the daemon's controller and the
SQLite storage cost more than a second each to import, and most roles never need them.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> (module, why the runner needs it)
WHERE: dict[str, tuple[str, str]] = {
    # A load error, as code servers serialize it; the runner shows its own the same way.
    "SerializableErrorInfo": ("dagster._utils.error", "load errors, read and served"),
    # The gRPC API of a code server: answered by the runner's error servers, called on
    # every server it starts (ready check, current runs, shutdown).
    "dagster_api_pb2": ("dagster._grpc.__generated__", "gRPC messages"),
    "DagsterApiServicer": (
        "dagster._grpc.__generated__.dagster_api_pb2_grpc",
        "error servers answer like a code server",
    ),
    "add_DagsterApiServicer_to_server": (
        "dagster._grpc.__generated__.dagster_api_pb2_grpc",
        "error servers answer like a code server",
    ),
    "DagsterGrpcClient": ("dagster._grpc.client", "ready check, current runs, shutdown"),
    "GetCurrentRunsResult": ("dagster._grpc.types", "a server's in-flight runs"),
    # workspace.yaml as Dagster reads it: a user's static entries are checked the same way.
    "WorkspaceFileTarget": ("dagster._core.workspace.load_target", "read workspace files"),
    # The webserver's and the daemon's workspace, reloaded entry by entry (reload.py).
    "WorkspaceProcessContext": ("dagster._core.workspace.context", "the workspace in a role"),
    "CodeLocationEntry": ("dagster._core.workspace.workspace", "one loaded entry"),
    "CurrentWorkspace": ("dagster._core.workspace.workspace", "the loaded entries"),
    "CodeLocationOrigin": ("dagster._core.remote_origin", "where an entry points"),
    "GrpcServerCodeLocationOrigin": ("dagster._core.remote_origin", "a server's origin"),
    # The daemon, run as Dagster's CLI runs it, following workspace.yaml (daemon.py).
    "RELOAD_WORKSPACE_INTERVAL": ("dagster._daemon.controller", "the daemon's reload pace"),
    "THREAD_CHECK_INTERVAL": ("dagster._daemon.controller", "the daemon's check pace"),
    "daemon_controller_from_instance": ("dagster._daemon.controller", "run the daemons"),
    "capture_interrupts": ("dagster._utils.interrupts", "stop the daemon on a signal"),
    "raise_interrupts_as": ("dagster._utils.interrupts", "stop the daemon on a signal"),
    # SQLite files made writable for the locations' users (instance.py).
    "SqliteEventLogStorage": (
        "dagster._core.storage.event_log.sqlite.sqlite_event_log",
        "share new SQLite shards with the locations' users",
    ),
}

__all__ = sorted(WHERE)


def __getattr__(name: str) -> Any:
    try:
        module, _ = WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    found = importlib.import_module(module)
    value = (
        getattr(found, name)
        if hasattr(found, name)
        else importlib.import_module(f"{module}.{name}")
    )
    globals()[name] = value  # imported once
    return value
