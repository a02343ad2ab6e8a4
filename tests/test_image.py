"""The Dockerfile builds with ``docker build``, and the image serves the UI and a dropped file.

Images cannot be pulled here, so the base is made once per machine from debootstrap and
``docker import`` (kept by name); the Dockerfile's ``BASE`` build argument takes it, as users
pass ``debian:bookworm-slim`` or their own. Behind a TLS-inspecting proxy the base carries
the proxy's CA in ``/usr/local/share/ca-certificates/``, as corporate base images do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from runner.server import free_port
from tests.service import ROOT, asset_file, drop, wait_for

pytestmark = pytest.mark.slow

BASE = "dagster-code-runner-base:bookworm"
IMAGE = "dagster-code-runner:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # a TLS-inspecting proxy's CA, if any

SCRIPT = asset_file(["boxed"])


def docker(*args: str, timeout: float = 1200) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker {' '.join(args[:3])}...: {proc.stderr[-3000:]}"
    return proc.stdout


def require_engine() -> None:
    """Skip (fail under CI) unless a Docker engine answers and debootstrap is here."""
    why = None
    if shutil.which("docker") is None:
        why = "needs Docker (apt-get install docker.io; dockerd --storage-driver vfs)"
    elif subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        why = "needs a running Docker engine (dockerd --storage-driver vfs)"
    elif shutil.which("debootstrap") is None:
        why = "needs debootstrap for a local base image (apt-get install debootstrap)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run provides it")
        pytest.skip(why)


def local_base() -> str:
    """A Debian bookworm base image, made once per machine (nothing can be pulled here)."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0:
        return BASE
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as rootfs:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs], check=True,
                       capture_output=True, timeout=900)  # fmt: skip
        if HOST_CA.exists():
            cas = Path(rootfs) / "usr/local/share/ca-certificates"
            cas.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HOST_CA, cas / "host-ca.crt")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", BASE], stdin=tar.stdout, check=True,
                       capture_output=True, timeout=600)  # fmt: skip
        tar.wait()
    return BASE


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    require_engine()
    base = local_base()
    docker("build", "--build-arg", f"BASE={base}", "-t", IMAGE, str(ROOT))
    yield IMAGE


def test_image_serves_the_ui_and_a_dropped_file_and_stops_clean(image: str, tmp_path: Path) -> None:
    config = json.loads(docker("image", "inspect", image))[0]["Config"]
    assert config["User"] == "dagster"  # not root
    assert config["Healthcheck"]["Test"][-1].startswith("python -c")
    assert "/opt/dagster" in config["Volumes"]

    share = tmp_path / "share"
    (share / "code_location").mkdir(parents=True)
    share.chmod(0o777)
    (share / "code_location").chmod(0o777)
    port = free_port("127.0.0.1")
    name = f"runner-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000",
           "-v", f"{share}:/opt/dagster", image, "all")  # fmt: skip
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

        started = time.monotonic()
        docker("stop", "-t", "30", name, timeout=90)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", name))[0]["State"]
        assert not state["Running"] and stopped_in < 30, (state, stopped_in)
        assert not [pid for pid in pids if psutil.pid_exists(pid)], "processes outlived it"
    finally:
        print(subprocess.run(["docker", "logs", "--tail", "60", name], capture_output=True,
                             text=True).stdout)  # fmt: skip
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert name not in docker("ps", "-a", "--format", "{{.Names}}")
