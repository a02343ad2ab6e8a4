"""Start child processes we own, and stop them with one ladder.

Every process the runner or the entrypoint starts goes through :func:`spawn` and is stopped
by :func:`stop`: graceful request -> wait with a deadline -> SIGKILL the process group ->
reap. Children run in their own session (so a terminal's Ctrl-C reaches only us, and we
decide the order of shutdown), and with a parent-death signal so that a SIGKILLed parent
does not leave orphans serving stale code.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# Die with the parent (Linux): ``setpriv --pdeathsig KILL`` sets it, then execs the command.
# Not a preexec_fn: forking a process that runs gRPC threads and calling Python code before
# exec can abort the child (gRPC's fork handlers), and without preexec_fn Python spawns with
# vfork, which is also faster. The "parent" is the spawning *thread*, so only spawn from
# long-lived threads (the runner spawns servers from its main loop).
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


class Proc(Protocol):
    """What :func:`stop` needs of a process: a ``Popen``, or a server a template forked."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = None,
    stderr: int | None = None,
    pass_fds: Sequence[int] = (),
    user: tuple[int, int] | None = None,
    groups: Sequence[int] = (),
    umask: int = -1,
    cgroup: Path | None = None,
) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new session that dies with its parent.

    Signal handlers do not survive exec, and the runner and the entrypoint handle SIGINT and
    SIGTERM themselves, so children start with the default dispositions. ``user``: (uid, gid)
    it runs as, with no supplementary groups and no capabilities in any set, never to gain
    any (``no_new_privs``), and in the supplementary ``groups`` only; setpriv arms the
    parent-death signal after the switch (a credential change clears it). ``cgroup``: the
    ``cgroup.procs`` of the cgroup it starts in, joined before it runs (and before it
    changes user; see :mod:`cgroup`).
    """
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
    if user is not None:
        if not _SETPRIV:
            raise OSError("setpriv (util-linux) is needed to start a process as another user")
        joined = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        prefix = [
            _SETPRIV,
            "--reuid",
            str(user[0]),
            "--regid",
            str(user[1]),
            *joined,
            "--nnp",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--pdeathsig",
            "KILL",
            "--",
        ]
    if cgroup is not None:  # a shell joins the cgroup, then execs the rest: no code runs outside
        prefix = ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', str(cgroup), *prefix]
    return subprocess.Popen(
        [*prefix, *argv],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
        umask=umask,
    )


def describe_exit(returncode: int | None, *, oom: bool = False) -> str:
    """Say how a process ended, naming the signal; ``oom``: the kernel's out-of-memory
    killer killed a process of ours meanwhile (see :func:`oom_kills`)."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " by the kernel's out-of-memory killer" if oom and name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with status {returncode}"


def oom_kills() -> int | None:
    """How many processes of this cgroup the kernel's OOM killer has killed (cgroup v2
    ``memory.events``, v1 ``memory.oom_control``); ``None`` where the kernel does not say."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    places: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            places += [
                Path(f"/sys/fs/cgroup{path}") / "memory.events",
                Path("/sys/fs/cgroup/memory.events"),
            ]
        elif "memory" in controllers.split(","):
            places += [
                Path(f"/sys/fs/cgroup/memory{path}") / "memory.oom_control",
                Path("/sys/fs/cgroup/memory/memory.oom_control"),
            ]
    for place in places:
        try:
            for row in place.read_text().splitlines():
                key, _, value = row.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


#: Every process a code server starts inherits ``MARKER=<server id>`` in its environment: a
#: child that leaves the server's process group and session (``setsid``) is still found.
MARKER = "RUNNER_SERVER"


def marked(value: str) -> list[int]:
    """Pids of live processes whose environment has ``MARKER=value`` (ours to stop)."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def stop_pids(pids: list[int], *, name: str, grace: float = 5.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still there after ``grace`` (processes that are
    not our children: found by :func:`marked`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return
    log.warning("%s: %d process(es) survived SIGKILL: %s", name, len(pids), pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie is gone
    except (OSError, IndexError):
        return False


def _kill_group(proc: Proc, sig: int) -> None:
    signal_all = getattr(proc, "signal_all", None)
    if signal_all is not None:  # a container: its engine signals all of it (never a host pid)
        try:
            signal_all(sig)
        except ProcessLookupError:
            pass
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and the id reused: signal the process only
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def stop(
    proc: Proc,
    *,
    name: str,
    graceful: Callable[[], object] | None = None,
    grace: float = 10.0,
    kill_after: float = 5.0,
) -> int | None:
    """Stop ``proc`` and its process group; return its exit code.

    ``graceful`` (e.g. a gRPC ShutdownServer call) replaces SIGTERM as the first step when
    given; if it raises, SIGTERM is sent instead. After ``grace`` seconds the whole process
    group gets SIGKILL, then the process is reaped.
    """
    if proc.poll() is not None:
        _kill_group(proc, signal.SIGKILL)  # leftovers of a leader that already exited
        return proc.returncode
    started = time.monotonic()
    requested = False
    if graceful is not None:
        try:
            graceful()
            requested = True
        except Exception as exc:  # any failure means: fall back to SIGTERM
            log.debug(
                "%s (pid %d): graceful stop failed (%s), sending SIGTERM", name, proc.pid, exc
            )
    if not requested:
        _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) still running after %.0fs: SIGKILL", name, proc.pid, grace)
        _kill_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not die after SIGKILL", name, proc.pid)
            return None
    # Grandchildren (e.g. run workers) may outlive the leader; the group goes with it.
    _kill_group(proc, signal.SIGKILL)
    log.info(
        "stopped %s (pid %d, %s) in %.1fs",
        name,
        proc.pid,
        describe_exit(proc.returncode),
        time.monotonic() - started,
    )
    return proc.returncode


def can_set_user() -> bool:
    """setpriv is there to start processes as other users."""
    return _SETPRIV is not None


def pid_alive(pid: int) -> bool:
    """A process ``pid`` is there on this host (someone else's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


#: Soft open-file limit the service asks for: every role holds a gRPC channel per location
#: (300 locations need more than the usual 1024), the runner a pipe or socket per server.
OPEN_FILES_WANTED = 65536


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted``, as far as its hard limit
    allows (children inherit it); return the (before, after) soft limits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft
