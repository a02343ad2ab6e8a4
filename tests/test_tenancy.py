"""Each location is its own tenant, tried as a hostile team would, with real processes.

Two teams share a share and the service; team_b keeps a secret in ``RUNNER_SETTINGS_DIR``.
team_a's file, as it is imported by its server and again in a run of its asset, tries to read
that secret, to read team_b's server's environment and memory, to signal it, to write into the
environment both files share, to rewrite team_b's file, and to connect to team_b's server. All
of it must fail, with warm and with cold starts, while team_a's own settings, scratch folder
and helpers work; and where the runner cannot switch users it says so.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import passable
from tests.needs import missing
from tests.service import Service, drop, running, wait_for, warm_up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        missing("needs root on Linux, to run each location as a user of its own")


#: Team a's file: what it tries, as its server imports it and as its run executes.
HOSTILE = """\
# /// script
# dependencies = ["dagster"]
# ///
import json, os, socket, sysconfig
import dagster as dg
from helpers_a import HELPER

TARGETS = json.loads({targets!r})


def _try(action):
    try:
        action()
        return "DONE"
    except OSError as exc:
        return f"refused: {{exc.strerror}}"


def _connect():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(TARGETS["socket"])


def attacks():
    pid = TARGETS["pid"]
    return {{
        "read its secret": _try(lambda: open(TARGETS["secret_file"]).read()),
        "read its server's environment": _try(lambda: open(f"/proc/{{pid}}/environ", "rb").read()),
        "read its server's memory": _try(lambda: open(f"/proc/{{pid}}/mem", "rb").read(1)),
        "signal its server": _try(lambda: os.kill(pid, signal_number())),
        "write into the shared environment": _try(lambda: open(
            os.path.join(sysconfig.get_paths()["purelib"], "evil.pth"), "w").write("import os\\n")),
        "rewrite its file": _try(lambda: open(TARGETS["file"], "a").write("# mine now\\n")),
        "connect to its server": _try(_connect),
    }}


def signal_number():
    import signal
    return signal.SIGTERM


def own():
    with open("/proc/self/status") as f:
        status = {{k: v.strip() for k, _, v in (line.partition(":") for line in f)}}
    home = os.environ["HOME"]
    with open(os.path.join(home, "mine.txt"), "w") as f:
        f.write("scratch")
    return {{
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "caps": status["CapEff"], "no_new_privs": status["NoNewPrivs"],
        "own secret": os.environ.get("TEAM_A_SECRET"),
        "other secret": os.environ.get("TEAM_B_SECRET"),
        "home": home, "helper": HELPER, "user": os.environ.get("USER"),
    }}


AT_IMPORT = {{"attacks": attacks(), "own": own()}}


@dg.asset(description=json.dumps(AT_IMPORT))
def hostile() -> dg.MaterializeResult:
    seen = {{"attacks": attacks(), "own": own()}}
    done = [name for name, outcome in seen["attacks"].items() if outcome == "DONE"]
    if done or seen["own"]["uid"] in (0, {runner_uid}):
        raise RuntimeError(f"the run got through: {{done}}, as uid {{seen['own']['uid']}}")
    return dg.MaterializeResult(metadata={{"seen": json.dumps(seen)}})


defs = dg.Definitions(assets=[hostile])
"""

VICTIM = """\
# /// script
# dependencies = ["dagster"]
# ///
import os
import dagster as dg

assert os.environ["TEAM_B_SECRET"] == "b-secret-123"


@dg.asset
def precious() -> int:
    return 1


defs = dg.Definitions(assets=[precious])
"""


@pytest.fixture(scope="module", params=["warm", "cold"])
def tenants(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, state_dir: Path
) -> Iterator[Service]:
    share = passable(tmp_path_factory.mktemp("share"))
    share.chmod(0o755)
    settings = tmp_path_factory.mktemp("settings")  # 0700: the runner's only
    secrets = {"team_a": "TEAM_A_SECRET=a-secret", "team_b": "TEAM_B_SECRET=b-secret-123"}
    for team, line in secrets.items():
        (settings / team).mkdir()
        (settings / team / ".env").write_text(line + "\n")
    env = {"RUNNER_STARTS": request.param, "RUNNER_SETTINGS_DIR": str(settings)}
    log = share.parent / f"{share.name}-service.log"
    with running(share, state_dir, log, env=env) as service:
        service.settings = settings  # type: ignore[attr-defined]
        if request.param == "warm":
            warm_up(service)  # the next files are forked from their environment's template
        yield service
        print(f"--- service log ({log}) ---\n" + service.log_text()[-20000:])


def status_rows(service: Service) -> dict[str, dict[str, Any]]:
    data = json.loads((service.share / "dagster_home" / ".runner-status.json").read_text())
    return {row["location"]: row for row in data["files"]}


def workspace_entry(service: Service, name: str) -> dict[str, Any]:
    data = yaml.safe_load((service.share / "dagster_home" / "workspace.yaml").read_text())
    for entry in data["load_from"]:
        if entry["grpc_server"]["location_name"] == name:
            return entry["grpc_server"]
    raise AssertionError(f"{name} not in workspace.yaml")


def asset_description(service: Service, location: str) -> dict[str, Any]:
    data = service.graphql(
        """query($loc: String!) { repositoryOrError(repositorySelector: {
             repositoryLocationName: $loc, repositoryName: "__repository__"}) {
             ... on Repository { assetNodes { description } } } }""",
        {"loc": location},
    )
    (node,) = data["repositoryOrError"]["assetNodes"]
    return json.loads(node["description"])


def test_one_teams_code_cannot_read_signal_or_rewrite_another_teams(tenants: Service) -> None:
    service, mode = tenants, tenants.env["RUNNER_STARTS"]
    drop(service.code_dir / "team_b" / "b.py", VICTIM)
    service.wait_loaded("team_b.b")
    b = status_rows(service)["team_b.b"]
    assert b["start"].startswith(mode), b
    entry = workspace_entry(service, "team_b.b")
    assert "port" not in entry and entry["socket"].endswith("grpc.sock")

    targets = {
        "secret_file": str(service.settings / "team_b" / ".env"),  # type: ignore[attr-defined]
        "pid": b["pid"],
        "socket": entry["socket"],
        "file": str(service.code_dir / "team_b" / "b.py"),
    }
    drop(service.code_dir / "team_a" / "helpers_a.py", "HELPER = 'from its own folder'\n")
    drop(
        service.code_dir / "team_a" / "a.py",
        HOSTILE.format(targets=json.dumps(targets), runner_uid=os.getuid()),
    )
    service.wait_loaded("team_a.a")
    a = status_rows(service)["team_a.a"]
    assert a["start"].startswith(mode), a

    seen = asset_description(service, "team_a.a")
    assert {k: v for k, v in seen["attacks"].items() if not v.startswith("refused")} == {}
    assert all(
        "Permission denied" in v or "Operation not permitted" in v for v in seen["attacks"].values()
    ), seen["attacks"]
    own = seen["own"]
    assert own["uid"] == a["user"] != b["user"]
    assert own["uid"] not in (0, os.getuid()) and own["gid"] == own["uid"]
    assert (own["groups"], own["caps"], own["no_new_privs"]) == ([], "0000000000000000", "1")
    assert (own["own secret"], own["other secret"]) == ("a-secret", None)
    assert own["helper"] == "from its own folder" and own["user"] == f"location-{own['uid']}"
    scratch = Path(own["home"])
    assert scratch == Path(service.env["RUNNER_STATE_DIR"]) / "work" / "team_a.a"
    assert (scratch.stat().st_uid, scratch.stat().st_mode & 0o777) == (own["uid"], 0o700)

    # Nothing of team_b's was touched: its file, its server, its environment.
    assert "mine now" not in (service.code_dir / "team_b" / "b.py").read_text()
    assert status_rows(service)["team_b.b"]["pid"] == b["pid"]
    assert service.locations()["team_b.b"]["loadStatus"] == "LOADED"

    # A run on the local launcher: its processes are team_a's user too, and get no further.
    run_id = service.materialize_all("team_a.a")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)

    # The log and the status file name users, never a secret.
    text = service.log_text() + json.dumps(status_rows(service))
    assert "b-secret-123" not in text and "a-secret" not in text
    assert re.search(r"serving team_a\.a on socket \S+ \(pid \d+\)", service.log_text())
    assert f"as uid {own['uid']}" in service.log_text()


def test_a_deleted_location_gives_back_its_user_and_everything_it_ran(tenants: Service) -> None:
    service = tenants
    name = "team_c.lingering"
    drop(
        service.code_dir / "team_c" / "lingering.py",
        """\
# /// script
# dependencies = ["dagster"]
# ///
import os, time
import dagster as dg

if os.fork() == 0:  # a child that leaves its server's session: it must not outlive it
    os.setsid()
    time.sleep(3600)
    os._exit(0)


@dg.asset
def stays() -> int:
    return 1


defs = dg.Definitions(assets=[stays])
""",
    )
    service.wait_loaded(name)
    uid = status_rows(service)[name]["user"]
    ids = json.loads((service.share / "dagster_home" / ".runner-ids.json").read_text())
    assert ids["ids"][name] == uid
    from runner.isolation import tenancy

    assert len(tenancy.processes_of(uid)) >= 2  # its server and the child that left
    (service.code_dir / "team_c" / "lingering.py").unlink()
    wait_for("its processes gone", lambda: tenancy.processes_of(uid) == [], timeout=60)
    wait_for(
        "its id released",
        lambda: (
            name
            not in json.loads((service.share / "dagster_home" / ".runner-ids.json").read_text())[
                "ids"
            ]
        ),
    )
    assert f"{name}: its user (uid {uid}) is released" in service.log_text()


def test_a_share_only_the_runner_can_read_is_served_from_a_copy(tenants: Service) -> None:
    service = tenants
    folder = service.code_dir / "team_d"
    drop(folder / "helpers_d.py", "VALUE = 41\n")
    drop(
        folder / "closed.py",
        """\
# /// script
# dependencies = ["dagster"]
# ///
import dagster as dg
from helpers_d import VALUE


@dg.asset
def answer() -> int:
    return VALUE + 1


defs = dg.Definitions(assets=[answer])
""",
    )
    folder.chmod(0o700)  # the runner's only: team_d's user cannot read it
    service.wait_loaded("team_d.closed")
    run_id = service.materialize_all("team_d.closed")
    assert service.wait_run(run_id) == "SUCCESS", service.run_failure_text(run_id)


def test_a_runner_that_cannot_switch_users_says_so_once(
    tmp_path_factory: pytest.TempPathFactory, state_dir: Path
) -> None:
    """Root without CAP_SETUID and CAP_SETGID: locations share the runner's user, as it says
    at start, in the log and in ``runner status``; asked for explicitly, it refuses to run."""
    share = passable(tmp_path_factory.mktemp("share"))
    no_switch = ("setpriv", "--bounding-set=-setuid,-setgid", "--inh-caps=-setuid,-setgid", "--")
    log = share.parent / "no-switch.log"
    with running(share, state_dir, log, prefix=no_switch) as service:
        drop(
            service.code_dir / "plain.py",
            VICTIM.replace('assert os.environ["TEAM_B_SECRET"] == "b-secret-123"\n', ""),
        )
        service.wait_loaded("plain")
        said = "every location runs as the runner's own user (the runner cannot switch users"
        assert service.log_text().count(said) == 1, service.log_text()
        assert "lacks CAP_SETUID, CAP_SETGID" in service.log_text()
        data = json.loads((share / "dagster_home" / ".runner-status.json").read_text())
        assert data["isolation"].startswith(said)
        assert [row["user"] for row in data["files"]] == [None]

    log = share.parent / "refused.log"
    with running(share, state_dir, log, prefix=no_switch, env={"RUNNER_ISOLATION": "user"}) as s:
        assert s.proc.wait(timeout=60) != 0
        assert "RUNNER_ISOLATION=user, but the runner cannot switch users" in s.log_text()


def test_a_packages_build_script_runs_as_the_builds_user_never_the_runner(
    tmp_path: Path,
) -> None:
    """An sdist (here a folder) builds with the team's own code: it runs as the builds' user,
    and what it built is the runner's, which no build and no location may change."""
    from runner.envs import env
    from runner.isolation.identity import IdRange
    from runner.share import script

    builder = IdRange.parse("20000-29999").builds
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o777)  # setuptools writes its egg-info beside the sources
    seen = tmp_path / "built-as.txt"
    (probe / "setup.py").write_text(
        "import os\nfrom setuptools import setup\n"
        f"open({str(seen)!r}, 'w').write(f'{{os.getuid()}} {{os.environ.get(\"HOME\")}}')\n"
        "setup(name='probe', version='0.1', py_modules=['probe'])\n"
    )
    (probe / "probe.py").write_text("VALUE = 1\n")
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o711)
    store = env.EnvStore(state / "envs", builder=builder)
    meta = script.parse_metadata(
        f'# /// script\n# dependencies = ["dagster", "probe @ {probe.as_uri()}"]\n# ///\n'
    )
    assert meta is not None
    built = store.build(env.spec_for(meta))
    uid, home = seen.read_text().split()
    assert int(uid) == builder.uid and not home.startswith("/root")
    owners = {p.lstat().st_uid for p in built.path.rglob("*")}
    assert owners == {os.getuid()}  # the runner's: no later build changes it
    assert store.lock_path(built.key).stat().st_uid == os.getuid()
    assert store.cache is not None and store.cache.stat().st_uid == builder.uid
