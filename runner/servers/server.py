"""One ``dagster api grpc`` process: start it, know when it is ready, stop it.

The server runs with the location's environment's python directly (signals sent to ``uv run``
are not reliably forwarded), with ``--lazy-load-user-code`` so that a file that fails to
import still gets a server that reports the error to the UI, and with a server id we choose,
so that "ready" means *our* process answered on that port (gRPC sets SO_REUSEPORT, so a
stale server on the same port would answer too).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from dagster import deserialize_value

from runner.base import process
from runner.dagster_side.error_servers import problem
from runner.dagster_side.internals import (
    DagsterGrpcClient,
    GetCurrentRunsResult,
    dagster_api_pb2,
)
from runner.dagster_side.workspace import local_address
from runner.isolation import tenancy
from runner.isolation.identity import Identity
from runner.lifecycle.model import Problem
from runner.servers.cgroup import Cgroup, Cgroups

log = logging.getLogger(__name__)


class StartError(Exception):
    """The server did not come up; the message says why."""


def free_port(host: str) -> int:
    """A port nothing listens on right now (the kernel's choice, not a counter)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class CodeServer:
    """A running code server for one generation of one location."""

    location: str
    python: Path
    file: Path
    host: str
    port: int  # 0 when it listens on ``socket``
    server_id: str
    proc: process.Proc
    sidecar: Sidecar
    socket: str | None = None  # the Unix socket it listens on (reachable by the service only)
    user: Identity | None = None  # whom it runs as (None: the runner's own user)
    #: How it started: "warm" (forked by its environment's template) or "cold: why".
    start: str = "cold"
    #: Where its processes are, all of them (None: found by their variable and user).
    cgroup: Cgroup | None = None
    #: Where the webserver and the daemon reach it, when its kind decides (a container's
    #: name); None: the service's advertised host.
    reach: str | None = None
    started: float = field(default_factory=time.monotonic)
    #: The OOM killer's count when it started: a SIGKILL is its doing only if it went up.
    oom_kills: int | None = field(default_factory=process.oom_kills)

    def exit_reason(self) -> str:
        """How the process ended ("killed by SIGKILL by the kernel's out-of-memory killer")."""
        before, now = self.oom_kills, process.oom_kills()
        oom = before is not None and now is not None and now > before
        code = self.proc.poll()
        if code is not None and getattr(self.proc, "note", ""):
            return f"ended ({self.proc.note})"  # type: ignore[attr-defined]
        return process.describe_exit(code, oom=oom)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def container(self) -> str | None:
        """The container it runs in, when its kind runs servers in containers."""
        return getattr(self.proc, "container", None)

    @property
    def where(self) -> str:
        return f"socket {self.socket}" if self.socket else f"port {self.port}"

    def client(self) -> DagsterGrpcClient:
        if self.socket:
            return DagsterGrpcClient(socket=self.socket)
        return DagsterGrpcClient(port=self.port, host=local_address(self.host))

    def exited(self) -> int | None:
        return self.proc.poll()

    def reload_requested(self) -> bool:
        """The UI's Reload on its location (once per request)."""
        return self.sidecar.reload_requested()

    def wait_ready(self, *, timeout: float) -> Problem | None:
        """Block until the server answers with our id and has loaded the file.

        Returns the file's load error (Dagster's own message) or ``None`` when it loaded.
        Raises :class:`StartError` if the process exits or does not answer in time.
        """
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise StartError(f"code server {self.exit_reason()} before answering")
            try:
                if client.get_server_id(timeout=2) == self.server_id:
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise StartError(
                    f"the code server did not answer within {timeout:.0f}s: does importing the "
                    "file hang, or take longer than the start timeout (RUNNER_START_TIMEOUT)?"
                )
            time.sleep(0.05)
        # Lazy loading imports the file on the first ListRepositories: do it now, so the
        # webserver and the daemon find it loaded, and so we know whether it loaded.
        remaining = max(1.0, deadline - time.monotonic())
        try:
            # list_repositories() has no timeout argument; its _query does.
            reply = client._query(
                "ListRepositories", dagster_api_pb2.ListRepositoriesRequest, timeout=int(remaining)
            )
        except Exception as exc:
            raise StartError(
                f"loading the file did not finish within {timeout:.0f}s: does importing it hang, "
                "or take longer than the start timeout (RUNNER_START_TIMEOUT)?"
                if "DEADLINE_EXCEEDED" in str(exc) or "timed out" in str(exc).lower()
                else f"code server failed while loading the file: {exc}"
            ) from None
        return problem(reply.serialized_list_repositories_response_or_error)

    def stop(self, *, grace: float, terminate: Callable[[str], object] | None = None) -> None:
        """ShutdownServer (in-flight runs finish), then the stop ladder.

        With ``terminate`` (the run launcher's), runs in flight are first terminated the way
        the UI's Terminate button does it, so that they end CANCELED in the run history
        rather than being killed mid-step.
        """
        client = self.client()
        if terminate is not None and self.proc.poll() is None:
            self._terminate_runs(client, terminate)
        process.stop(
            self.proc,
            name=f"code server {self.location}",
            graceful=lambda: client.shutdown_server(timeout=5),
            grace=grace,
        )
        # Children that left its process group (setsid, a daemonizing tool) go with it: all
        # of them from its cgroup; else those that kept its variable (forked ones may not).
        if self.cgroup is not None:
            escaped = self.cgroup.kill()
            if escaped:
                log.info(
                    "%s: stopped %d process(es) its server left behind: %s",
                    self.location,
                    len(escaped),
                    escaped,
                )
        escaped = process.marked(self.server_id)
        if escaped:
            log.info(
                "%s: stopping %d process(es) its server left behind: %s",
                self.location,
                len(escaped),
                escaped,
            )
            process.stop_pids(escaped, name=f"code server {self.location}")
        self.sidecar.remove()

    def _terminate_runs(
        self, client: DagsterGrpcClient, terminate: Callable[[str], object]
    ) -> None:
        try:
            current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult)
            for run_id in current.current_runs:
                log.info("%s: terminating run %s (the service is stopping)", self.location, run_id)
                terminate(run_id)
        except Exception as exc:  # the stop ladder still follows
            log.warning("%s: could not terminate its runs: %s", self.location, exc)


#: Starts ``dagster api grpc`` with the runner's hooks (Reload, dropped definitions).
BOOT = Path(__file__).parent.parent / "boot" / "codeserver.py"


@dataclass(frozen=True)
class Sidecar:
    """The folder of one server in the runner's state: the files it and the runner talk
    through, its socket. Named by a short id of its own, never after the location (a name
    may be as long as a file system allows)."""

    folder: Path

    @property
    def reload_request(self) -> Path:
        return self.folder / "reload"

    @property
    def load_report(self) -> Path:
        return self.folder / "load.json"

    @property
    def socket(self) -> Path:
        return self.folder / "grpc.sock"

    @property
    def settings(self) -> Path:
        """A FIFO through which a forked server gets its environment (see :mod:`warm`)."""
        return self.folder / "settings"

    def reload_requested(self) -> bool:
        """The UI's Reload asked this server to reload its code (once per request)."""
        try:
            self.reload_request.unlink()
        except FileNotFoundError:
            return False
        return True

    def ignored(self) -> list[str]:
        """Jobs, schedules and sensors Dagster dropped from a file without Definitions."""
        try:  # the folder is the location's: never follow a link its code put there
            fd = os.open(self.load_report, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                report = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return []
        if not isinstance(report, dict) or not isinstance(report.get("ignored"), list):
            return []
        return [
            f"{item['kind']} {item['name']}"
            for item in report["ignored"]
            if isinstance(item, dict) and {"kind", "name"} <= set(item)
        ]

    def remove(self) -> None:
        tenancy.remove(self.folder)


#: The longest path a Unix socket may have (``sun_path`` holds 108 bytes with its NUL).
SOCKET_PATH_MAX = 107


def socket_fits(sidecars: Path) -> bool:
    """A server's socket below ``sidecars`` fits in ``sun_path``."""
    return len(os.fsencode(Sidecar(sidecars / ("x" * 12)).socket)) <= SOCKET_PATH_MAX


@dataclass(frozen=True)
class Address:
    """Where a server answers: a host and port, or a Unix socket (``port`` 0)."""

    host: str
    port: int = 0
    socket: str | None = None


@dataclass(frozen=True)
class Request:
    """A code server to start: its command line, environment and working directory, whom it
    runs as, its folder (see :class:`Sidecar`), and the address it is asked to listen on."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    user: Identity | None
    sidecar: Sidecar
    cgroup: Cgroup | None = None  # joined before any of its code runs
    address: Address = Address("127.0.0.1")


class Launched(NamedTuple):
    """A server's process as its kind started it: how (``cold``, ``warm``, ``cold: why``),
    and where the webserver, the daemon and the runner reach it."""

    proc: process.Proc
    how: str
    address: Address


def start(
    *,
    location: str,
    python: Path,
    file: Path,
    host: str,
    env: dict[str, str],
    workdir: Path,
    sidecars: Path,
    folder: Path | None = None,
    log_format: str = "colored",
    run_args: Sequence[str] = (),
    run_entry_point: Sequence[str] | None = None,
    launch: Launch | None = None,
    user: Identity | None = None,
    service_gid: int | None = None,
    use_socket: bool = False,
    source: bytes | None = None,
    cgroups: Cgroups | None = None,
    title: str = "",
) -> CodeServer:
    """Spawn ``dagster api grpc`` for ``file`` on a fresh port, or on a Unix socket in its
    own folder (``use_socket``); does not wait for it.

    ``launch`` starts the process from a :class:`Request` and says how it started (e.g.
    forked by a template, see :mod:`warm`); by default it is spawned cold.

    ``user``: the location's own identity. Its scratch folder and the server's folder are
    then its own (the latter of the group ``service_gid``, whose roles reach the socket),
    HOME and TMPDIR are in its scratch folder, and USER and LOGNAME name it (the id has no
    passwd entry). ``source``: its user cannot read the share: serve a copy of ``file``
    with these bytes, beside copies of its folder's modules, in the server's folder.

    It runs in ``workdir``, the location's scratch folder outside the share, so a run that
    writes a relative path writes there; ``--working-directory`` stays the file's folder, so
    its helper modules import (``folder``: another folder than the file's, for a copy of
    it). ``env`` is all it sees of an environment (see
    :mod:`location_env`). The server writes no bytecode (the code folder may be read-only,
    and the runner never writes there); the environment's own bytecode was compiled when it
    was built, and ``PYTHONPYCACHEPREFIX`` is not an option, as it would hide that bytecode.
    ``run_args`` and ``run_entry_point`` say how its runs start in containers (see
    :mod:`container_runs`). ``cgroups``: where it gets a cgroup of its own (see :mod:`cgroup`).
    ``title``: what ``ps`` shows for it, after ``dagster-code-runner:`` (its location's name).
    """
    short = uuid.uuid4().hex[:12]
    server_id = f"{location}-{short}"
    sidecar = Sidecar(sidecars / short)
    _folders(sidecar, workdir, user, service_gid)
    if source is not None:
        try:
            readers = user.gid if user else os.getgid()
            file = tenancy.copy_code(file, source, sidecar.folder / "code", readers=readers)
        except BaseException:
            sidecar.remove()
            raise
        folder = None
    port = 0 if use_socket else free_port(host)
    tcp = ["--host", host, "--port", str(port)]
    listen = ["--socket", str(sidecar.socket)] if use_socket else tcp
    argv = [
        str(python),
        *boot_args(
            file=file,
            folder=folder or file.parent,
            listen=listen,
            location=location,
            server_id=server_id,
            log_format=log_format,
        ),
        *run_args,
    ]
    own = (
        {
            "HOME": str(workdir),
            "TMPDIR": str(workdir / "tmp"),
            "USER": user.user,
            "LOGNAME": user.user,
        }
        if user
        else {}
    )
    env = {
        **env,
        **own,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RUNNER_RELOAD_REQUEST": str(sidecar.reload_request),
        "RUNNER_LOAD_REPORT": str(sidecar.load_report),
        "RUNNER_PROCESS_TITLE": f"dagster-code-runner: {title or f'server {location}'}",
        process.MARKER: server_id,
    }
    if run_entry_point:
        env["RUNNER_RUN_ENTRY_POINT"] = json.dumps(list(run_entry_point))
    try:
        cgroup = cgroups.make(short) if cgroups is not None else None
        try:
            address = Address(host, port, str(sidecar.socket) if use_socket else None)
            request = Request(argv, env, workdir, user, sidecar, cgroup, address)
            launched = (launch or spawn_cold)(request)
        except BaseException:
            if cgroup is not None:
                cgroup.kill()
            raise
    except BaseException:
        sidecar.remove()
        raise
    return CodeServer(
        location=location,
        python=python,
        file=file,
        host=launched.address.host,
        port=launched.address.port,
        server_id=server_id,
        proc=launched.proc,
        sidecar=sidecar,
        start=launched.how,
        socket=launched.address.socket,
        user=user,
        cgroup=cgroup,
        reach=launched.address.host if launched.address.host != address.host else None,
    )


def boot_args(
    *,
    file: Path,
    folder: Path,
    listen: Sequence[str],
    location: str,
    server_id: str,
    log_format: str,
) -> list[str]:
    """What a location's interpreter runs to serve ``file``: the boot script and its options
    (``listen``: ``--socket PATH``, or ``--host H --port P``)."""
    return [
        str(BOOT),
        "--python-file",
        str(file),
        "--working-directory",
        str(folder),
        *listen,
        "--location-name",
        location,
        "--lazy-load-user-code",
        "--fixed-server-id",
        server_id,
        "--log-format",
        log_format,
    ]


def _folders(
    sidecar: Sidecar, workdir: Path, user: Identity | None, service_gid: int | None
) -> None:
    """The server's own folder and its location's scratch folder, owned by its user."""
    if user is None:
        sidecar.folder.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        return
    for shared in (sidecar.folder.parent, workdir.parent):
        tenancy.runner_folder(shared)
    group = service_gid if service_gid is not None else os.getgid()
    tenancy.owned_folder(sidecar.folder, uid=user.uid, gid=group, mode=0o2770)
    try:
        if os.lstat(workdir).st_uid != user.uid:  # another identity's scratch: not for this one
            tenancy.remove(workdir)
    except FileNotFoundError:
        pass
    tenancy.owned_folder(workdir, uid=user.uid, gid=user.gid, mode=0o700)
    tenancy.owned_folder(workdir / "tmp", uid=user.uid, gid=user.gid, mode=0o700)


#: Where a server runs, one function per kind: starts its process for a request, and says
#: how it started and where it answers (see CONTRIBUTING.md, "Where a server runs").
Launch = Callable[[Request], Launched]

#: What a location's processes create is theirs and the service's group's, never others'.
LOCATION_UMASK = 0o007


def spawn_cold(request: Request) -> Launched:
    """A fresh interpreter that imports everything itself, as the location's user."""
    user = request.user
    proc = process.spawn(
        request.argv,
        env=request.env,
        cwd=request.cwd,
        user=(user.uid, user.gid) if user else None,
        umask=LOCATION_UMASK if user else -1,
        cgroup=request.cgroup.procs if request.cgroup else None,
    )
    return Launched(proc, "cold", request.address)
