"""Hard stops: SIGKILL of the runner or the entrypoint leaves nothing behind, and a restart on
the same share brings every location back from the environments already built."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.service import Service, alive, asset_file, drop, running, wait_for

pytestmark = pytest.mark.slow

GOOD = asset_file(["a"])

SLOW = """# /// script
# dependencies = ["dagster"]
# ///
import time

import dagster as dg


@dg.asset
def slow() -> int:
    time.sleep(600)
    return 1


defs = dg.Definitions(assets=[slow])
"""


def child(service: Service, *words: str) -> psutil.Process:
    for proc in psutil.Process(service.proc.pid).children():
        if all(w in " ".join(proc.cmdline()) for w in words):
            return proc
    raise AssertionError(f"no child process with {words}")


def test_show_error_mode_polling_mode_and_another_server_address(
    tmp_path: Path, state_dir: Path
) -> None:
    """Failures in place of the location; rescans alone (as on SMB/NFS) find every change; and
    code servers on another address than the webserver's, written into workspace.yaml."""
    env = {
        "RUNNER_ON_FAILURE": "show-error",
        "RUNNER_WATCH": "poll",
        "RUNNER_SERVER_HOST": "127.0.0.2",
        "RUNNER_ADVERTISE_HOST": "127.0.0.2",
    }
    with running(tmp_path / "share", state_dir, tmp_path / "service.log", env) as service:
        drop(service.code_dir / "good.py", GOOD)
        service.wait_loaded("good")
        assert "with rescans only" in service.log_text()
        workspace = (service.share / "dagster_home" / "workspace.yaml").read_text()
        assert "host: 127.0.0.2" in workspace and "127.0.0.1" not in workspace
        listening = {
            c.laddr.ip
            for c in psutil.Process(service.server_pids("good")[-1]).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert {ip.removeprefix("::ffff:") for ip in listening} == {"127.0.0.2"}
        pid = service.server_pids("good")[-1]
        drop(service.code_dir / "good.py", GOOD + "\ndef broken(:\n    pass\n")
        service.wait_error("good", "SyntaxError")
        assert "good~new-version-failed" not in service.locations()
        wait_for("the last good server to retire", lambda: not alive(pid), timeout=60)
    service.assert_nothing_left()


def test_sigkill_of_the_runner_leaves_no_server_and_a_restart_reuses_envs(
    tmp_path: Path, state_dir: Path
) -> None:
    share, names = tmp_path / "share", ("one", "two", "three")
    with running(share, state_dir, tmp_path / "first.log") as first:
        for name in names:
            drop(first.code_dir / f"{name}.py", GOOD)
        for name in names:
            first.wait_loaded(name)
        servers = [first.server_pids(name)[-1] for name in names]
        first.descendants()

        child(first, "runner", "serve").kill()  # SIGKILL: no cleanup code runs

        wait_for(
            "the code servers to die with the runner",
            lambda: not any(alive(pid) for pid in servers),
            timeout=30,
        )
        first.proc.wait(timeout=30)  # the entrypoint stops the other roles and exits
        assert first.proc.returncode == 1
        first.assert_nothing_left()

    with running(share, state_dir, tmp_path / "second.log") as second:
        started = time.monotonic()
        for name in names:
            second.wait_loaded(name)
        print(f"restart: 3 locations LOADED {time.monotonic() - started:.1f}s after the start")
        assert "building env" not in second.log_text()  # environments were reused
        # The webserver and the daemon did not try the first runner's servers.
        assert "Error loading repository location" not in second.log_text()
        assert not set(servers) & set(second.server_pids("one"))  # no stale server
    second.assert_nothing_left()


def test_sigkill_of_the_entrypoint_leaves_nothing(tmp_path: Path, state_dir: Path) -> None:
    with running(tmp_path / "share", state_dir, tmp_path / "service.log") as service:
        drop(service.code_dir / "one.py", GOOD)
        service.wait_loaded("one")
        service.descendants()
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait(timeout=10)
        wait_for(
            "every process to die with the entrypoint",
            lambda: service.leftovers() == [],
            timeout=30,
        )


def test_runs_in_flight_when_the_service_stops_are_recorded_as_canceled(
    tmp_path: Path, state_dir: Path
) -> None:
    share = tmp_path / "share"
    with running(share, state_dir, tmp_path / "first.log") as first:
        drop(first.code_dir / "slow.py", SLOW)
        first.wait_loaded("slow")
        run_id = first.materialize_all("slow")
        wait_for("the run to start", lambda: first.run_status(run_id) == "STARTED", timeout=120)
        took = first.stop(signal.SIGTERM)
        assert took < 15, f"stopping took {took:.1f}s"
        first.assert_nothing_left()

    with running(share, state_dir, tmp_path / "second.log") as second:
        wait_for("the webserver", lambda: second.locations() is not None, timeout=120)
        assert second.run_status(run_id) == "CANCELED"
