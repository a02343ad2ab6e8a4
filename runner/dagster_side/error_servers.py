"""Show a failure on its location in the UI, without a code server.

When a file cannot be served (bad metadata, an environment that does not build, a server that
hangs or crashes), the workspace still lists its location, pointing at a tiny gRPC server in
the runner's own process that answers like a code server whose code failed to load: the
webserver shows the message as the location's load error, exactly where users look. One
server per failed location (a request does not say which location it is for), each on a port
the OS picks, with one worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from dagster import deserialize_value, serialize_value

from runner.dagster_side.internals import (
    DagsterApiServicer,
    SerializableErrorInfo,
    add_DagsterApiServicer_to_server,
    dagster_api_pb2,
)
from runner.isolation import tenancy
from runner.lifecycle.model import Problem

log = logging.getLogger(__name__)


def problem(serialized: str) -> Problem | None:
    """What a code server's ListRepositories reply says: the file's load error, as the model
    holds it, or ``None`` when the file loaded."""
    info = deserialize_value(serialized)
    if not isinstance(info, SerializableErrorInfo):
        return None
    return Problem(info.message, _summary(info), info.to_string(), serialized=serialized)


def _summary(info: SerializableErrorInfo) -> str:
    """One line for the log: the last line of the innermost cause (e.g. ``SyntaxError: ...``)."""
    while info.cause is not None:
        info = info.cause
    lines = [line.strip() for line in info.message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else (info.cls_name or "unknown error")


def serialized(problem: Problem) -> str:
    """``problem`` as a code server whose code failed to load would answer ListRepositories."""
    if problem.serialized is not None:
        return problem.serialized
    return serialize_value(SerializableErrorInfo(message=problem.message, stack=[], cls_name=None))


class _Servicer(DagsterApiServicer):
    def __init__(self, serialized_error: str, server_id: str, on_reload: Callable[[], None]):
        self._error = serialized_error
        self._server_id = server_id
        self._on_reload = on_reload

    def Ping(self, request, context):
        return dagster_api_pb2.PingReply(echo=request.echo)

    def Heartbeat(self, request, context):
        return dagster_api_pb2.PingReply(echo=request.echo)

    def GetServerId(self, request, context):
        return dagster_api_pb2.GetServerIdReply(server_id=self._server_id)

    def ReloadCode(self, request, context):
        # The UI's Reload on this location: the runner tries the file again.
        self._on_reload()
        return dagster_api_pb2.ReloadCodeReply()

    def ListRepositories(self, request, context):
        return dagster_api_pb2.ListRepositoriesReply(
            serialized_list_repositories_response_or_error=self._error
        )


class ErrorServer:
    """Answers ListRepositories with ``error`` for one location, until stopped; the UI's
    Reload is remembered until :meth:`reload_requested` and wakes ``on_reload``."""

    def __init__(
        self,
        location: str,
        error: Problem,
        *,
        host: str,
        on_reload: Callable[[], None] = lambda: None,
        sockets: Sockets | None = None,
    ) -> None:
        self.location = location
        self.error = error
        self.host = host
        self.pid = os.getpid()  # served in the runner's own process
        self.start = "in-process"
        self.user = None
        short = uuid.uuid4().hex[:12]
        self.server_id = f"{location}-error-{short}"
        self._reload = threading.Event()

        def reload() -> None:
            self._reload.set()
            on_reload()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=1, thread_name_prefix="error"))
        add_DagsterApiServicer_to_server(
            _Servicer(serialized(error), self.server_id, reload), self._server
        )
        self.socket: str | None = None
        self._folder: Path | None = None
        if sockets is not None:
            self._folder = sockets.folder(short)
            self.socket = str(self._folder / "grpc.sock")
            if not self._server.add_insecure_port(f"unix:{self.socket}"):
                raise OSError(f"cannot bind an error server on {self.socket}")
            self.port = 0
        else:
            self.port = self._server.add_insecure_port(f"{host}:0")
            if not self.port:
                raise OSError(f"cannot bind an error server on {host}")
        self._server.start()

    @property
    def where(self) -> str:
        return f"socket {self.socket}" if self.socket else f"port {self.port}"

    def reload_requested(self) -> bool:
        """The UI's Reload asked for the file again (once per request)."""
        asked = self._reload.is_set()
        self._reload.clear()
        return asked

    def exited(self) -> int | None:
        return None  # it lives as long as the runner

    def exit_reason(self) -> str:
        return "is served by the runner"

    def stop(self, *, grace: float = 0) -> None:
        self._server.stop(grace=0).wait(timeout=5)
        if self._folder is not None:
            tenancy.remove(self._folder)


@dataclass(frozen=True)
class Sockets:
    """Where error servers listen: a folder each below ``root``, the runner's, entered by
    the service's group only."""

    root: Path
    service_gid: int

    def folder(self, name: str) -> Path:
        tenancy.runner_folder(self.root)
        return tenancy.owned_folder(
            self.root / name, uid=os.getuid(), gid=self.service_gid, mode=0o2750
        )


class ErrorServers:
    """An error server for each location that shows an error, kept in step with the errors.

    ``sync`` is level-triggered: a location whose error changed gets a new server (the old
    one is handed to ``retire``, to stop once no published workspace points at it), one that
    shows none any more loses its server.
    """

    def __init__(
        self,
        *,
        host: str,
        retire: Callable[[ErrorServer], None],
        on_reload: Callable[[], None],
        sockets: Sockets | None = None,
    ) -> None:
        self.host = host
        self._sockets = sockets
        self._retire = retire
        self._on_reload = on_reload
        self._shown: dict[str, ErrorServer] = {}
        self._unshown: dict[str, Problem] = {}  # could not bind: said once

    def get(self, name: str) -> ErrorServer | None:
        return self._shown.get(name)

    def all(self) -> list[ErrorServer]:
        return list(self._shown.values())

    def sync(self, errors: dict[str, Problem | None]) -> None:
        """Show exactly ``errors`` (location name -> error, or None)."""
        self._unshown = {n: e for n, e in self._unshown.items() if errors.get(n) is e}
        for name, server in list(self._shown.items()):
            if errors.get(name) is not server.error:
                self._retire(self._shown.pop(name))
        for name, error in errors.items():
            if error is None or name in self._shown or self._unshown.get(name) is error:
                continue
            try:
                self._shown[name] = ErrorServer(
                    name, error, host=self.host, on_reload=self._on_reload, sockets=self._sockets
                )
                self._unshown.pop(name, None)
            except OSError as exc:
                self._unshown[name] = error
                log.error("%s: cannot show its error in the UI: %s", name, exc)
