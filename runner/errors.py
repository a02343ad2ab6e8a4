"""Show a failure on its location in the UI, without a code server.

When a file cannot be served (bad metadata, an environment that does not build, a server that
hangs or crashes), the workspace still lists its location, pointing at a tiny gRPC server in
the runner's own process that answers like a code server whose code failed to load: the
webserver shows the message as the location's load error, exactly where users look. One
server per failed location (a request does not say which location it is for), each on a port
the OS picks, with one worker thread.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from dagster._grpc.__generated__ import dagster_api_pb2
from dagster._grpc.__generated__.dagster_api_pb2_grpc import (
    DagsterApiServicer,
    add_DagsterApiServicer_to_server,
)
from dagster._serdes import serialize_value
from dagster._utils.error import SerializableErrorInfo


def error_info(message: str) -> SerializableErrorInfo:
    """A load error carrying the runner's own explanation (no Python stack to show)."""
    return SerializableErrorInfo(message=message.rstrip() + "\n", stack=[], cls_name=None)


def summarize(info: SerializableErrorInfo) -> str:
    """One line for the log: the last line of the innermost cause (e.g. ``SyntaxError: ...``)."""
    while info.cause is not None:
        info = info.cause
    lines = [line.strip() for line in info.message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else (info.cls_name or "unknown error")


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
    Reload calls ``on_reload`` (from a gRPC thread)."""

    def __init__(
        self, location: str, error: SerializableErrorInfo, *, host: str,
        on_reload: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.location = location
        self.host = host
        self.pid = os.getpid()  # served in the runner's own process
        self.server_id = f"{location}-error-{uuid.uuid4().hex[:12]}"
        self._server = grpc.server(ThreadPoolExecutor(max_workers=1, thread_name_prefix="error"))
        add_DagsterApiServicer_to_server(
            _Servicer(serialize_value(error), self.server_id, on_reload), self._server
        )
        self.port = self._server.add_insecure_port(f"{host}:0")
        if not self.port:
            raise OSError(f"cannot bind an error server on {host}")
        self._server.start()

    def exited(self) -> int | None:
        return None

    def stop(self, *, grace: float = 0) -> None:
        self._server.stop(grace=0).wait(timeout=5)
