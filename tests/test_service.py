"""The whole path, for real: a file on the share -> a location in the UI -> a run in its env.

One service (webserver, daemon, runner) serves the tests of this module in order, the way a
user's session goes: drop files, run them, delete one, stop the service.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
from pathlib import Path

import psutil
import pytest

from runner.share.script import location_name
from tests.service import ROOT, Service, alive, drop, wait_for

pytestmark = pytest.mark.slow

DEPS = '["dagster", "humanize>=4"]'


def pipeline(marker: Path, *, deps: str = DEPS, extra: str = "") -> str:
    """A PEP 723 file whose asset records which interpreter ran it."""
    return f"""# /// script
# requires-python = ">=3.11"
# dependencies = {deps}
# ///
import sys

import dagster as dg
import humanize
{extra}

@dg.asset
def population() -> int:
    return 8_100_000_000


@dg.asset
def population_words(population: int) -> str:
    with open({str(marker)!r}, "w") as f:
        f.write(sys.executable)
    return humanize.intword(population)


defs = dg.Definitions(assets=[population, population_words])
"""


def test_dropped_file_loads_and_runs_in_its_own_environment(
    service: Service, tmp_path: Path, state_dir: Path
) -> None:
    assert importlib.util.find_spec("humanize") is None, "the runner's env must not have it"
    marker = tmp_path / "ran-with.txt"
    drop(service.code_dir / "tally.py", pipeline(marker))

    service.wait_loaded("tally")
    assert service.asset_keys("tally") == ["population", "population_words"]

    run_id = service.materialize_all("tally")
    status = service.wait_run(run_id)
    assert status == "SUCCESS", service.run_failure_text(run_id)
    executable = Path(marker.read_text())
    assert executable.is_relative_to(state_dir / "envs"), executable


def test_subfolder_file_imports_its_sibling_helper(service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "ran-with.txt"
    folder = service.code_dir / "team_a"
    drop(folder / "helpers.py", "def greet(name):\n    return f'hello {name}'\n")
    drop(
        folder / "report.py", pipeline(marker, extra="from helpers import greet\nassert greet('x')")
    )

    service.wait_loaded("team_a.report")
    run_id = service.materialize_all("team_a.report")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    assert "helpers" not in service.locations()  # a helper module is not a location


def test_odd_names_load_and_noise_is_ignored(service: Service, tmp_path: Path) -> None:
    noise = {
        ".hidden.py": pipeline(tmp_path / "x"),
        "notes.txt": pipeline(tmp_path / "x"),
        "backup.py~": pipeline(tmp_path / "x"),
        ".#lock.py": pipeline(tmp_path / "x"),
        "__pycache__/cached.py": pipeline(tmp_path / "x"),
    }
    for relpath, text in noise.items():
        drop(service.code_dir / relpath, text)
    drop(service.code_dir / "sales report (v2).py", pipeline(tmp_path / "marker"))

    name = location_name("sales report (v2).py")
    assert name.startswith("sales_report__v2_-")
    service.wait_loaded(name)
    assert service.asset_keys(name) == ["population", "population_words"]
    names = set(service.locations())
    assert names == {"tally", "team_a.report", name}, names


def test_file_without_dagster_gets_the_runners_dagster(service: Service, tmp_path: Path) -> None:
    drop(service.code_dir / "plain.py", pipeline(tmp_path / "marker", deps='["humanize>=4"]'))

    service.wait_loaded("plain")
    assert re.search(r"building env \w+ for plain \(adding dagster==[\d.]+", service.log_text())


def test_deleted_file_disappears_and_its_server_stops(service: Service) -> None:
    pid = service.server_pids("tally")[-1]
    assert psutil.pid_exists(pid)
    (service.code_dir / "tally.py").unlink()

    wait_for("tally to leave the workspace", lambda: "tally" not in service.locations())
    wait_for(f"server pid {pid} to exit", lambda: not alive(pid), timeout=60)
    assert "team_a.report" in service.locations()  # the others are untouched


def test_shipped_examples_load(service: Service) -> None:
    for example in (ROOT / "share" / "code_location").glob("*.py"):
        shutil.copy(example, service.code_dir / example.name)
    for name in ("hello_assets", "word_stats"):
        service.wait_loaded(name)
    data = service.graphql(
        """{ repositoryOrError(repositorySelector: {repositoryLocationName: "word_stats",
             repositoryName: "__repository__"}) { ... on Repository {
             sensors { name } schedules { name } } } }"""
    )
    assert [s["name"] for s in data["repositoryOrError"]["sensors"]] == ["hourly_check"]
    run_id = service.materialize_all("word_stats")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)


def test_ctrl_c_stops_everything_within_15s(service: Service) -> None:
    started_processes = service.descendants()
    assert len(started_processes) >= 5  # webserver, daemon, runner and code servers

    took = service.stop(signal.SIGINT)

    assert service.proc.returncode == 0, service.log_text()[-3000:]
    assert took < 15, f"stopping took {took:.1f}s"
    assert service.leftovers() == []
