"""Edits, failures and crashes, for real: what users see in the UI while the share changes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.service import Service, alive, drop, wait_for

pytestmark = pytest.mark.slow

SERVICE_ENV = {"RUNNER_START_TIMEOUT": "20"}


def script(body: str, *, deps: str = '["dagster"]', extra_meta: str = "") -> str:
    return (
        f'# /// script\n# requires-python = ">=3.11"\n# dependencies = {deps}\n{extra_meta}'
        f"# ///\nimport dagster as dg\n\n{body}\n"
    )


def assets(*names: str, sleep_file: Path | None = None) -> str:
    """A Definitions with one trivial asset per name; the first waits for ``sleep_file``."""
    lines = ["import os, time", ""]
    for i, name in enumerate(names):
        wait = ""
        if i == 0 and sleep_file is not None:
            wait = f"    while not os.path.exists({str(sleep_file)!r}):\n        time.sleep(0.1)\n"
        lines += ["@dg.asset", f"def {name}() -> int:", wait + "    return 1", ""]
    lines.append(f"defs = dg.Definitions(assets=[{', '.join(names)}])")
    return "\n".join(lines)


class Watcher:
    """Polls the location like an open UI page, counting answers where it was unavailable."""

    def __init__(self, service: Service, name: str) -> None:
        self.service, self.name = service, name
        self.queries = 0
        self.unavailable: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            entry = self.service.locations().get(self.name)
            self.queries += 1
            if entry is None or entry["loadStatus"] != "LOADED" or self.service.error_of(self.name):
                self.unavailable.append(repr(entry))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_code_edit_swaps_without_downtime(service: Service) -> None:
    path = service.code_dir / "swap.py"
    drop(path, script(assets("one")))
    service.wait_loaded("swap")
    first_pid = service.server_pids("swap")[-1]

    watcher = Watcher(service, "swap")
    drop(path, script(assets("one", "two")))  # an editor's save: temp file, then rename
    wait_for("the new asset", lambda: service.asset_keys("swap") == ["one", "two"])
    time.sleep(1)
    watcher.stop()

    assert watcher.queries > 5
    assert watcher.unavailable == []
    wait_for("the old generation to retire", lambda: not alive(first_pid), timeout=60)


def test_a_run_in_flight_survives_a_reload(service: Service, tmp_path: Path) -> None:
    release = tmp_path / "release"
    path = service.code_dir / "long_run.py"
    drop(path, script(assets("slow", sleep_file=release)))
    service.wait_loaded("long_run")
    run_id = service.materialize_all("long_run")
    wait_for("the run to start", lambda: service.run_status(run_id) == "STARTED", timeout=120)
    old_pid = service.server_pids("long_run")[-1]

    drop(path, script(assets("slow", "other", sleep_file=release)))
    wait_for("the new version", lambda: "other" in service.asset_keys("long_run"))
    assert alive(old_pid)  # the old generation waits for its run
    release.touch()

    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    wait_for("the old generation to exit after its run", lambda: not alive(old_pid), timeout=60)


def test_dependency_edit_builds_aside_and_collects_the_old_env(
    service: Service, state_dir: Path
) -> None:
    meta = "# [tool.test]\n# case = 'dependency-edit'\n"
    path = service.code_dir / "deps.py"
    drop(path, script(assets("plain"), extra_meta=meta))
    service.wait_loaded("deps")
    envs_before = {p.name for p in (state_dir / "envs").iterdir() if not p.name.startswith(".")}

    body = "import humanize\n\n" + assets("plain", "words")
    drop(path, script(body, deps='["dagster", "humanize"]', extra_meta=meta))
    wait_for("the new version", lambda: "words" in service.asset_keys("deps"), timeout=180)

    def old_env_removed() -> bool:
        now = {p.name for p in (state_dir / "envs").iterdir() if not p.name.startswith(".")}
        return bool(envs_before - now)

    wait_for("the unused environment to be removed", old_env_removed, timeout=60)
    assert "removing env" in service.log_text()


def test_a_slow_chunked_write_loads_once_without_errors(service: Service) -> None:
    text = script(assets("chunky"))
    path = service.code_dir / "chunked.py"
    watcher = Watcher(service, "chunked")
    with open(path, "w") as f:  # an SMB client writing in pieces
        for i in range(0, len(text), 40):
            f.write(text[i : i + 40])
            f.flush()
            time.sleep(0.3)
    service.wait_loaded("chunked")
    watcher.stop()

    log = service.log_text()
    assert log.count("starting chunked on ") == 1, log
    assert not [u for u in watcher.unavailable if "PythonError" in u]
    assert "chunked:" not in log  # no error was logged for a half-written file


def test_touch_does_not_reload(service: Service) -> None:
    pids = service.server_pids("swap")
    starts = service.log_text().count("starting swap on ")
    (service.code_dir / "swap.py").touch()
    # A file dropped after the touch has loaded: the touch has been scanned and its
    # stability window is over, so a reload it caused would have started by now.
    drop(service.code_dir / "after_touch.py", script(assets("after_touch")))
    service.wait_loaded("after_touch")
    assert service.server_pids("swap") == pids
    assert service.log_text().count("starting swap on ") == starts


def test_rename_moves_the_location(service: Service) -> None:
    (service.code_dir / "chunked.py").rename(service.code_dir / "renamed.py")
    service.wait_loaded("renamed")
    wait_for("the old name to go", lambda: "chunked" not in service.locations())


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad_toml", "# /// script\n# dependencies = [\n# ///\n", "is not valid TOML"),
        ("unknown_key", "# /// script\n# packages = []\n# ///\n", "unknown key(s)"),
        (
            "no_such_dep",
            script(assets("x"), deps='["dagster", "this-package-does-not-exist-4242"]'),
            "this-package-does-not-exist-4242",
        ),
        (
            "future_python",
            script(assets("x")).replace('">=3.11"', '">=3.99"'),
            "no Python satisfying requires-python = '>=3.99' is installed here",
        ),
        ("syntax_error", script("def broken(:\n    pass"), "SyntaxError"),
        ("import_error", script("import this_module_does_not_exist_4242"), "ModuleNotFoundError"),
        ("no_definitions", script("x = 1"), "No Definitions, RepositoryDefinition, Job"),
        ("hangs", script("import time\ntime.sleep(3600)"), "within 20s: does importing"),
    ],
)
def test_each_failure_is_shown_on_its_location(
    service: Service, name: str, text: str, expected: str
) -> None:
    drop(service.code_dir / f"{name}.py", text)
    message = service.wait_error(name, expected, timeout=240)
    assert f"{name}.py" in message or name in ("syntax_error", "import_error", "no_definitions")
    assert service.locations()["swap"]["loadStatus"] == "LOADED"  # others keep working
    assert service.error_of("swap") is None


def test_an_unreachable_index_is_said_and_retried(service: Service) -> None:
    meta = '# [tool.uv]\n# index-url = "http://127.0.0.1:9/simple"\n'
    text = script(assets("x"), deps='["dagster", "humanize-offline-4242"]', extra_meta=meta)
    drop(service.code_dir / "offline.py", text)
    message = service.wait_error("offline", "could not be reached", timeout=120)
    assert "retrying in" in message


def test_last_good_version_keeps_serving_and_the_failure_is_shown_beside_it(
    service: Service,
) -> None:
    path = service.code_dir / "good.py"
    drop(path, script(assets("a")))
    service.wait_loaded("good")
    good_pid = service.server_pids("good")[-1]

    drop(path, script(assets("a") + "\ndef broken(:\n    pass"))
    failure = service.wait_error("good~new-version-failed", "SyntaxError")
    assert "SyntaxError" in failure
    assert service.locations()["good"]["loadStatus"] == "LOADED"
    assert service.error_of("good") is None and alive(good_pid)

    drop(path, script(assets("a", "b")))
    wait_for("the fixed version", lambda: service.asset_keys("good") == ["a", "b"])
    wait_for(
        "the failure entry to go", lambda: "good~new-version-failed" not in service.locations()
    )


def test_a_killed_server_is_restarted_and_the_reason_logged(service: Service) -> None:
    pid = service.server_pids("swap")[-1]
    os.kill(pid, signal.SIGKILL)
    wait_for("a new server", lambda: service.server_pids("swap")[-1] != pid, timeout=60)
    service.wait_loaded("swap")
    assert f"code server (pid {pid}) killed by SIGKILL" in service.log_text()


def test_a_crash_loop_backs_off(service: Service) -> None:
    body = "import os, threading\nthreading.Timer(1.0, os._exit, args=[3]).start()\n" + assets("c")
    drop(service.code_dir / "crashy.py", script(body))
    wait_for(
        "three crashes",
        lambda: service.log_text().count("crashy: the code server") >= 3,
        timeout=120,
    )
    log = service.log_text()
    assert "exited with status 3; restarting in 1s (attempt 1)" in log
    assert "exited with status 3; restarting in 2s (attempt 2)" in log
    assert "exited with status 3; restarting in 4s (attempt 3)" in log
    (service.code_dir / "crashy.py").unlink()


def test_the_code_folder_is_never_written_to(service: Service) -> None:
    names = sorted(p.relative_to(service.code_dir).as_posix() for p in service.code_dir.rglob("*"))
    assert not [n for n in names if "__pycache__" in n or n.endswith((".lock", ".pyc"))], names


def test_editing_a_helper_module_reloads_the_locations_beside_it(service: Service) -> None:
    folder = service.code_dir / "team"
    drop(folder / "helpers.py", "VALUE = 1\n")
    drop(folder / "job.py", script("from helpers import VALUE\n\n" + assets("uses_helper")))
    service.wait_loaded("team.job")
    before = service.server_pids("team.job")
    other = service.server_pids("swap")

    drop(folder / "helpers.py", "VALUE = 2\n")
    wait_for("a reload", lambda: len(service.server_pids("team.job")) > len(before), timeout=60)
    assert service.server_pids("swap") == other  # locations elsewhere are left alone


def test_static_locations_are_merged_and_name_collisions_explained(
    service: Service, tmp_path: Path
) -> None:
    home = service.share / "dagster_home"
    (home / "classic_jobs.py").write_text(script(assets("classic_asset")).split("# ///\n", 1)[1])
    (home / "workspace.static.yaml").write_text(
        "load_from:\n  - python_file: {relative_path: classic_jobs.py, location_name: classic}\n"
    )
    service.wait_loaded("classic")
    assert service.asset_keys("classic") == ["classic_asset"]

    drop(service.code_dir / "classic.py", script(assets("dropped")))
    message = service.wait_error("classic~name-collision", "already used in workspace.static.yaml")
    assert "classic.py" in message
    assert service.asset_keys("classic") == ["classic_asset"]  # the static one is untouched

    (home / "workspace.static.yaml").write_text("load_from: []\n")
    wait_for(
        "the file to take the freed name", lambda: service.asset_keys("classic") == ["dropped"]
    )


def test_a_sensor_in_a_dropped_file_is_fired_by_the_daemon_and_its_run_succeeds(
    service: Service, tmp_path: Path
) -> None:
    marker = tmp_path / "sensor-run.txt"
    body = f"""import sys

@dg.asset
def sensed() -> int:
    open({str(marker)!r}, "w").write(sys.executable)
    return 1


sensed_job = dg.define_asset_job("sensed_job", selection=[sensed])


@dg.sensor(job=sensed_job, minimum_interval_seconds=5,
           default_status=dg.DefaultSensorStatus.RUNNING)
def once(context):
    return dg.RunRequest(run_key="once")


defs = dg.Definitions(assets=[sensed], jobs=[sensed_job], sensors=[once])
"""
    drop(service.code_dir / "sensing.py", script(body))
    service.wait_loaded("sensing")

    def sensor_run() -> str | None:
        data = service.graphql(
            """{ runsOrError(filter: {pipelineName: "sensed_job"}) {
                 ... on Runs { results { runId status tags { key value } } } } }"""
        )
        runs = data["runsOrError"]["results"]
        return runs[0]["status"] if runs else None

    status = wait_for(
        "the sensor's run to finish",
        lambda: sensor_run() in ("SUCCESS", "FAILURE") and sensor_run(),
        timeout=180,
    )
    assert status == "SUCCESS"
    assert "/envs/" in marker.read_text()  # it ran in the file's environment
