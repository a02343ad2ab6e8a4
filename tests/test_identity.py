"""Who locations run as, decided purely; what they may reach, by file modes; what a template
may trust; which ports are closed to them; and the rights a template and a server keep,
tried in a forked process (as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.isolation import fence, identity, trust
from runner.isolation.identity import Identities, Identity, IdRange, allocate, decide
from runner.isolation.tenancy import blocked

IDS = IdRange(100, 105)
ALL_CAPS = int("1fffeffffff", 16)


def test_the_range_reserves_the_templates_and_the_builds_ids() -> None:
    ids = IdRange.parse(" 20000 - 29999 ")
    assert (ids.template, ids.builds, ids.locations) == (
        Identity(20000, 20000),
        Identity(20001, 20001),
        (20002, 29999),
    )
    for bad in ("20000", "0-10", "5-6", "x-y"):
        with pytest.raises(ValueError, match="RUNNER_UID_RANGE"):
            IdRange.parse(bad)


def test_isolation_is_on_where_the_runner_can_switch_users_and_fails_closed_when_asked() -> None:
    assert decide(None, ids=IDS, euid=0, effective=ALL_CAPS, setpriv=True).on
    off = decide(None, ids=IDS, euid=1000, effective=0, setpriv=True)
    assert not off.on
    assert "not root and lacks CAP_SETUID, CAP_SETGID, CAP_KILL, CAP_CHOWN" in off.why
    no_setuid = ALL_CAPS & ~(1 << 7) & ~(1 << 6)
    rootless = decide("", ids=IDS, euid=0, effective=no_setuid, setpriv=True)
    assert "root without them and lacks CAP_SETUID, CAP_SETGID" in rootless.why
    assert "setpriv" in decide(None, ids=IDS, euid=0, effective=ALL_CAPS, setpriv=False).why
    chosen = decide("none", ids=IDS, euid=0, effective=ALL_CAPS, setpriv=True)
    assert not chosen.on and chosen.why == "RUNNER_ISOLATION=none"
    with pytest.raises(ValueError, match="RUNNER_ISOLATION=user, but the runner cannot"):
        decide("user", ids=IDS, euid=1000, effective=0, setpriv=True)
    with pytest.raises(ValueError, match="must be user or none"):
        decide("maybe", ids=IDS, euid=0, effective=ALL_CAPS, setpriv=True)
    assert identity.read_effective_caps("Name:\tx\nCapEff:\t00000000000000c0\n") == 0xC0


def test_ids_are_handed_out_in_turn_around_the_range_skipping_taken_ones() -> None:
    taken = {103}.__contains__
    assert allocate({}, 102, IDS, taken=taken) == (102, 103)
    assert allocate({"a": 102}, 103, IDS, taken=taken) == (104, 105)
    assert allocate({"a": 102, "b": 104}, 105, IDS, taken=taken) == (105, 102)
    with pytest.raises(ValueError, match="every id"):
        allocate({"a": 102, "b": 104, "c": 105}, 102, IDS, taken=taken)


def test_a_location_keeps_its_id_in_the_map_and_a_released_one_is_not_reused_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / identity.IDS_NAME
    ids = Identities(path, IDS, taken=lambda uid: False)
    a, b = ids.get("a"), ids.get("b")
    assert (a, b) == (Identity(102, 102), Identity(103, 103)) and ids.get("a") == a
    assert Identities(path, IDS, taken=lambda uid: False).get("b") == b  # a restart
    assert ids.release("a") == a and ids.release("a") is None
    assert ids.get("c") == Identity(104, 104)  # not a's id, freed a moment ago
    assert json.loads(path.read_text()) == {"next": 105, "ids": {"b": 103, "c": 104}}
    assert user_named(Identity(104, 104)) == "location-104"


def user_named(who: Identity) -> str:
    return who.user


def test_what_a_user_may_reach_follows_the_modes_of_every_folder_above(tmp_path: Path) -> None:
    who = Identity(2**31, 2**31)
    tmp_path.chmod(0o711)
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open" / "f.py").write_text("x = 1\n")
    (tmp_path / "open" / "f.py").chmod(0o644)
    (tmp_path / "closed").mkdir(mode=0o700)
    (tmp_path / "closed" / "f.py").write_text("x = 1\n")
    (tmp_path / "open" / "link.py").symlink_to(tmp_path / "closed" / "f.py")
    assert blocked(tmp_path / "open" / "f.py", who) is None
    assert blocked(tmp_path / "open", who, want="rx") is None
    assert "closed to other users (mode 0700)" in blocked(tmp_path / "closed" / "f.py", who)
    assert "closed" in blocked(tmp_path / "open" / "link.py", who)  # where the link leads
    (tmp_path / "open" / "f.py").chmod(0o640)
    assert "not open to other users (mode 0640)" in blocked(tmp_path / "open" / "f.py", who)
    owner = Identity(os.getuid(), os.getgid())
    assert blocked(tmp_path / "open" / "f.py", owner) is None


LOCK = """
version = 1
[[package]]
name = "dagster"
version = "1.13.27"
source = {{ registry = "https://pypi.org/simple" }}
dependencies = [{{ name = "grpcio" }}]

[[package]]
name = "grpcio"
version = "1.70.0"
source = {grpcio}

[[package]]
name = "pandas"
version = "2.2.0"
source = {{ registry = "https://evil.example/simple" }}
"""


def test_a_template_trusts_dagster_only_from_the_services_own_indexes() -> None:
    pypi = trust.service_indexes({})
    assert pypi == {"https://pypi.org/simple"}
    ok = LOCK.format(grpcio='{ registry = "https://pypi.org/simple/" }')
    assert trust.foreign_source(ok, pypi) is None  # pandas is the file's, not the template's
    mirror = trust.service_indexes({"UV_INDEX_URL": "https://u:secret@mirror.example/simple/"})
    assert mirror == {"https://mirror.example/simple"}
    why = trust.foreign_source(ok, mirror)
    assert why is not None
    assert "dagster (which Dagster needs) comes from https://pypi.org/simple" in why
    git = LOCK.format(grpcio='{ git = "https://github.com/x/grpc" }')
    assert "grpcio (which Dagster needs) comes from git" in trust.foreign_source(git, pypi)
    named = trust.service_indexes({"UV_INDEX": "team=https://team.example/simple"})
    assert "https://team.example/simple" in named
    assert trust.foreign_source("not toml [", pypi) == "its lock cannot be read"


def test_the_webserver_metrics_and_tcp_servers_are_closed_to_the_locations_ids() -> None:
    wanted = fence.targets(
        webserver_url="http://web:3000",
        metrics="9100",
        servers_on_tcp=True,
        resolve=lambda host: {"web": ["10.0.0.5"]}.get(host, ["127.0.0.1"]),
        local_ports="32768:60999",
    )
    assert wanted == [
        fence.Target("10.0.0.5", "3000", "the webserver"),
        fence.Target("127.0.0.1", "9100", "the runner's metrics"),
        fence.Target(None, "32768:60999", "the code servers' ports"),
    ]
    assert fence.rule(wanted[0], (20002, 29999), "dagster-code-runner:7") == [
        "OUTPUT",
        "-p",
        "tcp",
        "--syn",
        "-d",
        "10.0.0.5",
        "--dport",
        "3000",
        "-m",
        "owner",
        "--uid-owner",
        "20002-29999",
        "-m",
        "comment",
        "--comment",
        "dagster-code-runner:7",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]
    assert "--dst-type" in fence.rule(wanted[2], (1, 2), "t")


def test_a_fence_that_cannot_be_put_up_says_what_stays_open(monkeypatch) -> None:
    # As on a host with iptables installed, whether or not this one has it.
    monkeypatch.setattr(fence.shutil, "which", lambda name: f"/usr/sbin/{name}")

    def refuse(args: list[str], **_: object) -> subprocess.CompletedProcess:
        denied = "iptables: Permission denied (you must be root)"
        return subprocess.CompletedProcess(args, 4, "", denied)

    wall = fence.Fence([fence.Target("127.0.0.1", "3000", "the webserver")], (2, 9), run=refuse)
    why = wall.close()
    assert why is not None
    assert "the webserver (127.0.0.1 port 3000): iptables: Permission denied" in why


DROP = """
import os, sys
sys.path.insert(0, {boot!r})
import drop
drop.to_template(20000, 20000, allowed=(20002, 20009))
out = {{}}
calls = {{
    "root": lambda: os.setresuid(0, 0, 0),
    "builds": lambda: os.setresuid(20001, 20001, 20001),
    "outside": lambda: os.setresuid(20010, 20010, 20010),
    "groups": lambda: os.setgroups([0]),
    "mixed": lambda: os.setresuid(20002, 20003, 20002),
}}
for name, call in calls.items():
    try:
        call(); out[name] = "allowed"
    except OSError as exc:
        out[name] = exc.errno
pid = os.fork()
if pid == 0:
    drop.to_location(20005, 20005)
    status = {{k: v.strip() for k, _, v in (l.partition(":") for l in open("/proc/self/status"))}}
    keys = ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs")
    print(repr({{k: status[k] for k in keys}}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(repr(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root on Linux")
def test_a_template_can_fork_into_location_ids_only_and_a_server_keeps_no_rights() -> None:
    boot = str(Path(__file__).resolve().parent.parent / "runner" / "boot")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    done = subprocess.run(
        [python, "-S", "-c", DROP.format(boot=boot)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    child, template = (eval(line) for line in done.stdout.splitlines())
    assert template == {"root": 1, "builds": 1, "outside": 1, "groups": 1, "mixed": 1}
    assert child == {
        "Uid": "20005\t20005\t20005\t20005",
        "Gid": "20005\t20005\t20005\t20005",
        "Groups": "",
        "CapEff": "0" * 16,
        "CapPrm": "0" * 16,
        "CapInh": "0" * 16,
        "CapBnd": "0" * 16,
        "CapAmb": "0" * 16,
        "NoNewPrivs": "1",
    }
