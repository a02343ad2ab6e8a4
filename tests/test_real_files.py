"""The files real teams write, on the real service: other Pythons, their own settings and
secrets, scripts that are not locations, retries from the UI, files without Definitions,
runs that write, and a quiet log while files stay broken."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uv

from runner.envs import pythons
from tests.needs import missing
from tests.service import Service, drop, wait_for

pytestmark = pytest.mark.slow

SERVICE_ENV = {
    "RUNNER_SETTINGS_DIR": "{tmp}/settings",
    "RUNNER_PASS_ENV": "TEAM_*",
    "TEAM_REGION": "eu-west",
    "SERVICE_ONLY_SECRET": "service-secret-9d1f",
    "RUNNER_START_TIMEOUT": "60",
}


def script(body: str, *, deps: str = '["dagster"]', python: str = ">=3.11", meta: str = "") -> str:
    return (
        f'# /// script\n# requires-python = "{python}"\n# dependencies = {deps}\n{meta}'
        f"# ///\nimport dagster as dg\n\n{body}\n"
    )


def status_rows(service: Service) -> dict[str, dict]:
    data = json.loads((service.share / "dagster_home" / ".runner-status.json").read_text())
    return {row["file"]: row for row in data["files"]}


def status_text(service: Service) -> str:
    return (service.share / "dagster_home" / ".runner-status.json").read_text()


def reload_location(service: Service, name: str) -> None:
    """The UI's Reload button on one location."""
    data = service.graphql(
        """mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
             __typename } }""",
        {"name": name},
    )
    assert data["reloadRepositoryLocation"]["__typename"] == "WorkspaceLocationEntry", data


def find_python(version: str) -> Path:
    """An installed Python ``version`` the service can build with: as root, one the
    locations' users (users of their own) can run."""
    others = os.geteuid() == 0
    path = pythons.search_path(os.environ, for_others=others)
    env = {**os.environ, "PATH": path, "UV_PYTHON_DOWNLOADS": "never"}
    found = subprocess.run(
        [uv.find_uv_bin(), "python", "find", version], env=env, capture_output=True, text=True
    )
    if found.returncode != 0:
        who = " that every user can run (pyenv's below /root: `chmod o+x /root`)" if others else ""
        missing(f"needs Python {version}{who} where uv finds it (`uv python install {version}`)")
    return Path(found.stdout.strip())


# --- any Python a file asks for -----------------------------------------------------------


def test_a_file_needing_python_3_13_runs_on_it_beside_a_3_11_file(
    service: Service, tmp_path: Path
) -> None:
    find_python("3.13")
    markers = {v: tmp_path / f"ran-{v}.txt" for v in ("3.13", "3.11")}
    # PEP 696 type parameter defaults: a SyntaxError before 3.13.
    new = f"""import sys

class Box[T = int]:
    pass

@dg.asset
def modern() -> str:
    open({str(markers["3.13"])!r}, "w").write(f"{{sys.version_info[0]}}.{{sys.version_info[1]}}")
    return "ok"

defs = dg.Definitions(assets=[modern])"""
    old = f"""import sys

@dg.asset
def classic() -> str:
    open({str(markers["3.11"])!r}, "w").write(f"{{sys.version_info[0]}}.{{sys.version_info[1]}}")
    return "ok"

defs = dg.Definitions(assets=[classic])"""
    drop(service.code_dir / "modern.py", script(new, python=">=3.13"))
    drop(service.code_dir / "classic.py", script(old, python="==3.11.*"))
    for name in ("modern", "classic"):
        service.wait_loaded(name, timeout=400)
        run_id = service.materialize_all(name)
        assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    assert markers["3.13"].read_text() == "3.13"
    assert markers["3.11"].read_text() == "3.11"


def test_a_python_that_is_not_here_is_one_clean_paragraph(service: Service) -> None:
    drop(service.code_dir / "future.py", script("x = 1", python=">=3.99"))
    message = service.wait_error("future", "requires-python", timeout=120)
    assert "no Python satisfying requires-python = '>=3.99' is installed here" in message
    assert "3.11" in message  # the versions there are
    assert "UV_PYTHON_DOWNLOADS=never" in message
    assert "Failed to inspect" not in message and "cause:" not in message
    (service.code_dir / "future.py").unlink()


# --- settings and secrets per location ----------------------------------------------------


def reads_env(marker: Path, asset: str) -> str:
    """A file whose asset writes the variables it sees (and a relative file) when it runs."""
    return f"""import json, os

@dg.asset
def {asset}() -> str:
    wanted = ["TEAM_SHARED", "API_TOKEN", "DB_PASSWORD", "TEAM_REGION", "SERVICE_ONLY_SECRET"]
    open({str(marker)!r}, "w").write(json.dumps({{k: os.environ.get(k) for k in wanted}}))
    with open("orders.csv", "w") as f:  # relative: the location's scratch folder
        f.write("id,amount\\n1,10\\n")
    return "ok"

defs = dg.Definitions(assets=[{asset}])"""


@pytest.fixture(scope="module")
def settings_dir(service: Service) -> Path:
    return Path(service.env["RUNNER_SETTINGS_DIR"])


def test_a_file_reads_its_own_secret_and_its_neighbour_cannot(
    service: Service, settings_dir: Path, tmp_path: Path, state_dir: Path
) -> None:
    team = service.code_dir / "team"
    drop(team / ".env", "TEAM_SHARED=for everyone in team/\n")
    drop(team / "billing.env", 'API_TOKEN="tok-3f9a value with spaces"\n')
    drop(settings_dir / "team" / "billing.env", "DB_PASSWORD=hunter2-8c1e\n")
    seen = {name: tmp_path / f"{name}.json" for name in ("billing", "shipping")}
    drop(team / "billing.py", script(reads_env(seen["billing"], "invoices")))
    drop(team / "shipping.py", script(reads_env(seen["shipping"], "parcels")))

    for name in ("billing", "shipping"):
        service.wait_loaded(f"team.{name}")
        run_id = service.materialize_all(f"team.{name}")
        assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    billing, shipping = (json.loads(seen[n].read_text()) for n in ("billing", "shipping"))
    assert billing == {
        "TEAM_SHARED": "for everyone in team/",
        "API_TOKEN": "tok-3f9a value with spaces",
        "DB_PASSWORD": "hunter2-8c1e",
        "TEAM_REGION": "eu-west",  # RUNNER_PASS_ENV=TEAM_*
        "SERVICE_ONLY_SECRET": None,  # the service's own environment does not leak
    }
    assert shipping["API_TOKEN"] is None and shipping["DB_PASSWORD"] is None
    assert shipping["TEAM_SHARED"] == "for everyone in team/"

    # Runs write into the location's scratch folder, not the share.
    assert (state_dir / "work" / "team.billing" / "orders.csv").exists()
    assert not list(service.code_dir.rglob("orders.csv"))

    # Names are shown; values never are.
    row = status_rows(service)["team/billing.py"]
    assert row["variables"] == ["API_TOKEN", "DB_PASSWORD", "TEAM_SHARED"]
    assert row["settings"][-1].endswith("team/billing.env")
    for where in (
        service.log_text(),
        status_text(service),
        (service.share / "dagster_home" / "workspace.yaml").read_text(),
    ):
        for value in ("tok-3f9a", "hunter2-8c1e", "service-secret-9d1f"):
            assert value not in where


def test_a_settings_edit_reloads_only_the_locations_it_applies_to(
    service: Service, settings_dir: Path
) -> None:
    billing, shipping = service.server_pids("team.billing"), service.server_pids("team.shipping")
    drop(settings_dir / "team" / "billing.env", "DB_PASSWORD=rotated-77aa\n")
    wait_for("billing to restart", lambda: len(service.server_pids("team.billing")) > len(billing))
    service.wait_loaded("team.billing")
    assert service.server_pids("team.shipping") == shipping

    drop(service.code_dir / "team" / "billing.env", "API_TOKEN=ok\nthis line is not a setting\n")
    message = service.wait_error("team.billing~new-version-failed", "billing.env, line 2")
    assert "rotated-77aa" not in message and "ok" not in message.split("line 2")[1][:5]
    assert service.locations()["team.billing"]["loadStatus"] == "LOADED"  # last good serves
    drop(service.code_dir / "team" / "billing.env", "API_TOKEN=ok\n")
    wait_for(
        "the failure to go",
        lambda: "team.billing~new-version-failed" not in service.locations(),
    )


# --- scripts that are not locations -------------------------------------------------------


def test_an_ignore_file_leaves_utility_scripts_alone(service: Service) -> None:
    cli = '# /// script\n# dependencies = ["click"]\n# ///\nimport click\n'
    drop(service.code_dir / ".runnerignore", "# utilities, not pipelines\ntools/\ncli_*.py\n")
    drop(service.code_dir / "tools" / "migrate.py", cli)
    drop(service.code_dir / "cli_export.py", cli)
    drop(service.code_dir / "kept.py", script("@dg.asset\ndef kept() -> int:\n    return 1\n"))
    service.wait_loaded("kept")
    rows = wait_for("the ignored rows", lambda: "cli_export.py" in status_rows(service))
    rows = status_rows(service)
    assert rows["cli_export.py"]["state"] == "ignored"
    assert rows["cli_export.py"]["ignored_by"] == ".runnerignore line 3: cli_*.py"
    assert rows["tools/"]["ignored_by"] == ".runnerignore line 2: tools/"
    assert not {"cli_export", "tools.migrate"} & set(service.locations())

    # Re-read when it changes: without the pattern, the script is a location again.
    drop(service.code_dir / ".runnerignore", "tools/\n")
    service.wait_error("cli_export", "No Definitions", timeout=240)
    (service.code_dir / "cli_export.py").unlink()


# --- files without Definitions ------------------------------------------------------------


def test_a_file_without_definitions_warns_of_what_dagster_dropped(service: Service) -> None:
    body = """@dg.asset
def loose() -> int:
    return 1

nightly = dg.define_asset_job("nightly", selection="*")
every_day = dg.ScheduleDefinition(job=nightly, cron_schedule="0 3 * * *")

@dg.sensor(job=nightly)
def on_file(context):
    return None
"""
    drop(service.code_dir / "loose.py", script(body))
    service.wait_loaded("loose")
    assert service.asset_keys("loose") == ["loose"]  # what Dagster finds still loads
    expected = "ignored job nightly, schedule every_day, sensor on_file"
    row = wait_for("the warning", lambda: status_rows(service)["loose.py"].get("warning"))
    assert expected in row
    assert expected in service.log_text()
    data = service.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name displayMetadata"
        " { key value } } } } }"
    )
    entry = next(e for e in data["workspaceOrError"]["locationEntries"] if e["name"] == "loose")
    assert any(m["key"] == "warning" and expected in m["value"] for m in entry["displayMetadata"])


# --- retry --------------------------------------------------------------------------------


def wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel of ``name`` in a PEP 503 layout under ``folder``."""
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    digest = lambda t: base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest())  # noqa: E731
    record = [f"{p},sha256={digest(t).rstrip(b'=').decode()},{len(t)}" for p, t in files.items()]
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(out / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)


@pytest.fixture
def team_index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A package index of the team's own, on loopback: (its URL, its folder)."""
    root = tmp_path / "simple"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", root
    finally:
        server.shutdown()
        server.server_close()


def test_a_package_published_after_the_failure_is_picked_up_by_reload(
    service: Service, team_index: tuple[str, Path]
) -> None:
    url, folder = team_index
    meta = (
        f'# [[tool.uv.index]]\n# name = "team"\n# url = "{url}"\n# explicit = true\n'
        '# [tool.uv.sources]\n# teamlib = { index = "team" }\n'
    )
    body = "import teamlib\n\n@dg.asset\ndef uses_teamlib() -> str:\n    return teamlib.VERSION\n"
    drop(service.code_dir / "waits.py", script(body, deps='["dagster", "teamlib"]', meta=meta))
    message = service.wait_error("waits", "teamlib", timeout=180)
    assert "retrying in" not in message  # the index answered: the file asks for what is not there
    wait_for("status to say failed", lambda: status_rows(service)["waits.py"]["state"] == "failed")

    wheel(folder, "teamlib", "0.1")  # published a minute later
    reload_location(service, "waits")
    service.wait_loaded("waits", timeout=180)
    assert "waits: retry asked from the UI" in service.log_text()


def test_reload_of_a_serving_location_restarts_its_server(service: Service) -> None:
    before = service.server_pids("kept")
    reload_location(service, "kept")
    wait_for("a new server", lambda: len(service.server_pids("kept")) > len(before), timeout=60)
    service.wait_loaded("kept")
    assert "kept: restart asked from the UI" in service.log_text()


def test_a_git_host_that_is_down_is_retrying_whatever_the_wording(service: Service) -> None:
    as_url = script("x = 1", deps='["dagster", "teamtool @ git+https://git.example.invalid/t.git"]')
    as_source = script(
        "x = 1",
        deps='["dagster", "teamtool"]',
        meta='# [tool.uv.sources]\n# teamtool = { git = "https://git.example.invalid/t.git" }\n',
    )
    drop(service.code_dir / "git_url.py", as_url)
    drop(service.code_dir / "git_source.py", as_source)
    for name in ("git_url", "git_source"):
        message = service.wait_error(name, "retrying in", timeout=180)
        assert "git.example.invalid" in message
        wait_for(
            f"{name} retrying",
            lambda n=name: status_rows(service)[f"{n}.py"]["state"] == "retrying",
        )
    for name in ("git_url", "git_source"):
        (service.code_dir / f"{name}.py").unlink()


# --- quiet output -------------------------------------------------------------------------


def test_broken_files_are_reported_once_not_at_every_publish(service: Service) -> None:
    for i in range(10):
        drop(service.code_dir / f"broken_{i}.py", script(f"def broken_{i}(:\n    pass"))
    for i in range(10):
        service.wait_error(f"broken_{i}", "SyntaxError")
    wait_for(
        "status to show them",
        lambda: all(
            status_rows(service).get(f"broken_{i}.py", {}).get("state") == "failed"
            for i in range(10)
        ),
    )
    row = status_rows(service)["broken_3.py"]
    assert not row["serving"]  # never loaded: no "last good serving"
    before = service.log_text().count("broken_3")

    for n in range(3):  # three publishes that change other locations
        churn = script("@dg.asset\ndef c() -> int:\n    return 1\n")
        drop(service.code_dir / f"churn_{n}.py", churn)
        service.wait_loaded(f"churn_{n}")
    assert service.log_text().count("broken_3") == before, "a broken file was reloaded again"
    for i in range(10):
        (service.code_dir / f"broken_{i}.py").unlink()
    for n in range(3):
        (service.code_dir / f"churn_{n}.py").unlink()


# --- where runs write ---------------------------------------------------------------------


@pytest.fixture
def read_only_folder(service: Service, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a folder to fill, where it shows read-only in the code folder): a read-only bind
    mount, as a share mounted ``ro`` is."""
    source, target = tmp_path / "ro-source", service.code_dir / "readonly"
    source.mkdir()
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if mounted.returncode == 0:
        mounted = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(target)], capture_output=True
        )
    if mounted.returncode != 0:
        subprocess.run(["umount", str(target)], capture_output=True)
        target.rmdir()
        why = f"needs root to make a read-only bind mount ({mounted.stderr.decode().strip()})"
        missing(why)
    try:
        yield source, target
    finally:
        subprocess.run(["umount", str(target)], check=True)
        target.rmdir()


def test_a_run_writing_a_relative_file_works_on_a_read_only_share(
    service: Service, read_only_folder: tuple[Path, Path], state_dir: Path, tmp_path: Path
) -> None:
    source, target = read_only_folder
    drop(source / "helpers.py", "def rows() -> str:\n    return 'id,amount\\n1,10\\n'\n")
    body = """from helpers import rows

@dg.asset
def orders() -> str:
    with open("orders.csv", "w") as f:
        f.write(rows())
    return "ok"

defs = dg.Definitions(assets=[orders])"""
    drop(source / "orders.py", script(body))
    with pytest.raises(OSError):
        (target / "probe.txt").write_text("x")  # the share really is read-only
    service.wait_loaded("readonly.orders")
    run_id = service.materialize_all("readonly.orders")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    written = state_dir / "work" / "readonly.orders" / "orders.csv"
    assert written.read_text() == "id,amount\n1,10\n"
    (source / "orders.py").unlink()
    wait_for("the location to go", lambda: "readonly.orders" not in service.locations())
