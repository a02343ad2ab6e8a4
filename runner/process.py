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

log = logging.getLogger(__name__)

# Die with the parent (Linux): ``setpriv --pdeathsig KILL`` sets it, then execs the command.
# Not a preexec_fn: forking a process that runs gRPC threads and calling Python code before
# exec can abort the child (gRPC's fork handlers), and without preexec_fn Python spawns with
# vfork, which is also faster. The "parent" is the spawning *thread*, so only spawn from
# long-lived threads (the runner spawns servers from its main loop).
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new session that dies with its parent.

    Signal handlers do not survive exec, and the runner and the entrypoint handle SIGINT and
    SIGTERM themselves, so children start with the default dispositions.
    """
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
    return subprocess.Popen(
        [*prefix, *argv],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        close_fds=True,
    )


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended, naming the signal (SIGKILL is often the OOM killer)."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {returncode}"


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
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
    proc: subprocess.Popen,
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
