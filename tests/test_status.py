"""``python -m runner status``, build progress, JSON logs and metrics, against the real service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from runner.servers.server import free_port
from runner.service.status import Board, FileStatus, describe, read, render
from tests.service import ROOT, asset_file, drop, running, wait_for


def status(share: Path) -> tuple[int, dict[str, Any]]:
    """What an operator's ``python -m runner status --json`` says, and its exit code."""
    out = subprocess.run(
        [sys.executable, "-m", "runner", "status", "--share", str(share), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, json.loads(out.stdout)


def status_text(share: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "runner", "status", "--share", str(share)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout


def row(share: Path, location: str) -> dict[str, Any] | None:
    _, data = status(share)
    return next((r for r in data.get("files", []) if r["location"] == location), None)


def wait_state(share: Path, location: str, state: str, **options: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = row(share, location)
        return found if found and found["state"] == state else None

    return wait_for(f"status to say {location} is {state}", check, **options)


@pytest.mark.slow
def test_status_metrics_and_json_logs_follow_the_service(tmp_path: Path) -> None:
    share, metrics_port = tmp_path / "share", free_port("127.0.0.1")
    code, data = status(share)
    assert code == 3 and not data["running"] and "no runner has run" in data["why"]

    env = {"RUNNER_METRICS": str(metrics_port), "RUNNER_LOG_FORMAT": "json"}
    with running(share, tmp_path / "state", tmp_path / "service.log", env=env) as service:
        drop(service.code_dir / "good.py", asset_file(["a"]))
        service.wait_loaded("good")
        good = wait_state(share, "good", "serving")
        assert good["pid"] == service.server_pids("good")[-1]
        assert (good["port"] or 0) > 0 or good["socket"].endswith("grpc.sock")
        assert good["file"] == "good.py" and good["env"] and Path(good["env_path"]).is_dir()
        assert good["last_loaded"] and good["error"] is None

        # A new dependency set: the build is seen in progress, with what uv is doing.
        drop(
            service.code_dir / "dep.py",
            asset_file(["b"], extra_meta='# requires-python = ">=3.11"\n'),
        )
        building = wait_state(share, "dep", "building-env", every=0.1)
        assert building["env"] and building["pid"] is None and building["progress"]
        service.wait_loaded("dep")

        drop(service.code_dir / "broken.py", asset_file(["c"]) + "\nraise ValueError('no way')\n")
        broken = wait_state(share, "broken", "failed")
        assert "ValueError: no way" in broken["error"] and 'broken.py", line' in broken["error"]
        text = status_text(share)
        assert text.startswith("running: runner pid")
        assert "good" in text and "serving" in text and "ValueError: no way" in text

        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'runner_locations{state="serving"} 2.0' in metrics, metrics
        assert 'runner_locations{state="failed"} 1.0' in metrics
        assert "runner_env_build_seconds_count 2.0" in metrics  # good's env, then dep's
        assert 'runner_failures_total{stage="load"} 1.0' in metrics
        assert "process_resident_memory_bytes" in metrics

        # Every role's lines and the code servers' are JSON objects with the same keys.
        lines = [
            json.loads(line) for line in service.log_text().splitlines() if line.startswith("{")
        ]
        assert all({"timestamp", "level", "event", "logger"} <= set(line) for line in lines)
        assert any(
            line.get("role") == "runner" and "serving good on " in line["event"] for line in lines
        )
        assert any(
            line["logger"] == "dagster.code_server" and "good.py" in line["event"] for line in lines
        )
        assert {"runner", "daemon", "entrypoint"} <= {line.get("role") for line in lines}

    code, data = status(share)
    assert code == 3 and not data["running"] and "stopped at" in data["why"]
    assert "NOT RUNNING" in status_text(share)


# --- the snapshot itself (no processes) ---------------------------------------------------


def test_since_is_kept_while_the_state_stays_and_reset_when_it_changes(tmp_path: Path) -> None:
    now = [1000.0]
    board = Board(tmp_path / "s.json", share=tmp_path, clock=lambda: now[0])
    board.update([FileStatus("a.py", "a", "starting")])
    now[0] = 1005.0
    board.update([FileStatus("a.py", "a", "starting", pid=7)])
    assert board.rows[0].since == 1000.0
    now[0] = 1010.0
    board.update([FileStatus("a.py", "a", "serving", pid=7, port=4000)])
    assert board.rows[0].since == 1010.0
    snap = read(tmp_path / "s.json", now=1011.0)
    assert snap is not None and snap.running
    assert "a.py" in render(snap, now=1011.0) and "serving" in render(snap, now=1011.0)


def test_a_runner_that_stopped_writing_is_reported_not_running(tmp_path: Path) -> None:
    board = Board(tmp_path / "s.json", share=tmp_path, clock=lambda: 1000.0)
    board.update([FileStatus("a.py", "a", "failed", error="Traceback...\nValueError: x")])
    snap = read(tmp_path / "s.json", now=1000.0 + 60)
    assert snap is not None and not snap.running and "60s ago" in (snap.why_not or "")
    text = render(snap, now=time.time())
    assert text.startswith("NOT RUNNING") and "ValueError: x" in text


def test_each_state_follows_from_what_the_runner_holds() -> None:
    from runner.envs import env
    from runner.lifecycle.model import Generation, Location, Problem
    from runner.share.scan import LocationSpec
    from runner.share.script import ScriptMetadata

    meta = ScriptMetadata(dependencies=("dagster",), requires_python=None, tool={})

    class Up:
        port, server_id, pid, start = 4000, "up", 42, "warm"
        socket, user = None, None

        def exited(self) -> int | None:
            return None

    def gen(server: Up | None = None, *, ready: bool = False) -> Generation:
        spec = LocationSpec("a", "a.py", Path("/share/a.py"), "1", meta)
        return Generation(spec=spec, env=env.spec_for(meta), prepared=0, server=server, ready=ready)

    def state(loc: Location, **options: Any) -> tuple[str, str | None]:
        options = {"waiting_to_start": None, "build_progress": None, **options}
        row = describe(loc, file="a.py", env_path=lambda key: Path("/envs") / key, **options)
        return row.state, row.progress

    assert state(Location("a", next=gen()), build_progress="resolved 9 packages") == (
        "building-env",
        "resolved 9 packages",
    )
    assert state(Location("a", next=gen()), waiting_to_start="waiting for a start slot") == (
        "starting",
        "waiting for a start slot",
    )
    assert state(Location("a", next=gen(Up()))) == ("starting", None)
    assert state(Location("a", next=gen(Up(), ready=True))) == ("waiting-for-stable", None)
    assert state(Location("a", current=gen(Up(), ready=True))) == ("serving", None)
    broken = Location("a", current=gen(Up(), ready=True), error=Problem.says("a.py: boom"))
    row = describe(
        broken,
        file="a.py",
        waiting_to_start=None,
        build_progress=None,
        env_path=lambda key: Path("/envs") / key,
    )
    assert (row.state, row.serving, row.pid, row.port) == ("failed", True, 42, 4000)
    assert "boom" in (row.error or "")
    assert state(Location("a", error=Problem.says("a.py: bad TOML"))) == ("failed", None)
    assert state(Location("a", error=Problem.says("a.py: index down"), retry_at=10.0)) == (
        "retrying",
        None,
    )

    # A version that never loaded is not "last good serving".
    never = replace(gen(Up(), ready=True), load_error=Problem.says("SyntaxError"))
    row = describe(
        Location("a", current=never),
        file="a.py",
        waiting_to_start=None,
        build_progress=None,
        env_path=lambda key: Path("/envs") / key,
    )
    assert (row.state, row.serving, row.pid) == ("failed", False, 42)
    snap = read_back(row)
    assert "last good serving" not in render(snap, now=time.time())


def read_back(row: FileStatus) -> Any:
    from runner.service.status import Snapshot, _jsonable

    return Snapshot({"pid": 1, "host": "h", "files": [_jsonable(row)]}, True, None)


def test_ignored_files_warnings_and_settings_are_rendered_without_values() -> None:
    from runner.lifecycle.model import ignored_warning
    from runner.service.status import Snapshot, _jsonable, ignored_row

    rows = [
        ignored_row("tools/", ".runnerignore line 2: tools/"),
        FileStatus(
            file="a.py",
            location="a",
            state="serving",
            serving=True,
            warning=ignored_warning(("job nightly", "sensor s")),
            settings=("code_location/.env",),
            variables=("API_TOKEN",),
        ),
    ]
    text = render(Snapshot({"files": [_jsonable(r) for r in rows]}, True, None), now=time.time())
    assert "tools/: ignored (.runnerignore line 2: tools/)" in text
    assert "ignored job nightly, sensor s" in text
    assert "a settings: code_location/.env (API_TOKEN)" in text
