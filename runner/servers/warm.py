"""Warm starts: per environment, a template process that has imported Dagster forks the code
servers (see ``boot/template.py``), so a start costs loading the file, not importing Dagster.

A location whose environment cannot use a template (importing Dagster fails there, or leaves
a thread running) starts cold, and says why. A template that dies is replaced on the next
start (its servers live on); one that keeps dying while starting is given up for its
environment. Templates are keyed by the environment's interpreter and by the variables
read while Python starts and Dagster is imported, so a location whose settings change those
gets a template of its own.

A template is shared by locations that run as different users, so it imports no location's
code: no file, no ``.pth`` file or ``sitecustomize``, nothing but Dagster and what Dagster
requires (``boot/guard.py``), and never a location's settings: a forked server reads its
environment from a FIFO in its own folder once it runs as its location's user. Where
locations run as users of their own, the template holds only the right to fork into their
ids (``boot/drop.py``); a location whose settings put code on the interpreter's path
(``PYTHONPATH`` and the like), or whose environment takes Dagster from an index of its own
(see :mod:`trust`), starts cold, as its own user.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import select
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.base import process
from runner.isolation.identity import Identity
from runner.servers.cgroup import Cgroup
from runner.servers.server import Launched, Request, spawn_cold

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent.parent / "boot" / "template.py"
#: Seconds a template may take to import Dagster before it is given up.
BOOT_TIMEOUT = 120.0
#: Seconds a template may take to answer a fork request.
FORK_TIMEOUT = 10.0
#: Templates of one environment that may die while starting before it starts cold.
BOOT_ATTEMPTS = 3
#: Seconds to wait for a template's report of how a child that ended ended.
EXIT_REPORT_WAIT = 2.0


#: Why an environment's first server starts cold: its template imports Dagster meanwhile, and
#: would take as long as a cold start before it could fork (later starts wait for it). Only a
#: lone start does: where several wait for one environment (a restart), all wait for its
#: template, which costs one import of Dagster instead of two on the same cores.
FIRST_START = "its environment's template is starting (the first server does not wait for it)"


class NotReady(Exception):
    """The environment's template is still starting: try again when it is ready."""


#: Start-up variables that load code (a path to import from, a module to run): a template
#: never takes them from a location's settings.
CODE_LOADING = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONPYCACHEPREFIX",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "PYTHONEXECUTABLE",
    "PYTHONINSPECT",
)


@dataclass(frozen=True)
class Rights:
    """What a template runs as: its own user, allowed to fork into the ids ``allowed``."""

    user: Identity
    allowed: tuple[int, int]


def startup_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables Python reads as it starts and Dagster (or gRPC) as it is imported: a
    child forked from a template sees these as the template saw them."""
    prefixes = ("PYTHON", "DAGSTER_", "GRPC_", "LC_")
    return {k: v for k, v in env.items() if k.startswith(prefixes) or k in ("LANG", "TZ")}


class Forked:
    """A server forked by a template: what :mod:`process` needs of a ``Popen``.

    Its parent is the template, which reaps it and reports its exit status; a pidfd tells
    when it ended, and signals it without a race against a reused pid.
    """

    def __init__(self, pid: int, template: Template, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self.note = ""  # why the exit status is not known
        self._template = template
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already ended and reaped: its report says how
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        status = self._template.exit_status(self.pid)
        if status is None and self._ended():
            status = self._template.exit_status(self.pid, wait=EXIT_REPORT_WAIT)
            if status is None:
                self.note = "its exit status is unknown: the template that forked it had ended"
                status = 255
        if status is not None:
            self.returncode = status
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], min(left or 0.5, 0.5))
            else:
                time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def _ended(self) -> bool:
        if self._pidfd is None:
            return True
        return bool(select.select([self._pidfd], [], [], 0)[0])


def _fifo(request: Request) -> Path:
    """The FIFO in the server's own folder its environment goes through: readable by its
    location's group only (the runner writes it)."""
    path = request.sidecar.settings
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)
    if request.user is not None:
        os.chown(path, os.getuid(), request.user.gid, follow_symlinks=False)
        os.chmod(path, 0o640, follow_symlinks=False)
    return path


def _send(fifo: Path, env: Mapping[str, str], child: Forked) -> None:
    """Write ``env`` into ``fifo`` once ``child`` opens it (it does as soon as it has become
    its location's user), then remove the FIFO."""
    deadline = time.monotonic() + FORK_TIMEOUT
    try:
        while True:
            try:
                # The folder is the location's: never follow what its code put in its place.
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                break
            except OSError as exc:  # ENXIO: nobody reads it yet
                if exc.errno != errno.ENXIO:
                    raise
            if child.poll() is not None:
                raise OSError(
                    f"the forked server {process.describe_exit(child.returncode)} "
                    "before taking its environment"
                )
            if time.monotonic() > deadline:
                raise OSError(f"the forked server did not take its environment in {FORK_TIMEOUT}s")
            time.sleep(0.002)
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.getuid():
            os.close(fd)
            raise OSError(f"{fifo} is not the FIFO the runner made")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(dict(env)).encode())
    finally:
        fifo.unlink(missing_ok=True)


def ksm_runs(control: Path = Path("/sys/kernel/mm/ksm/run")) -> bool:
    """The host merges identical pages of the processes that offer them (templates do)."""
    try:
        return control.read_text().strip() == "1"
    except OSError:
        return False


class Template:
    """One template process and what it reported."""

    def __init__(
        self,
        python: Path,
        env: Mapping[str, str],
        *,
        changed: Callable[[], None],
        rights: Rights | None = None,
        cgroup: Cgroup | None = None,
    ) -> None:
        self.python = python
        self.state = "starting"  # -> ready | unusable | ended
        self.served = False  # it was ready once (ending later is no failure to start)
        self.why = ""
        self.started = time.monotonic()
        self._changed = changed  # called (from the reader) when it becomes ready or ends
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._forked: dict[int, int] = {}  # request id -> pid
        self._exited: dict[int, int] = {}  # pid -> exit status
        read, write = os.pipe()
        own = {"RUNNER_TEMPLATE_REPLIES": str(write)}
        if rights is not None:
            u, (lowest, highest) = rights.user, rights.allowed
            own["RUNNER_TEMPLATE_USER"] = f"{u.uid}:{u.gid}:{lowest}:{highest}"
        try:
            # -S: no site, so no .pth file and no sitecustomize of the environment runs here
            # (a forked server processes them once it is its location's; see template.py).
            self.proc = process.spawn(
                [str(python), "-S", str(TEMPLATE)],
                env={**env, **own},
                cwd=TEMPLATE.parent,
                stdin=subprocess.PIPE,
                pass_fds=(write,),
                cgroup=cgroup.procs if cgroup else None,
            )
        finally:
            os.close(write)
        self._reader = threading.Thread(
            target=self._read, args=(os.fdopen(read, "rb"),), name="template", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fork(self, request: Request) -> Forked:
        """A child running ``codeserver.py argv[2:]`` (``argv``: the cold command line), as
        ``request.user``, with ``request.env``, which only the child reads (from a FIFO)."""
        request_id = next(self._ids)
        fifo = _fifo(request)
        user = request.user
        asked = {
            "id": request_id,
            "argv": list(request.argv[2:]),
            "cwd": str(request.cwd),
            "parent": os.getpid(),
            "user": [user.uid, user.gid] if user else None,
            "settings": str(fifo),
        }
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(asked) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise OSError(
                f"the template (pid {self.pid}) did not take the request: {exc}"
            ) from None
        with self._cond:
            if not self._cond.wait_for(
                lambda: request_id in self._forked or self.state != "ready", FORK_TIMEOUT
            ):
                self.kill()
                raise OSError(f"the template (pid {self.pid}) did not fork in {FORK_TIMEOUT}s")
            if request_id not in self._forked:
                raise OSError(f"the template (pid {self.pid}) ended: {self.why}")
            pid = self._forked.pop(request_id)
        child = Forked(pid, self, request.argv)
        try:
            if request.cgroup is not None:  # it waits for its settings: none of its code ran
                request.cgroup.join(pid)
            _send(fifo, request.env, child)
        except OSError:
            child.send_signal(signal.SIGKILL)
            raise
        return child

    def exit_status(self, pid: int, *, wait: float = 0.0) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exited or self.state != "ready", wait)
            return self._exited.pop(pid, None)

    def stop(self) -> None:
        """End the template (its servers live on: each is stopped on its own)."""
        process.stop(self.proc, name=f"template of {self.python}", graceful=self._close, grace=5.0)

    def _close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # its requests end: it returns

    def kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def _read(self, replies) -> None:
        for line in replies:
            message = json.loads(line)
            with self._cond:
                if "ready" in message:
                    self.state, self.served = "ready", True
                    merged = ", pages merged by KSM" if message.get("merge") and ksm_runs() else ""
                    log.info(
                        "template for %s ready in %.1fs (pid %d%s)",
                        self.python,
                        message["ready"],
                        self.pid,
                        merged,
                    )
                elif "unusable" in message:
                    self.state, self.why = "unusable", message["unusable"]
                elif "forked" in message:
                    self._forked[message["forked"]] = message["pid"]
                elif "exited" in message:
                    self._exited[message["exited"]] = message["status"]
                self._cond.notify_all()
            if "ready" in message or "unusable" in message:
                self._changed()
        code = self.proc.wait()
        with self._cond:
            if self.state != "unusable":  # that says why; it ends as it should
                self.state, self.why = "ended", f"it {process.describe_exit(code)}"
            self._cond.notify_all()
        self._changed()


class Templates:
    """The templates of the service, one per environment (and start-up variables)."""

    def __init__(
        self, base: Mapping[str, str], *, changed: Callable[[], None], rights: Rights | None = None
    ) -> None:
        self._base = {k: v for k, v in base.items() if k not in startup_variables(base)}
        self._changed = changed
        self._rights = rights
        self._templates: dict[tuple, Template] = {}
        self._failed: dict[tuple, list[str]] = {}  # templates that ended while starting
        self._cold: dict[tuple, str] = {}  # why this key starts cold
        self._started: set[tuple] = set()  # keys that have had a template
        #: Where templates start (their servers move to cgroups of their own at once).
        self.cgroup: Cgroup | None = None

    def launch(
        self, python: Path, request: Request, *, cold: str | None = None, alone: bool = True
    ) -> Launched:
        """Fork the server from its environment's template ("warm"), or spawn it ("cold:
        why"; ``cold``: why it must start cold); raises :class:`NotReady` while the
        template starts. ``alone``: no other start waits for this environment, so the first
        one may start cold beside its template."""
        env = request.env
        key = (str(python), tuple(sorted(startup_variables(env).items())))
        loading = [name for name in CODE_LOADING if name in env]
        if loading:
            cold = (
                f"its settings set {', '.join(loading)}, which would load code into the "
                "template its environment's locations share"
            )
        why = cold or self._cold.get(key) or self._template(key, python, env, alone=alone)
        if why is None:
            try:
                return Launched(self._templates[key].fork(request), "warm", request.address)
            except OSError as exc:
                why = str(exc)
                log.warning("%s: starting cold: %s", python, why)
        return spawn_cold(request)._replace(how=f"cold: {why}")

    def retire(self, python: Path) -> None:
        """Stop the templates of an environment that is removed."""
        for key in [key for key in self._templates if key[0] == str(python)]:
            self._templates.pop(key).stop()
        for held in (self._failed, self._cold):
            for key in [key for key in held if key[0] == str(python)]:
                del held[key]

    def all(self) -> list[Template]:
        return list(self._templates.values())

    def shutdown(self) -> None:
        for template in self._templates.values():
            template.stop()
        self._templates.clear()

    def _template(
        self, key: tuple, python: Path, env: Mapping[str, str], *, alone: bool
    ) -> str | None:
        """``None``: the key's template is ready; else why it starts cold. Starts one, or
        replaces one that ended, and raises :class:`NotReady` while it starts."""
        template = self._templates.get(key)
        if template is not None and template.state == "ready" and template.proc.poll() is None:
            return None
        if template is not None and template.state == "starting":
            if time.monotonic() - template.started < BOOT_TIMEOUT:
                raise NotReady
            template.kill()
            template.why = f"it did not start within {BOOT_TIMEOUT:.0f}s"
        if template is not None:
            del self._templates[key]
            template.stop()
            if template.state == "unusable":
                self._cold[key] = template.why
                log.warning("%s starts its servers cold: %s", python, template.why)
                return template.why
            if not template.served:  # ended while starting
                self._failed.setdefault(key, []).append(template.why)
            log.warning(
                "template for %s (pid %d) ended: %s; starting another",
                python,
                template.pid,
                template.why,
            )
        failures = self._failed.get(key, [])
        if len(failures) >= BOOT_ATTEMPTS:
            why = f"its template ended {len(failures)} times while starting: {failures[-1]}"
            self._cold[key] = why
            return why
        self._templates[key] = Template(
            python,
            {**self._base, **startup_variables(env)},
            changed=self._changed,
            rights=self._rights,
            cgroup=self.cgroup,
        )
        first = key not in self._started
        self._started.add(key)
        if first and alone:  # a lone first start never waits longer than a cold one
            return FIRST_START
        raise NotReady
