"""The Dockerfile builds, and the built image's entrypoint serves the UI and a dropped file.

Built with buildah (no Docker engine needed) on a Debian base made by debootstrap, since base
images cannot be pulled here; the image is run with `buildah run`, which shares this
machine's network, so the UI is reached on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from runner.server import free_port
from tests.service import ROOT, asset_file, drop, wait_for

pytestmark = pytest.mark.slow

BUILDAH = ["buildah", "--storage-driver", "vfs"]
BASE = "localhost/debian-base:bookworm"
IMAGE = "localhost/dagster-code-runner:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # a TLS-inspecting proxy's CA, if any

SCRIPT = asset_file(["boxed"])


def _run(*args: str, timeout: float = 900) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:4])}...: {proc.stderr[-3000:]}"
    return proc.stdout


def _ca_mount() -> list[str]:
    return ["-v", f"{HOST_CA}:/run/host-ca.crt:ro"] if HOST_CA.exists() else []


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {', '.join(missing)} (see .ci/run)")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install buildah debootstrap)")
    if subprocess.run([*BUILDAH, "inspect", BASE], capture_output=True).returncode != 0:
        with tempfile.TemporaryDirectory(prefix="debootstrap-") as rootfs:
            _run("debootstrap", "--variant=minbase", "bookworm", rootfs)
            container = _run(*BUILDAH, "from", "scratch").strip()
            _run(*BUILDAH, "copy", container, rootfs, "/")
            _run(*BUILDAH, "commit", "-q", container, BASE)
            _run(*BUILDAH, "rm", container)
    _run(*BUILDAH, "bud", "--isolation", "chroot", "--format", "docker",
         "--build-arg", f"BASE={BASE}", *_ca_mount(), "-t", IMAGE, str(ROOT))  # fmt: skip
    yield IMAGE


def test_image_entrypoint_serves_the_ui_and_a_dropped_file(image: str, tmp_path: Path) -> None:
    config = json.loads(_run(*BUILDAH, "inspect", "--type", "image", image))
    docker = config["Docker"]["config"]
    assert docker["User"] == "dagster"  # not root
    assert docker["Healthcheck"]["Test"][-1].startswith("python -c")
    assert "/opt/dagster" in docker["Volumes"]
    entrypoint = docker["Entrypoint"]

    share = tmp_path / "share"
    (share / "code_location").mkdir(parents=True)
    share.chmod(0o777)
    (share / "code_location").chmod(0o777)
    port = free_port("127.0.0.1")
    container = _run(*BUILDAH, "from", "-q", image).strip()
    env = ["--env", "SSL_CERT_FILE=/run/host-ca.crt"] if HOST_CA.exists() else []
    # /opt/dagster is the image's VOLUME; buildah run cannot bind over it, so mount elsewhere.
    proc = subprocess.Popen(
        [*BUILDAH, "run", "--isolation", "chroot", "-v", f"{share}:/srv/share", *_ca_mount(),
         *env, "--env", "RUNNER_SHARE=/srv/share", container, "--", *entrypoint, "all",
         "--port", str(port)],
        stdout=open(tmp_path / "container.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
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

        wait_for("the dropped file to load inside the container", loaded, timeout=300)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)
    print((tmp_path / "container.log").read_text()[-3000:])

    def leftovers() -> list[str]:
        return [
            " ".join(p.info["cmdline"] or [])
            for p in psutil.process_iter(["cmdline"])
            if "/srv/share" in " ".join(p.info["cmdline"] or [])
        ]

    wait_for("the container's processes to be gone", lambda: not leftovers(), timeout=30)
