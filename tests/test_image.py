"""The Dockerfile builds with ``docker build``, and the image serves the UI and a dropped file.

The base image comes from debootstrap (see ``tests/docker_images.py``).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from runner.servers.server import free_port
from tests.docker_images import docker
from tests.service import asset_file, drop, wait_for

pytestmark = pytest.mark.slow

SCRIPT = asset_file(["boxed"])


def test_image_serves_the_ui_and_a_dropped_file_and_stops_clean(
    runner_image: str, tmp_path: Path
) -> None:
    config = json.loads(docker("image", "inspect", runner_image))[0]["Config"]
    # It starts as root, to run each location as a user of its own; the service is dagster's.
    assert config["User"] in ("", "root") and "RUNNER_SERVICE_USER=dagster" in config["Env"]
    assert config["Healthcheck"]["Test"][-1].startswith("python -c")
    assert "/opt/dagster" in config["Volumes"]

    share = tmp_path / "share"
    (share / "code_location").mkdir(parents=True)
    share.chmod(0o777)
    (share / "code_location").chmod(0o777)
    port = free_port("127.0.0.1")
    name = f"runner-test-{uuid.uuid4().hex[:8]}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:3000",
        "-v",
        f"{share}:/opt/dagster",
        runner_image,
        "all",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the UI", lambda: requests.get(f"{url}/server_info", timeout=5).ok, timeout=180)
        drop(share / "code_location" / "boxed.py", SCRIPT)

        def loaded() -> bool:
            query = (
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
            )
            body = requests.post(f"{url}/graphql", json={"query": query}, timeout=10).json()
            entries = body["data"]["workspaceOrError"]["locationEntries"]
            return any(e["name"] == "boxed" and e["loadStatus"] == "LOADED" for e in entries)

        wait_for("the dropped file to load inside the container", loaded, timeout=400)
        pids = [int(p) for p in docker("top", name, "-eo", "pid").split()[1:]]
        assert len(pids) >= 4  # entrypoint, webserver, daemon, runner, the code server...
        users: dict[str, set[int]] = {}
        for line in docker("top", name, "-eo", "pid,uid,args").splitlines()[1:]:
            _, uid, args = line.split(None, 2)
            role = next(
                (r for r in ("runner webserver", "runner daemon", "runner serve") if r in args),
                "other",
            )
            users.setdefault(role, set()).add(int(uid))
        assert users["runner webserver"] == users["runner daemon"] == {10001}, users
        assert users["runner serve"] == {0}, users  # it switches users for the locations
        assert any(uid >= 20002 for uid in users["other"]), users  # boxed's server

        started = time.monotonic()
        docker("stop", "-t", "30", name, timeout=90)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", name))[0]["State"]
        assert not state["Running"] and stopped_in < 30, (state, stopped_in)
        assert not [pid for pid in pids if psutil.pid_exists(pid)], "processes outlived it"
    finally:
        print(
            subprocess.run(
                ["docker", "logs", "--tail", "60", name], capture_output=True, text=True
            ).stdout
        )
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert name not in docker("ps", "-a", "--format", "{{.Names}}")
