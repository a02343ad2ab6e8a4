"""A cgroup per server: found from this process's own, and holding every process a server
starts, however it leaves its session."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from runner.base import process
from runner.servers.cgroup import Cgroups, own_cgroup
from tests.needs import missing

MOUNTS = "41 31 0:38 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
CGROUP_V1_ONLY = "30 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"


def test_own_cgroup_is_found_below_the_mount() -> None:
    assert own_cgroup(MOUNTS, "0::/system.slice/runner.service\n") == Path(
        "/sys/fs/cgroup/system.slice/runner.service"
    )
    assert own_cgroup(MOUNTS, "0::/\n") == Path("/sys/fs/cgroup")
    # A namespaced mount shows its own root; a cgroup outside it cannot be reached.
    nested = "41 31 0:38 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert own_cgroup(nested, "0::/kubepods/pod1/c1\n") == Path("/sys/fs/cgroup/c1")
    assert own_cgroup(nested, "0::/elsewhere\n") is None
    assert own_cgroup(CGROUP_V1_ONLY, "4:pids:/\n") is None


SETSID_GRANDCHILD = """import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(os.getpid(), flush=True)
        time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def test_a_process_and_what_it_left_behind_go_with_its_cgroup(tmp_path: Path) -> None:
    cgroups, why = Cgroups.create(pid=os.getpid())
    if cgroups is None:
        missing(f"no cgroup can be made here ({why}): run as root with cgroup v2 mounted rw")
    try:
        cgroup = cgroups.make("server")
        out = tmp_path / "out"
        with open(out, "w") as f:
            proc = process.spawn(
                [sys.executable, "-c", SETSID_GRANDCHILD], stdout=f, cgroup=cgroup.procs
            )
        deadline = time.monotonic() + 30
        while not out.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(out.read_text())
        assert os.getsid(grandchild) != os.getsid(proc.pid)
        assert {proc.pid, grandchild} <= set(cgroup.pids())  # joined before it ran
        held = cgroup.kill()
        assert {proc.pid, grandchild} <= set(held)
        proc.wait(timeout=10)
        assert not Path(f"/proc/{grandchild}").exists() or "Z" in _state(grandchild)
        assert not cgroup.path.exists()
    finally:
        cgroups.kill()
    assert not cgroups.path.exists()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_dead_runners_cgroups_are_emptied_and_removed() -> None:
    dead = 2**22 + 1  # above pid_max's default: no process has it
    stale, _ = Cgroups.create(pid=dead)
    if stale is None:
        missing("no cgroup can be made here: run as root with cgroup v2 mounted rw")
    proc = process.spawn(
        [sys.executable, "-c", "import time; time.sleep(600)"], cgroup=stale.make("server").procs
    )
    time.sleep(0.2)
    mine, _ = Cgroups.create(pid=os.getpid())
    assert mine is not None
    try:
        assert proc.wait(timeout=10) < 0 and not stale.path.exists()
    finally:
        mine.kill()
