"""The share's lease: one runner serves, others wait, a dead or silent holder blocks no one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from runner.service import lease as leases
from runner.service.lease import Lease


def test_a_free_share_is_taken_and_released(tmp_path: Path) -> None:
    path = tmp_path / leases.LEASE_NAME
    mine = Lease(path)
    assert mine.acquire(threading.Event())
    assert json.loads(path.read_text())["token"] == mine.mine.token
    mine.release()
    assert not path.exists()


def test_a_live_holder_keeps_it_and_a_silent_one_loses_it(tmp_path: Path) -> None:
    path = tmp_path / leases.LEASE_NAME
    now = [1000.0]
    holder = Lease(path, clock=lambda: now[0])
    holder._write()
    other = Lease(path, clock=lambda: now[0])
    other.mine = leases.Holder(**{**other.mine.__dict__, "host": "elsewhere"})
    assert not other.free(holder.holder())  # fresh heartbeat: wait
    now[0] += leases.STALE_AFTER + 1
    assert other.free(holder.holder())  # silent for too long: take over
    other._write()
    assert not holder.renew()  # the old holder finds it lost the share


def test_a_holder_whose_process_is_gone_on_this_host_blocks_no_one(tmp_path: Path) -> None:
    path = tmp_path / leases.LEASE_NAME
    ghost = Lease(path)
    ghost.mine = leases.Holder(**{**ghost.mine.__dict__, "pid": 2**22 + 12345})
    ghost._write()
    assert Lease(path).free(ghost.holder())


def test_waiting_ends_when_asked_to_stop(tmp_path: Path) -> None:
    path = tmp_path / leases.LEASE_NAME
    Lease(path)._write()  # held by this very process: alive, fresh
    other = Lease(path)
    other.mine = leases.Holder(**{**other.mine.__dict__, "host": "elsewhere"})
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert not other.acquire(stop)


def test_a_previous_runner_with_this_very_pid_blocks_no_one(tmp_path: Path) -> None:
    """A restarted container gives the runner the pid its previous incarnation had."""
    path = tmp_path / leases.LEASE_NAME
    Lease(path)._write()  # same host, same pid, another token, fresh heartbeat
    assert Lease(path).free(Lease(path).holder())


def test_held_means_a_live_runner_holds_it(tmp_path: Path) -> None:
    path = tmp_path / leases.LEASE_NAME
    assert not Lease(path).held()  # none
    ghost = Lease(path)
    ghost.mine = leases.Holder(**{**ghost.mine.__dict__, "pid": 2**22 + 12345})
    ghost._write()
    assert not Lease(path).held()  # its process is gone
    other = Lease(path)
    other.mine = leases.Holder(**{**other.mine.__dict__, "host": "elsewhere"})
    other._write()
    assert Lease(path).held()  # alive elsewhere: its servers are in the workspace
