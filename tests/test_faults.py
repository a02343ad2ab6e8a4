"""Faults and bad input against the running service: each is shown where users look, once,
and harms nothing else."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import passable
from tests.service import Service, alive, asset_file, drop, running, wait_for, warm_up

pytestmark = pytest.mark.slow

SERVICE_ENV = {"RUNNER_START_TIMEOUT": "60", "RUNNER_NETWORK_TIMEOUT": "5"}


def test_a_huge_file_is_refused_without_reading_it(service: Service) -> None:
    drop(service.code_dir / "ok.py", asset_file(["ok"]))
    service.wait_loaded("ok")
    runner = next(p for p in psutil.Process(service.proc.pid).children() if "serve" in p.cmdline())
    big = service.code_dir / "big.py"
    with open(big, "wb") as f:  # 4 GiB, sparse: a PEP 723 block, then nothing
        f.write(asset_file(["big"]).encode())
        f.truncate(4 * 1024**3)
    huge_helper = service.code_dir / "dump.py"
    with open(huge_helper, "wb") as f:
        f.truncate(2 * 1024**3)
    message = service.wait_error("big", "at most 8 MiB", timeout=60)
    assert "4,096 MiB" in message
    assert runner.is_running() and runner.memory_info().rss < 1024**3
    assert "dump" not in service.locations()  # a large file without a block: not a location
    assert service.locations()["ok"]["loadStatus"] == "LOADED"
    big.unlink()
    huge_helper.unlink()


def test_windows_line_endings_and_a_byte_order_mark_load(service: Service) -> None:
    crlf = asset_file(["crlf"]).replace("\n", "\r\n")
    drop(service.code_dir / "windows.py", crlf)
    (service.code_dir / "bom.py").write_bytes(b"\xef\xbb\xbf" + asset_file(["bom"]).encode())
    service.wait_loaded("windows")
    service.wait_loaded("bom")
    assert service.asset_keys("windows") == ["crlf"]
    assert service.asset_keys("bom") == ["bom"]


def test_a_file_that_cannot_be_read_is_shown_once(service: Service) -> None:
    # Reading /proc/self/mem at offset 0 fails with EIO for any user, root included.
    (service.code_dir / "unreadable.py").symlink_to("/proc/self/mem")
    message = service.wait_error("unreadable", "cannot read the file", timeout=60)
    assert "Input/output error" in message
    said = service.log_text().count("unreadable.py: the runner cannot read the file")
    time.sleep(6)  # three rescans
    assert service.log_text().count("unreadable.py: the runner cannot read the file") == said
    assert service.log_text().count("runner: unreadable: unreadable.py: the runner") == 1
    (service.code_dir / "unreadable.py").unlink()


def test_a_file_name_cannot_forge_a_log_line(service: Service) -> None:
    forged = "x\n2099-01-01 00:00:00 ERROR runner: FORGED.py"
    drop(service.code_dir / forged, asset_file(["f"]))
    wait_for("the refusal", lambda: "contains a control character" in service.log_text())
    assert not re.search(r"(?m)^2099-01-01", service.log_text())
    (service.code_dir / forged).unlink()


def test_a_helper_named_like_a_package_does_not_break_its_neighbours(service: Service) -> None:
    drop(service.code_dir / "team" / "dagster.py", "RAISE = 1 / 0\n")
    drop(service.code_dir / "team" / "yaml.py", "RAISE = 1 / 0\n")
    drop(service.code_dir / "team" / "neighbour.py", asset_file(["n"]))
    service.wait_loaded("team.neighbour")
    run_id = service.materialize_all("team.neighbour")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)


ESCAPER = """import subprocess, sys

subprocess.Popen(
    [sys.executable, "-c", "import os, time\\nopen({pidfile!r}, 'w').write(str(os.getpid()))"
     "\\ntime.sleep(3600)"],
    start_new_session=True,  # setsid: out of the server's process group and session
)
"""


def escaper_file(pidfile: Path) -> str:
    """A location whose import starts a child in a session of its own (it writes its pid)."""
    head = "import dagster as dg\n"
    return asset_file(["e"]).replace(head, head + ESCAPER.format(pidfile=str(pidfile)))


def test_a_child_that_left_the_servers_session_goes_with_the_file(
    service: Service, tmp_path: Path
) -> None:
    pidfile = tmp_path / "escaped.pid"
    drop(service.code_dir / "escaper.py", escaper_file(pidfile))
    service.wait_loaded("escaper")
    pid = int(wait_for("the escaped child", lambda: pidfile.exists() and pidfile.read_text()))
    assert alive(pid) and os.getsid(pid) != os.getsid(service.server_pids("escaper")[-1])
    (service.code_dir / "escaper.py").unlink()
    wait_for("the escaped child to be stopped", lambda: not alive(pid), timeout=60)


def test_a_last_good_version_that_dies_is_restarted_and_the_failure_stays(
    service: Service,
) -> None:
    path = service.code_dir / "keeper.py"
    drop(path, asset_file(["kept"]))
    service.wait_loaded("keeper")
    drop(path, asset_file(["kept"]) + "\ndef broken(:\n")
    service.wait_error("keeper~new-version-failed", "SyntaxError")
    pid = service.server_pids("keeper")[-1]
    os.kill(pid, signal.SIGKILL)
    wait_for(
        "the last good version again",
        lambda: "the last good version again" in service.log_text(),
        timeout=60,
    )
    service.wait_loaded("keeper")
    assert service.asset_keys("keeper") == ["kept"]
    assert "SyntaxError" in (service.error_of("keeper~new-version-failed") or "")
    log = service.log_text()
    assert f"code server (pid {pid}) killed by SIGKILL;" in log  # by hand: no OOM guess
    assert "out-of-memory" not in log and "out of memory" not in log
    path.unlink()


def test_a_second_runner_on_the_share_waits_and_takes_over(tmp_path: Path, state_dir: Path) -> None:
    share = tmp_path / "share"
    pidfile = tmp_path / "escaped.pid"
    with running(share, state_dir, tmp_path / "first.log") as first:
        drop(first.code_dir / "shared.py", asset_file(["s"]))
        first.wait_loaded("shared")
        drop(first.code_dir / "escaper.py", escaper_file(pidfile))
        first.wait_loaded("escaper")
        escaped = int(
            wait_for("the escaped child", lambda: pidfile.exists() and pidfile.read_text())
        )
        with running(share, state_dir, tmp_path / "second.log") as second:
            wait_for("the standby line", lambda: "standby:" in second.log_text(), timeout=90)
            assert "runner pid" in second.log_text() and "serves this share" in second.log_text()
            time.sleep(5)
            assert "starting shared" not in second.log_text()  # only the owner serves
            # The standby's UI follows what the owner serves: a new file, an edit, a removal.
            drop(first.code_dir / "later.py", asset_file(["later"]))
            second.wait_loaded("later", timeout=120)
            drop(first.code_dir / "shared.py", asset_file(["s", "s2"]))
            wait_for(
                "the edit on the standby's UI", lambda: second.asset_keys("shared") == ["s", "s2"]
            )
            (first.code_dir / "later.py").unlink()
            wait_for("the removal on the standby's UI", lambda: "later" not in second.locations())
            assert "starting later" not in second.log_text()
            first.stop()
            assert not alive(escaped)  # the whole service's stop took it too
            # Its webserver still shows the first runner's entries until the takeover.
            wait_for("the takeover", lambda: "took over the share from" in second.log_text())
            wait_for(
                "its own server", lambda: "serving shared on " in second.log_text(), timeout=120
            )
            second.wait_loaded("shared", timeout=120)


def test_a_git_host_that_never_answers_fails_soon_and_is_named(service: Service) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    held: list[socket.socket] = []
    threading.Thread(
        target=lambda: held.extend(iter(lambda: silent.accept()[0], None)), daemon=True
    ).start()
    port = silent.getsockname()[1]
    text = asset_file(["g"]).replace(
        '["dagster"]', f'["dagster", "tool @ git+http://127.0.0.1:{port}/team/tool.git"]'
    )
    try:
        drop(service.code_dir / "silent_git.py", text)
        # RUNNER_NETWORK_TIMEOUT=5: well within the wait below, where uv alone took minutes.
        message = service.wait_error("silent_git", "retrying in", timeout=90)
        assert "127.0.0.1 could not be reached (timed out)" in message
        (service.code_dir / "silent_git.py").unlink()
    finally:
        silent.close()
        for conn in held:
            conn.close()


def test_a_file_name_of_250_bytes_loads_runs_and_keeps_its_full_name(service: Service) -> None:
    # 250 bytes, the longest a name gets on ext4 or SMB, two folders down: every name the
    # runner derives from it (scratch folder, outputs, last good copy) must still fit.
    stem = "r" * 247
    path = service.code_dir / "team_a" / "quarterly_reports" / f"{stem}.py"
    name = f"team_a.quarterly_reports.{stem}"
    drop(path, asset_file(["long"]))
    service.wait_loaded(name)
    run_id = service.materialize_all(name)
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    drop(path, asset_file(["long"]) + "\ndef broken(:\n")
    service.wait_error(f"{name}~new-version-failed", "SyntaxError")
    assert service.locations()[name]["loadStatus"] == "LOADED"  # the last good one serves
    assert "File name too long" not in service.log_text()
    path.unlink()
    wait_for("the location to go", lambda: name not in service.locations(), timeout=60)


FORKER = """import os, time

if os.fork() == 0:  # a child with no exec, in a session of its own, whose parent then ends
    os.setsid()
    if os.fork() == 0:
        open({pidfile!r}, "w").write(str(os.getpid()))
        time.sleep(3600)
    os._exit(0)
"""


def forker_file(pidfile: Path, asset: str) -> str:
    head = "import dagster as dg\n"
    return asset_file([asset]).replace(head, head + FORKER.format(pidfile=str(pidfile)))


def test_a_forked_servers_grandchildren_go_with_its_version_and_the_service(
    tmp_path: Path, state_dir: Path
) -> None:
    share = tmp_path / "share"
    with running(share, state_dir, tmp_path / "service.log") as service:
        warm_up(service)
        path = service.code_dir / "forker.py"
        first, second = tmp_path / "first.pid", tmp_path / "second.pid"
        drop(path, forker_file(first, "one"))
        service.wait_loaded("forker")
        server = psutil.Process(service.server_pids("forker")[-1])
        assert "dagster-code-runner: template" in " ".join(server.parent().cmdline()), "cold"
        old = int(wait_for("the first grandchild", lambda: first.exists() and first.read_text()))
        assert alive(old) and psutil.Process(old).ppid() != server.pid  # it left the tree
        drop(path, forker_file(second, "two"))
        wait_for("the new version", lambda: service.asset_keys("forker") == ["two"])
        new = int(wait_for("the second grandchild", lambda: second.exists() and second.read_text()))
        wait_for("the old version's grandchild to be stopped", lambda: not alive(old), timeout=60)
        assert alive(new)  # the version that serves keeps its own
        service.stop(signal.SIGTERM)
        wait_for("the grandchild to be stopped with the service", lambda: not alive(new))
        service.assert_nothing_left()  # its templates too


def test_a_broken_file_is_said_at_most_three_times_in_the_log(service: Service) -> None:
    # The runner's line, the webserver's and the daemon's warnings: the server says nothing.
    names = [f"loud_{i}" for i in range(5)]
    head = "import dagster as dg\n"
    for i, name in enumerate(names):
        broken = asset_file([name]).replace(head, f"{head}raise ValueError('loud-{i}')\n")
        drop(service.code_dir / f"{name}.py", broken)
    for i, name in enumerate(names):
        service.wait_error(name, f"loud-{i}")
    said = {i: lambda i=i: service.log_text().count(f"ValueError: loud-{i}") for i in range(5)}
    wait_for("the daemon's warnings", lambda: all(n() >= 3 for n in said.values()), timeout=90)
    time.sleep(5)  # whatever else would say it
    assert {i: n() for i, n in said.items()} == dict.fromkeys(range(5), 3)
    for name in names:
        (service.code_dir / f"{name}.py").unlink()


def test_a_run_is_tagged_with_the_file_version_environment_and_lock_that_ran_it(
    service: Service,
) -> None:
    path = service.code_dir / "traced.py"
    drop(path, asset_file(["traced"]))
    service.wait_loaded("traced")
    run_id = service.materialize_all("traced")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)
    tags = service.run_tags(run_id)
    row = service.status_rows()["traced.py"]
    env_path = Path(row["env_path"])
    lock = env_path.parent / ".scripts" / f"{env_path.name}.py.lock"
    expected = {
        "dagster-code-runner/file": "traced.py",
        "dagster-code-runner/sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "dagster-code-runner/lock-sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
    }
    assert {k: tags.get(k) for k in expected} == expected, tags
    environment = tags["dagster-code-runner/environment"]
    assert environment.startswith(row["env"]) and environment[:32] == env_path.name
    # The UI shows the same beside the location, and so does ``runner status``.
    shown = service.location_metadata("traced")
    assert shown["sha256"] == expected["dagster-code-runner/sha256"]
    assert shown["environment"] == environment
    assert shown["lock-sha256"] == expected["dagster-code-runner/lock-sha256"]
    assert "(resolved for this build, and locked for later ones)" in shown["versions"] or (
        "(as the runner locked them when it first built this metadata)" in shown["versions"]
    )
    assert row["sha256"] == expected["dagster-code-runner/sha256"]
    assert row["lock_sha256"] == expected["dagster-code-runner/lock-sha256"]
    path.unlink()


def importing(assets: list[str], line: str) -> str:
    """A file of ``assets`` that runs ``line`` as it is imported."""
    return asset_file(assets).replace("import dagster as dg\n", f"import dagster as dg\n{line}\n")


def test_a_missing_package_says_to_add_it_to_the_files_dependencies(service: Service) -> None:
    # bs4 is in no environment here; a helper module named like a boot module of the runner
    # ("title") beside the file is the file's own, warm or cold.
    folder = service.code_dir / "scraping"
    drop(folder / "title.py", "HEADLINE = 'from the helper'\n")
    drop(folder / "soup.py", importing(["soup"], "import bs4"))
    drop(folder / "headline.py", importing(["headline"], "from title import HEADLINE"))
    message = service.wait_error("scraping.soup", "not installed", timeout=120)
    first = message.strip().splitlines()[0]
    assert "`bs4` is not installed in this file's environment" in first, message
    assert 'add "beautifulsoup4" to the `dependencies`' in first, message
    assert "No module named 'bs4'" in message  # Dagster's own text stays below
    wait_for(
        "the advice in runner status",
        lambda: (
            "`bs4` is not installed"
            in (service.status_rows()["scraping/soup.py"].get("error") or "")
        ),
    )
    service.wait_loaded("scraping.headline")
    # A module missing beside the file is a folder problem: Dagster's text, unchanged.
    drop(folder / "local.py", importing(["local"], "import title.sub"))
    other = service.wait_error("scraping.local", "No module named 'title.sub'", timeout=120)
    assert "not installed in this file's environment" not in other
    for name in ("soup", "headline", "local", "title"):
        (folder / f"{name}.py").unlink()


def test_reload_all_retries_every_failed_location(service: Service, tmp_path: Path) -> None:
    # Fails while a flag is missing: a database down at import, a package not yet published.
    flag = passable(tmp_path) / "database-is-up"  # outside the share: no file changes
    moody = importing(
        ["moody"],
        f"import os\nif not os.path.exists({str(flag)!r}):\n"
        "    raise RuntimeError('the database is down')",
    )
    drop(service.code_dir / "moody_a.py", moody)
    drop(service.code_dir / "moody_b.py", moody)
    service.wait_error("moody_a", "the database is down")
    service.wait_error("moody_b", "the database is down")
    flag.write_text("up\n")
    flag.chmod(0o644)
    time.sleep(3)  # nothing changed on the share: they stay failed until asked
    assert service.error_of("moody_a") is not None
    service.reload_all()
    service.wait_loaded("moody_a", timeout=120)
    service.wait_loaded("moody_b", timeout=120)
    for name in ("moody_a", "moody_b"):
        (service.code_dir / f"{name}.py").unlink()
