"""A Docker engine for the tests: the local base image, the project's image, compose.

Images cannot be pulled here, so the base is made once per machine from debootstrap and
``docker import`` (kept by name); the Dockerfile's ``BASE`` build argument takes it, as users
pass ``debian:bookworm-slim`` or their own. Behind a TLS-inspecting proxy the base carries
the proxy's CA in ``/usr/local/share/ca-certificates/``, as corporate base images do.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.needs import missing
from tests.service import ROOT

BASE = "dagster-code-runner-base:bookworm"
IMAGE = "dagster-code-runner:test"
POSTGRES_IMAGE = "dagster-code-runner-postgres:test"
SERVER_IMAGE = "dagster-code-runner-server:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # a TLS-inspecting proxy's CA, if any


def docker(*args: str, timeout: float = 1200) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker {' '.join(args[:3])}...: {proc.stderr[-3000:]}"
    return proc.stdout


def require_engine() -> None:
    """Skip (fail under CI) unless a Docker engine answers and debootstrap is here."""
    if shutil.which("docker") is None:
        missing("needs Docker (apt-get install docker.io; dockerd --storage-driver vfs)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        missing("needs a running Docker engine (dockerd --storage-driver vfs)")
    if shutil.which("debootstrap") is None:
        missing("needs debootstrap for a local base image (apt-get install debootstrap)")


def compose_command() -> list[str]:
    """``docker compose`` (v2) if the client has it, else Debian's ``docker-compose``."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    missing("needs Docker Compose (apt-get install docker-compose)")


def local_base() -> str:
    """A Debian bookworm base image, made once per machine (nothing can be pulled here)."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0:
        return BASE
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as rootfs:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", rootfs],
            check=True,
            capture_output=True,
            timeout=900,
        )
        Path(rootfs).chmod(0o755)  # the image's /: a temporary folder is the user's alone
        if HOST_CA.exists():
            cas = Path(rootfs) / "usr/local/share/ca-certificates"
            cas.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HOST_CA, cas / "host-ca.crt")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-", BASE],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
            timeout=600,
        )
        tar.wait()
    return BASE


def build_runner_image() -> str:
    """The project's image, built from the Dockerfile as users build it (layers cached)."""
    docker("build", "--build-arg", f"BASE={local_base()}", "-t", IMAGE, str(ROOT))
    return IMAGE


def build_postgres_image() -> str:
    """PostgreSQL on the local base, for compose.yaml's POSTGRES_IMAGE."""
    context = ROOT / "tests" / "images" / "postgres"
    docker("build", "--build-arg", f"BASE={local_base()}", "-t", POSTGRES_IMAGE, str(context))
    return POSTGRES_IMAGE


def build_server_image() -> str:
    """A slim image for code servers in containers (see tests/images/server/Dockerfile)."""
    context = ROOT / "tests" / "images" / "server"
    docker("build", "--build-arg", f"BASE={local_base()}", "-t", SERVER_IMAGE, str(context))
    return SERVER_IMAGE
