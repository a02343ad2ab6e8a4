"""Code servers in containers on a real Docker engine (``RUNNER_SERVERS=docker``).

One service (webserver, daemon, runner on this machine) whose every code server is a
container of its own: the tests go as a user's session does: drop a file, run it, edit it,
kill its container, give a file too little memory, delete it, restart the runner.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.dagster_side.container_runs import LOCATION_LABEL
from runner.servers import docker_servers
from runner.servers.docker_servers import ROLE_LABEL, SHARE_LABEL
from tests import docker_images
from tests.conftest import passable
from tests.docker_images import docker
from tests.service import Service, asset_file, drop, running, wait_for

pytestmark = pytest.mark.slow

#: Cold starts only, and a container per start on an engine that copies the image for each
#: (vfs here): generous.
START = 300


def where_file(extra_meta: str = "") -> str:
    """A file whose asset logs the host name (a container's is its id) and interpreter."""
    return f"""# /// script
# dependencies = ["dagster"]
{extra_meta}# ///
import os
import socket
import sys

import dagster as dg


@dg.asset
def whereabouts(context: dg.AssetExecutionContext) -> str:
    context.log.info(f"host={{socket.gethostname()}} python={{sys.executable}} uid={{os.getuid()}}")
    return socket.gethostname()


defs = dg.Definitions(assets=[whereabouts])
"""


HOG = """# /// script
# dependencies = ["dagster"]
# [tool.dagster-code-runner]
# server-memory = "150m"
# ///
import dagster as dg

hoard = bytearray(400 * 1024 * 1024)  # over the server's limit as it imports
for i in range(0, len(hoard), 4096):
    hoard[i] = 1

defs = dg.Definitions()
"""


@pytest.fixture(scope="module")
def server_image() -> str:
    docker_images.require_engine()
    return docker_images.build_server_image()


@pytest.fixture(scope="module")
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    share = passable(tmp_path_factory.mktemp("docker-share"))
    share.chmod(0o755)
    return share


@pytest.fixture(scope="module")
def service_env(server_image: str) -> dict[str, str]:
    return {"RUNNER_SERVERS": "docker", "RUNNER_SERVER_IMAGE": server_image}


@pytest.fixture(scope="module")
def service(
    share: Path,
    state_dir: Path,
    service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    log = tmp_path_factory.mktemp("docker-log") / "service.log"
    with running(share, state_dir, log, env=service_env) as svc:
        yield svc
    assert containers_of(share) == [], "a server container outlived the service"


def containers_of(share: Path, location: str | None = None) -> list[dict]:
    """The share's server containers (inspected), running or not."""
    filters = ["--filter", f"label={SHARE_LABEL}={share / 'code_location'}"]
    if location is not None:
        filters += ["--filter", f"label={LOCATION_LABEL}={location}"]
    ids = docker("ps", "-a", "-q", *filters).split()
    return json.loads(docker("inspect", *ids)) if ids else []


def running_container(service: Service, file: str) -> dict:
    """The container ``runner status`` names for ``file``, inspected."""
    name = wait_for(
        f"{file}'s container in runner status",
        lambda: service.status_rows().get(file, {}).get("container"),
        timeout=60,
    )
    [inspected] = json.loads(docker("inspect", name))
    return inspected


def test_a_dropped_file_loads_from_its_container_and_runs_in_it(service: Service) -> None:
    drop(service.code_dir / "where.py", where_file())
    service.wait_loaded("where", timeout=START)
    row = service.status_rows()["where.py"]
    assert row["state"] == "serving" and row["container"], row
    inspected = running_container(service, "where.py")
    labels = inspected["Config"]["Labels"]
    assert labels[LOCATION_LABEL] == "where"
    assert labels[SHARE_LABEL] == str(service.code_dir) and labels[ROLE_LABEL] == "code-server"
    host = inspected["HostConfig"]
    assert host["RestartPolicy"]["Name"] in ("", "no")  # the runner owns restarts
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    env_dir = str(Path(row["env_path"]))
    assert mounts[env_dir]["RW"] is False, "its environment is mounted read-only"
    assert mounts[str(service.code_dir)]["RW"] is False, "its file's folder is read-only"
    if os.geteuid() == 0:  # locations run as users of their own
        assert inspected["Config"]["User"] == f"{row['user']}:{row['user']}"
    # Only its own settings: the service's secrets are not in its environment.
    variables = dict(v.split("=", 1) for v in inspected["Config"]["Env"])
    assert "RUNNER_STATE_DIR" not in variables and "DAGSTER_DATABASE_URL" not in variables

    run_id = service.materialize_all("where")
    assert service.wait_run(run_id, timeout=START) == "SUCCESS", service.run_failure_text(run_id)
    logs = service.run_failure_text(run_id)
    ran_on = logs.split("host=", 1)[1].split()[0]
    assert inspected["Id"].startswith(ran_on) or inspected["Config"]["Hostname"] == ran_on, logs
    assert logs.split("python=", 1)[1].split()[0].startswith(env_dir), logs


def test_an_edit_swaps_containers_with_no_gap_in_the_ui(service: Service) -> None:
    before = running_container(service, "where.py")["Name"].lstrip("/")
    drop(service.code_dir / "where.py", where_file() + "\nEDITED = True\n")
    statuses: set[str] = set()

    def swapped() -> bool:
        statuses.add(service.locations()["where"]["loadStatus"])
        name = service.status_rows()["where.py"].get("container")
        return service.status_rows()["where.py"]["state"] == "serving" and name != before

    wait_for("the new container to serve", swapped, timeout=START, every=0.2)
    assert statuses == {"LOADED"}, f"the UI saw the location {statuses} during the swap"
    wait_for(
        "the old container to be removed",
        lambda: before not in {c["Name"].lstrip("/") for c in containers_of(service.share)},
        timeout=120,
    )


def test_a_killed_container_is_restarted(service: Service) -> None:
    killed = running_container(service, "where.py")["Name"].lstrip("/")
    docker("kill", "--signal", "KILL", killed)

    def restarted() -> str | None:
        row = service.status_rows()["where.py"]
        name = row.get("container")
        return name if row["state"] == "serving" and name and name != killed else None

    wait_for("a new container", restarted, timeout=START)
    service.wait_loaded("where", timeout=START)
    assert "restart" in service.log_text()
    wait_for(
        "the killed container to be removed",
        lambda: killed not in {c["Name"].lstrip("/") for c in containers_of(service.share)},
        timeout=120,
    )


def test_a_server_memory_limit_is_on_the_container_and_fails_that_location_only(
    service: Service,
) -> None:
    drop(service.code_dir / "small.py", asset_file(["small"], extra_meta=_limit("200m")))
    service.wait_loaded("small", timeout=START)
    small = running_container(service, "small.py")
    assert small["HostConfig"]["Memory"] == 200 << 20
    assert small["HostConfig"]["MemorySwap"] == 200 << 20

    drop(service.code_dir / "hog.py", HOG)
    error = service.wait_error("hog", "memory limit", timeout=START)
    assert "150 MiB" in error and "server-memory" in error, error
    assert service.locations()["where"]["loadStatus"] == "LOADED"
    assert service.locations()["small"]["loadStatus"] == "LOADED"
    assert service.asset_keys("small") == ["small"]


def test_a_deleted_file_takes_its_container_with_it(service: Service) -> None:
    assert containers_of(service.share, "small")
    (service.code_dir / "small.py").unlink()
    wait_for("small to leave the UI", lambda: "small" not in service.locations(), timeout=120)
    wait_for("its container to go", lambda: not containers_of(service.share, "small"), timeout=120)


def test_a_runner_restart_leaks_no_container(
    service: Service, share: Path, state_dir: Path, service_env: dict[str, str], tmp_path: Path
) -> None:
    (service.code_dir / "hog.py").unlink()
    service.wait_loaded("where", timeout=START)
    service.kill()  # SIGKILL, every process: its containers outlive it
    left = {c["Name"].lstrip("/") for c in containers_of(share)}
    assert left, "the killed runner's container should still be there to clean up"

    with running(share, state_dir, tmp_path / "again.log", env=service_env) as again:
        # The webserver may first load the killed runner's workspace.yaml (its server still
        # answers): wait for the new runner's own server.
        wait_for(
            "the new runner to serve where",
            lambda: (
                (row := again.status_rows().get("where.py", {})).get("state") == "serving"
                and row.get("container") not in left
            ),
            timeout=START,
        )
        again.wait_loaded("where", timeout=START)
        now = {c["Name"].lstrip("/") for c in containers_of(share)}
        assert not left & now, f"the previous runner's containers are still there: {left & now}"
        assert len(now) == 1, now
        started = time.monotonic()
        again.stop(signal.SIGTERM, timeout=120)
        assert time.monotonic() - started < 120
    assert containers_of(share) == []


def _limit(memory: str) -> str:
    return f'# [tool.dagster-code-runner]\n# server-memory = "{memory}"\n'


def test_without_isolation_a_server_listens_on_its_containers_port(
    state_dir: Path, service_env: dict[str, str], tmp_path: Path
) -> None:
    """No socket folder fences it then: it is reached on port 4000 of its container."""
    (tmp_path / "share").mkdir()
    share = passable(tmp_path / "share")
    env = {**service_env, "RUNNER_ISOLATION": "none"}
    with running(share, state_dir, tmp_path / "tcp.log", env=env) as svc:
        drop(svc.code_dir / "plain.py", asset_file(["plain"]))
        svc.wait_loaded("plain", timeout=START)
        row = svc.status_rows()["plain.py"]
        assert row["socket"] is None and row["port"] == docker_servers.PORT, row
        workspace = (share / "dagster_home" / "workspace.yaml").read_text()
        [inspected] = containers_of(share)
        address = inspected["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert f"host: {address}" in workspace, workspace
        assert inspected["HostConfig"]["PortBindings"] in ({}, None)  # never on the host
    assert containers_of(share) == []
