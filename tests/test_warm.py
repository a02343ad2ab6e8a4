"""Warm starts, with real processes: servers forked from a template per environment behave as
cold-started ones do, and a template that dies or cannot be used costs nothing but speed."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.base import process
from runner.servers import server, warm
from tests.service import Service, alive, asset_file, drop, wait_for, warm_up

#: A file that writes, as it is imported, what its process looks like to it.
PROBE = """\
import json, os, signal, sys
import dagster as dg

def _merge_offered():
    try:
        with open("/proc/self/ksm_stat") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:  # a kernel without KSM
        return None
    merge_any = fields.get("ksm_merge_any")  # shown since Linux 6.7
    return None if merge_any is None else merge_any.strip() == "yes"

def _handler(number):
    h = signal.getsignal(number)
    return h if isinstance(h, (int, type(None))) else getattr(h, "__name__", repr(h))

with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump({
        "env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv, "path": sys.path,
        "signals": {s.name: str(_handler(s)) for s in signal.Signals
                    if s not in (signal.SIGKILL, signal.SIGSTOP)},
        "mask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "session_leader": os.getsid(0) == os.getpid() == os.getpgid(0),
        "stdin": os.readlink("/proc/self/fd/0"), "umask": os.umask(0o022),
        "flags": repr(sys.flags), "main": sys.modules["__main__"].__file__,
        "executable": sys.executable, "modules_of_stub": "stub" in sys.modules,
        "merge": _merge_offered(),
    }, f)

@dg.asset
def probe() -> int:
    return 1

defs = dg.Definitions(assets=[probe])
"""


def _probe(tmp_path: Path, name: str, launch: server.Launch | None) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "probe.py").write_text(PROBE)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "PROBE_OUT": str(out),
        "DAGSTER_HOME": str(tmp_path),
    }
    srv = server.start(
        location="probe",
        python=Path(sys.executable),
        file=code / "probe.py",
        host="127.0.0.1",
        env=env,
        workdir=tmp_path / "work",
        sidecars=tmp_path / "servers",
        launch=launch,
    )
    try:
        assert srv.wait_ready(timeout=120) is None
        seen = json.loads(out.read_text())
    finally:
        srv.stop(grace=10)
    for key in ("RUNNER_SERVER",):  # per server
        seen["env"].pop(key)
    seen["argv"] = [a for a in seen["argv"] if not a.startswith("probe-") and not a.isdigit()]
    seen["start"] = srv.start
    return seen


@pytest.mark.slow
def test_a_forked_server_sees_what_a_cold_one_sees(tmp_path: Path) -> None:
    """Environment, working directory, arguments, signal dispositions and mask, session,
    stdin: a server forked from a template gets exactly what a cold-started one gets."""
    templates = warm.Templates(os.environ, changed=lambda: None)

    def launch(request: server.Request) -> Any:
        return wait_for("the template", lambda: _no_wait(templates, request))

    try:
        cold = _probe(tmp_path, "cold", None)
        warm_ = _probe(tmp_path, "warm", launch)
        again = _probe(tmp_path, "again", launch)
    finally:
        templates.shutdown()
    starts = (cold.pop("start"), warm_.pop("start"), again.pop("start"))
    assert starts == ("cold", "warm", "warm")
    merge = (cold.pop("merge"), warm_.pop("merge"), again.pop("merge"))
    # A forked server's pages are offered for same-page merging; a cold one's are not.
    assert merge in ((False, True, True), (None, None, None))
    for seen in (cold, warm_, again):
        seen["env"].pop("PROBE_OUT")
        # The one difference: a template starts with -S, its child runs site itself.
        seen["flags"] = seen["flags"].replace("no_site=1", "no_site=0")
    names = {*cold["env"], *warm_["env"]}
    differing = {k for k in names if cold["env"].get(k) != warm_["env"].get(k)}
    assert {k: (cold["env"].get(k), warm_["env"].get(k)) for k in differing} == {}
    assert warm_ == cold
    assert again == cold  # the second child of the same template too
    assert cold["session_leader"] and cold["stdin"] == "/dev/null"
    assert not cold["modules_of_stub"]


def _no_wait(templates: warm.Templates, request: server.Request) -> Any:
    """A warm start, or None: the template is starting (the environment's first start, cold
    meanwhile, is stopped here)."""
    try:
        launched = templates.launch(Path(sys.executable), request)
    except warm.NotReady:
        return None
    if launched.how == f"cold: {warm.FIRST_START}":
        process.stop(launched.proc, name="the first, cold, start")
        return None
    return launched


def _request(tmp_path: Path, argv: list[str], env: dict[str, str]) -> server.Request:
    folder = tmp_path / "servers" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    return server.Request(argv, env, tmp_path, None, server.Sidecar(folder))


@pytest.mark.slow
def test_settings_that_put_code_on_the_path_start_cold(tmp_path: Path) -> None:
    """Code on PYTHONPATH (a sitecustomize that starts a thread) would run in the template
    every location of the environment shares: such a location starts cold, and says so,
    while its environment's other locations fork from a template that never ran it."""
    (tmp_path / "threads").mkdir()
    (tmp_path / "threads" / "sitecustomize.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='site-timer',\n"
        "                 daemon=True).start()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "threads")}
    templates = warm.Templates(os.environ, changed=lambda: None)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    try:
        proc, how, _ = templates.launch(Path(sys.executable), _request(tmp_path, argv, env))
        assert how.startswith("cold: its settings set PYTHONPATH, which would load code")
        assert templates.all() == []  # no template was started for it
        proc.kill()
        proc.wait()
        plain = _request(tmp_path, argv, dict(os.environ))
        proc2 = wait_for("a template", lambda: _no_wait(templates, plain))
        assert proc2[1] == "warm"
        (template,) = templates.all()
        threads = psutil.Process(template.pid).num_threads()
        assert threads == 1  # the site-timer thread never ran in it
        proc2[0].send_signal(signal.SIGKILL)
        assert proc2[0].wait(timeout=10) == -signal.SIGKILL
    finally:
        templates.shutdown()


@pytest.mark.slow
def test_a_template_that_keeps_dying_while_starting_is_given_up(tmp_path: Path) -> None:
    templates = warm.Templates(os.environ, changed=lambda: None)
    argv = [sys.executable, "-c", "pass"]
    env = {**os.environ}
    try:
        # The first start is cold (and does not wait), later ones wait for a template.
        proc, how, _ = templates.launch(Path(sys.executable), _request(tmp_path, argv, env))
        assert how == f"cold: {warm.FIRST_START}" and proc.wait(timeout=30) == 0
        for attempt in range(warm.BOOT_ATTEMPTS):
            if attempt:
                with pytest.raises(warm.NotReady):
                    templates.launch(Path(sys.executable), _request(tmp_path, argv, env))
            (template,) = templates.all()
            template.kill()
            wait_for("the template to end", lambda t=template: t.state == "ended")
        proc, how, _ = templates.launch(Path(sys.executable), _request(tmp_path, argv, env))
        ended = f"cold: its template ended {warm.BOOT_ATTEMPTS} times while starting"
        assert how.startswith(ended)
        assert "killed by SIGKILL" in how
        assert proc.wait(timeout=30) == 0
    finally:
        templates.shutdown()


# -- the whole service ---------------------------------------------------------------------


def status_rows(service: Service) -> dict[str, dict[str, Any]]:
    data = json.loads((service.share / "dagster_home" / ".runner-status.json").read_text())
    return {row["location"]: row for row in data["files"]}


def serving_pid(service: Service, name: str, *, other_than: int | None = None) -> int:
    def pid() -> int | None:
        row = status_rows(service).get(name, {})
        ok = row.get("state") == "serving" and row.get("pid") not in (None, other_than)
        return row["pid"] if ok else None

    return wait_for(f"{name} serving", pid, timeout=180)


def template_of(pid: int) -> psutil.Process:
    parent = psutil.Process(pid).parent()
    assert parent is not None and title(parent).startswith("dagster-code-runner: template ")
    return parent


def title(proc: psutil.Process) -> str:
    """What ``ps`` shows for it (its title pads its command line with NULs)."""
    return " ".join(part for part in proc.cmdline() if part)


@pytest.mark.slow
def test_a_warm_started_location_serves_runs_and_reloads(service: Service) -> None:
    warm_up(service)
    drop(service.code_dir / "helper_names.py", "NAMES = ['first', 'second']\n")
    drop(
        service.code_dir / "warm_a.py",
        asset_file(["alpha"])
        .replace(
            "import dagster as dg\n",
            "import dagster as dg\nfrom helper_names import NAMES\n",
        )
        .replace(
            "defs = dg.Definitions(assets=[alpha])",
            (
                "def _make(name):\n    @dg.asset(name=name)\n"
                "    def _a() -> int:\n        return 1\n"
                "    return _a\n\ndefs = dg.Definitions(assets=[alpha, *map(_make, NAMES)])"
            ),
        ),
    )
    service.wait_loaded("warm_a")
    pid = serving_pid(service, "warm_a")
    assert status_rows(service)["warm_a"]["start"] == "warm"
    template = template_of(pid)
    # ps, top and htop tell the servers and the templates apart, by location
    assert re.fullmatch(r"dagster-code-runner: server warm_a gen \d+", title(psutil.Process(pid)))
    assert psutil.Process(pid).name().startswith("server warm_a")  # top: 15 bytes
    assert template.name().startswith("template ")
    assert os.getsid(pid) == pid  # a session of its own, as a cold server
    assert service.asset_keys("warm_a") == ["alpha", "first", "second"]

    run_id = service.materialize_all("warm_a")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)

    # An edit that removes an asset, and a helper module changed: both are gone in the child.
    drop(service.code_dir / "helper_names.py", "NAMES = ['first']\n")
    text = (service.code_dir / "warm_a.py").read_text()
    drop(service.code_dir / "warm_a.py", text + "\n# edited\n")
    wait_for("the removed asset gone", lambda: service.asset_keys("warm_a") == ["alpha", "first"])
    new_pid = serving_pid(service, "warm_a", other_than=pid)
    assert template_of(new_pid).pid == template.pid  # the same template forked it
    wait_for("the old server stopped", lambda: not alive(pid))


@pytest.mark.slow
def test_a_killed_server_restarts_and_a_killed_template_is_replaced(service: Service) -> None:
    warm_up(service)
    drop(service.code_dir / "warm_b.py", asset_file(["beta"]))
    service.wait_loaded("warm_b")
    pid = serving_pid(service, "warm_b")
    template = template_of(pid)

    os.kill(pid, signal.SIGKILL)
    new_pid = serving_pid(service, "warm_b", other_than=pid)
    assert "killed by SIGKILL" in service.log_text()
    assert status_rows(service)["warm_b"]["start"] == "warm"
    assert template_of(new_pid).pid == template.pid

    # The template dies: its servers serve on, and the next start has a new template.
    template.kill()
    template.wait(timeout=10)
    drop(service.code_dir / "warm_c.py", asset_file(["gamma"]))
    service.wait_loaded("warm_c")
    c_pid = serving_pid(service, "warm_c")
    assert template_of(c_pid).pid != template.pid
    assert status_rows(service)["warm_c"]["start"] == "warm"
    assert alive(new_pid) and service.asset_keys("warm_b") == ["beta"]

    # A server whose template is gone can still be stopped, and a new version starts warm.
    drop(service.code_dir / "warm_b.py", asset_file(["beta", "delta"]))
    wait_for("the edit", lambda: service.asset_keys("warm_b") == ["beta", "delta"])
    wait_for("the orphan stopped", lambda: not alive(new_pid))


@pytest.mark.slow
def test_a_location_that_cannot_use_a_template_starts_cold(
    service: Service, tmp_path: Path
) -> None:
    """A location whose settings put a sitecustomize that starts a thread on its path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='site-timer',\n"
        "                 daemon=True).start()\n"
    )
    (service.code_dir / "warm_cold.env").write_text(f"PYTHONPATH={site}\n")
    drop(service.code_dir / "warm_cold.py", asset_file(["epsilon"]))
    service.wait_loaded("warm_cold")
    pid = serving_pid(service, "warm_cold")
    start = status_rows(service)["warm_cold"]["start"]
    assert start.startswith("cold: its settings set PYTHONPATH"), start
    assert "template" not in title(psutil.Process(pid).parent())
    cold = title(psutil.Process(pid))
    assert re.fullmatch(r"dagster-code-runner: server warm_cold gen \d+", cold), cold
    run_id = service.materialize_all("warm_cold")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)


@pytest.mark.slow
def test_starts_that_wait_together_all_wait_for_the_template(tmp_path: Path) -> None:
    """Where other starts wait for the same environment, its first start does not start cold
    beside the template (a second import of Dagster on the same cores): it waits, and forks."""
    templates = warm.Templates(os.environ, changed=lambda: None)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    env = dict(os.environ)
    try:
        with pytest.raises(warm.NotReady):
            templates.launch(Path(sys.executable), _request(tmp_path, argv, env), alone=False)
        assert len(templates.all()) == 1  # started by that first start, which did not go cold
        launched = wait_for(
            "a warm start",
            lambda: _no_wait(templates, _request(tmp_path, argv, env)),
        )
        assert launched.how == "warm"
        launched.proc.send_signal(signal.SIGKILL)
        assert launched.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        templates.shutdown()
