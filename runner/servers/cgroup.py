"""A cgroup per code server, where the runner can make one: what a server starts stays in it
(a child that forks, calls ``setsid()`` and outlives its parent included), and goes with it.

A process cannot leave a cgroup it did not open for writing: moving out needs write access
to the ``cgroup.procs`` of the cgroup it moves to and of the common ancestor, which are the
runner's. So a server's processes are found by their cgroup, which neither a session, a
process group, an environment nor a parent's exit changes. The runner's cgroups live in a
folder of its own below its own cgroup on the unified (v2) hierarchy,
``dagster-code-runner.<pid>``, with no controllers enabled (limits stay where they are; a
cgroup here only holds processes together). Where the runner may not create one (not root,
no delegation, the hierarchy mounted read-only as in an unprivileged container), it says so
and finds a server's processes by the variable they inherit and by their user.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "dagster-code-runner."


class Cgroup:
    """One cgroup: what was moved into it, and what those processes started since."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def procs(self) -> Path:
        """Writing a pid here moves that process (``0``: the writer) in."""
        return self.path / "cgroup.procs"

    def join(self, pid: int) -> None:
        self.procs.write_text(str(pid))

    def pids(self) -> list[int]:
        """Every process in it and in the cgroups below it."""
        found: list[int] = []
        for folder, _, _ in os.walk(self.path):
            try:
                found += [int(p) for p in Path(folder, "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue
        return found

    def kill(self, *, timeout: float = 5.0) -> list[int]:
        """SIGKILL everything in it, wait until it is empty, remove it; the pids it held."""
        held = self.pids()
        if held:
            try:
                (self.path / "cgroup.kill").write_text("1")  # Linux 5.14+: no race with forks
            except OSError:
                for pid in held:
                    _kill(pid)
            deadline = time.monotonic() + timeout
            while (left := self.pids()) and time.monotonic() < deadline:
                for pid in left:  # without cgroup.kill, what forked meanwhile
                    _kill(pid)
                time.sleep(0.02)
        self.remove()
        return held

    def remove(self) -> None:
        """Remove it and the cgroups below it (only empty cgroups can go)."""
        for folder, _, _ in sorted(os.walk(self.path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the cgroup %s: %s", folder, exc)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Cgroups(Cgroup):
    """The runner's own folder of cgroups: one per code server, one for the templates."""

    @classmethod
    def create(cls, pid: int | None = None) -> tuple[Cgroups | None, str]:
        """The runner's folder, made now, and how server processes are found; ``None`` (and
        why) where no cgroup can be made here."""
        pid = pid or os.getpid()
        base = own_cgroup()
        if base is None:
            return None, "no cgroup v2 hierarchy is mounted here"
        stale = [p for p in base.glob(f"{PREFIX}*") if not _runs(p.name.removeprefix(PREFIX))]
        for folder in stale:
            held = Cgroup(folder).kill()
            if held:
                log.info(
                    "stopped %d process(es) a previous runner left in %s: %s",
                    len(held),
                    folder,
                    held,
                )
        root = base / f"{PREFIX}{pid}"
        try:
            root.mkdir(exist_ok=True)
            probe = root / "probe"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError as exc:
            return None, f"cannot create a cgroup in {base}: {exc.strerror or exc}"
        return cls(root), f"in a cgroup each, below {root}"

    def make(self, name: str) -> Cgroup:
        path = self.path / name
        path.mkdir()
        return Cgroup(path)


def own_cgroup(mountinfo: str | None = None, membership: str | None = None) -> Path | None:
    """This process's cgroup on the unified hierarchy, as a folder, or ``None``."""
    try:
        mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
        membership = membership if membership is not None else Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    mount = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - cgroup2 " in line and len(fields) > 4:  # read-only: creating one says so
            mount = (fields[3], Path(fields[4]))  # (root of the mount, where it is mounted)
            break
    own = next((line[3:] for line in membership.splitlines() if line.startswith("0::")), None)
    if mount is None or own is None:
        return None
    mounted_root, where = mount
    relative = os.path.relpath(own, mounted_root) if own.startswith(mounted_root) else None
    if relative is None or relative.startswith(".."):
        return None
    return where if relative == "." else where / relative


def _runs(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not one of ours: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
