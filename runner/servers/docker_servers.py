"""Code servers in containers of their own on a Docker engine (``RUNNER_SERVERS=docker``).

Each server is a container of a generic image (``RUNNER_SERVER_IMAGE``), not an image built
per file: the file's environment is built by the runner as for a local server, and the
container sees it, the file's folder, the runner's boot scripts and the base interpreter the
environment links to, read-only, at the paths the runner sees them (a venv's ``python`` is a
symlink to its base interpreter). What it writes (its server folder, its scratch folder, the
instance's storage) is bound read-write. The rest of its root file system is read-only.

Docker Engine 20.10 cannot mount a subfolder of a named volume, so each path is bound from
the host: the runner on the host binds its own paths; a runner in a container binds what
its own mounts hold there (a bind mount's host folder, a local volume's mount point). What
is in none of its mounts is in its image, which the server's image must then be (the
default).

A container runs as its location's user with no capability and no way to gain one, with the
file's ``server-memory`` and ``server-cpus`` (or the service's defaults) in force, and only
its location's variables. It listens where the runner asked: on a Unix socket in its server
folder (the service's roles reach it through the share of that folder, and no location can
reach another's server over a network, as none listens on one), or on a port of its network,
reached by its container name (or, from a runner on the host, by its address there).

No engine restart policy: the runner owns restarts, as for local servers, and removes every
container it started, by id; on start it removes what a previous runner of the same share
left, by their labels.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.dagster_side.container_runs import LOCATION_LABEL, read_own_container
from runner.servers.server import LOCATION_UMASK, Address, Launched, Request
from runner.share.limits import RunLimits, human_bytes

log = logging.getLogger(__name__)

#: Labels on every server container: which share's runner started it, and for what.
SHARE_LABEL = "dagster-code-runner/share"
ROLE_LABEL = "dagster-code-runner/role"
SERVER_ID_LABEL = "dagster-code-runner/server-id"
ROLE = "code-server"
#: The port a server listens on in its container, when not on a socket.
PORT = 4000
#: Base interpreters in these prefixes are the image's own (never bound over it).
SYSTEM_PREFIXES = frozenset({"/", "/usr", "/usr/local"})


@dataclass(frozen=True)
class DockerOptions:
    """Where servers run on Docker: the image, the network, and the service's defaults."""

    image: str
    share: str  # the label value that says which runner's servers a container holds
    network: str | None = None  # None: the engine's default bridge
    defaults: RunLimits = field(default_factory=RunLimits)


@dataclass(frozen=True)
class Bind:
    """One path the server sees, from ``source`` on the engine's host."""

    source: str
    target: str
    writable: bool


def binds(request: Request, host_path: Any) -> list[Bind]:
    """What a server's container mounts, from its request: its environment, base interpreter,
    boot script and code read-only; its folders and the instance's read-write. ``host_path``
    maps a path the runner sees to the engine host's (``None``: it is in the image)."""
    argv = list(request.argv)
    python = Path(argv[0])
    venv = python.parent.parent
    wanted: list[tuple[Path, bool]] = [(venv, False), (Path(argv[1]).parent, False)]
    prefix = base_prefix(venv)
    if prefix is not None and str(prefix) not in SYSTEM_PREFIXES:
        wanted.append((prefix, False))
    for option in ("--working-directory", "--python-file"):
        if option in argv:
            value = Path(argv[argv.index(option) + 1])
            wanted.append((value if option == "--working-directory" else value.parent, False))
    wanted += [(request.sidecar.folder, True), (request.cwd, True)]
    for name in ("DAGSTER_HOME", "RUNNER_OUTPUTS"):
        if request.env.get(name):
            wanted.append((Path(request.env[name]), True))
    out: dict[str, Bind] = {}
    for path, writable in wanted:
        if not path.exists():
            continue
        source = host_path(path)
        if source is None:
            continue  # in the image
        known = out.get(str(path))
        out[str(path)] = Bind(source, str(path), writable or bool(known and known.writable))
    return sorted(out.values(), key=lambda b: b.target)


def base_prefix(venv: Path) -> Path | None:
    """The installation a venv's interpreter links to (``home`` in ``pyvenv.cfg``, resolved)."""
    try:
        text = (venv / "pyvenv.cfg").read_text()
    except OSError:
        return None
    match = re.search(r"(?m)^home\s*=\s*(.+?)\s*$", text)
    return Path(match.group(1)).resolve().parent if match else None


def listening(argv: Sequence[str], address: Address) -> tuple[list[str], bool]:
    """``argv`` as the container runs it, and whether it listens on a port: a socket stays
    where the runner asked; a port becomes :data:`PORT` on every address of the container."""
    argv = list(argv)
    if address.socket:
        return argv, False
    argv[argv.index("--host") + 1] = "0.0.0.0"
    argv[argv.index("--port") + 1] = str(PORT)
    return argv, True


def container_name(location: str, server_id: str) -> str:
    """A name Docker accepts, unique per server: ``dagster-server-<location>-<id>``."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]+", "-", location).strip("-.")[:40] or "location"
    return f"dagster-server-{safe}-{server_id.rsplit('-', 1)[-1]}"


def run_options(
    request: Request,
    *,
    options: DockerOptions,
    location: str,
    limits: RunLimits,
    mounts: list[Bind],
) -> dict[str, Any]:
    """The arguments of ``containers.run`` for a server: pure, so what a container gets is
    checked without an engine."""
    argv, on_port = listening(request.argv, request.address)
    server_id = argv[argv.index("--fixed-server-id") + 1]
    limits = limits.over(options.defaults)
    kwargs: dict[str, Any] = {
        "image": options.image,
        # The location's processes create files its group (the service's) may use: a socket
        # the webserver connects to must be group-writable.
        "command": ["/bin/sh", "-c", f'umask {LOCATION_UMASK:03o} && exec "$@"', "sh", *argv],
        "name": container_name(location, server_id),
        "labels": {
            LOCATION_LABEL: location,
            SHARE_LABEL: options.share,
            ROLE_LABEL: ROLE,
            SERVER_ID_LABEL: server_id,
        },
        "environment": dict(request.env),
        "working_dir": str(request.cwd),
        "detach": True,
        "init": True,  # reaps the run workers it starts; signals reach the server
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mounts": [_mount(b) for b in mounts],
    }
    if request.user is not None:
        kwargs["user"] = f"{request.user.uid}:{request.user.gid}"
        kwargs["group_add"] = []
    if options.network:
        kwargs["network"] = options.network
    if limits.memory is not None:  # no swap beyond it: over the limit is stopped, not slowed
        kwargs["mem_limit"] = kwargs["memswap_limit"] = limits.memory
    if limits.cpus is not None:
        kwargs["nano_cpus"] = round(limits.cpus * 1e9)
    if on_port:
        kwargs["ports"] = {}  # reached on its network, never published on the host
    return kwargs


def _mount(bind: Bind) -> Any:
    from docker.types import Mount

    return Mount(bind.target, bind.source, type="bind", read_only=not bind.writable)


class ContainerProc:
    """A server's container, as :func:`process.stop` sees a process: polled, awaited,
    signalled; once it has ended, :meth:`signal_all` removes it."""

    #: Seconds between two asks of the engine whether it still runs.
    POLL_EVERY = 0.5

    def __init__(self, container: Any, *, limits: RunLimits) -> None:
        self._container = container
        self._limits = limits
        self.container = container.name
        self.id = container.id
        self.pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        self.returncode: int | None = None
        self.note = ""
        self._asked = 0.0
        self._lock = threading.Lock()
        self.removed = False

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and time.monotonic() - self._asked >= self.POLL_EVERY:
                self._asked = time.monotonic()
                try:
                    self._container.reload()
                except Exception as exc:
                    if _not_found(exc):
                        self._ended(-signal.SIGKILL, "its container was removed")
                    return self.returncode
                state = self._container.attrs.get("State", {})
                if state.get("Status") in ("exited", "dead"):
                    self._ended_with(state)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        try:
            self._container.wait(timeout=timeout if timeout is not None else None)
        except Exception as exc:
            if not _not_found(exc):
                raise subprocess.TimeoutExpired(self.container, timeout or 0) from None
        self._asked = 0.0
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.container, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        self.signal_all(sig)

    def signal_all(self, sig: int) -> None:
        """Signal the container (the engine signals its init, which the kernel follows with
        everything in it on SIGKILL); once it has ended, remove it."""
        if self.poll() is None:
            try:
                self._container.kill(signal=int(sig))
                return
            except Exception as exc:
                if not _not_found(exc) and "is not running" not in str(exc):
                    raise ProcessLookupError(str(exc)) from None
        self.remove()

    def remove(self) -> None:
        if self.removed:
            return
        try:
            self._container.remove(force=True)
        except Exception as exc:
            if not _not_found(exc) and "already in progress" not in str(exc):
                log.warning("could not remove container %s: %s", self.container, exc)
                return
        self.removed = True

    def _ended_with(self, state: dict) -> None:
        code = int(state.get("ExitCode") or 0)
        if state.get("OOMKilled"):
            limit = self._limits.memory
            said = f" of {human_bytes(limit)}" if limit else ""
            self._ended(
                -signal.SIGKILL,
                f"killed by the out-of-memory killer: over its memory limit{said} "
                "(server-memory in the file's [tool.dagster-code-runner])",
            )
        elif code > 128 and code - 128 in signal.Signals._value2member_map_:
            self._ended(-(code - 128), "")
        else:
            self._ended(code, "")
        tail = self.logs_tail()
        if tail and (self.returncode or 0) != 0:
            self.note = (self.note or f"exited with status {code}") + f"; its last output:\n{tail}"

    def _ended(self, code: int, note: str) -> None:
        self.returncode, self.note = code, note

    def logs_tail(self, lines: int = 15) -> str:
        try:
            return self._container.logs(tail=lines).decode(errors="replace").strip()
        except Exception:
            return ""


def _not_found(exc: Exception) -> bool:
    return type(exc).__name__ == "NotFound"


class DockerServers:
    """Starts servers in containers (a :data:`server.Launch`, with the location bound) and
    removes those a previous runner of the share left."""

    def __init__(self, options: DockerOptions, *, client: Any = None) -> None:
        self.options = options
        self._client = client
        self._own: dict | bool | None = False  # False: not looked up yet

    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env()
                self._client.ping()
            except Exception as exc:
                self._client = None
                raise OSError(f"the Docker engine does not answer ({exc})") from None
        return self._client

    def own_container(self) -> dict | None:
        """The runner's own container (inspected), or ``None`` on the host."""
        if self._own is False:
            found = read_own_container()
            self._own = self.client().api.inspect_container(found) if found else None
        return self._own  # type: ignore[return-value]

    def host_path(self, path: Path) -> str | None:
        """Where the engine's host has ``path`` (``None``: in the runner's image)."""
        own = self.own_container()
        if own is None:
            return str(path)
        best = None
        for mount in own.get("Mounts", []):
            dest = Path(mount["Destination"])
            if (path == dest or dest in path.parents) and (
                best is None or len(dest.parts) > len(Path(best["Destination"]).parts)
            ):
                best = mount
        if best is None:
            return None
        rel = path.relative_to(best["Destination"])
        return str(Path(best["Source"]) / rel) if best.get("Source") else None

    def launch(self, request: Request, *, location: str, limits: RunLimits) -> Launched:
        """Start ``request``'s server in a container (raises OSError saying why not)."""
        import docker.errors

        client = self.client()
        mounts = binds(request, self.host_path)
        kwargs = run_options(
            request, options=self.options, location=location, limits=limits, mounts=mounts
        )
        try:
            container = client.containers.run(**kwargs)
            container.reload()
        except docker.errors.ImageNotFound:
            raise OSError(
                f"its server image {self.options.image} is not on the Docker engine: build "
                "it (README) or set RUNNER_SERVER_IMAGE"
            ) from None
        except docker.errors.DockerException as exc:
            raise OSError(f"could not start its container: {_explain(exc)}") from None
        proc = ContainerProc(container, limits=limits.over(self.options.defaults))
        address = request.address
        if not address.socket:
            address = Address(self._reach(container), PORT)
        log.info("%s: code server in container %s", location, container.name)
        return Launched(proc, "cold", address)

    def _reach(self, container: Any) -> str:
        """The container's name on its network, for a runner in a container there; its
        address, for a runner on the host (names resolve on a network's containers only)."""
        if self.own_container() is not None:
            return container.name
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        chosen = networks.get(self.options.network or "bridge") or next(iter(networks.values()), {})
        return chosen.get("IPAddress") or container.name

    def containers(self) -> list[Any]:
        """Every server container of this share, running or not."""
        labels = [f"{SHARE_LABEL}={self.options.share}", f"{ROLE_LABEL}={ROLE}"]
        return self.client().containers.list(all=True, filters={"label": labels})

    def remove_all(self, *, why: str) -> list[str]:
        """Remove every server container of this share (by id); their names."""
        try:
            found = self.containers()
        except Exception as exc:
            log.warning("could not list the server containers (%s): %s", why, exc)
            return []
        for container in found:
            try:
                container.remove(force=True)
            except Exception as exc:
                if not _not_found(exc):
                    log.warning("could not remove container %s: %s", container.name, exc)
        if found:
            log.info(
                "removed %d server container(s) %s: %s",
                len(found),
                why,
                ", ".join(c.name for c in found),
            )
        return [c.name for c in found]


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)
