"""The compose topology, brought up for real on a temporary copy of ``./share``.

Containers on the compose network are this machine's own test hosts: the tests talk only
to the webserver's published port and to the containers of their own project.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from runner.dagster_side.container_runs import LOCATION_LABEL
from runner.servers.server import free_port
from tests.docker_images import compose_command, docker
from tests.service import ROOT, WebClient, wait_for


class Stack(WebClient):
    """``compose up`` of compose.yaml (and ``overrides``) as project ``name`` in ``folder``."""

    def __init__(
        self, folder: Path, *, image: str, postgres_image: str, overrides: tuple[str, ...] = ()
    ) -> None:
        self.folder = folder
        self.name = f"runner-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port("127.0.0.1")
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.share = folder / "share"
        (self.share / "code_location").mkdir(parents=True)
        for path in (self.share, self.share / "code_location"):
            path.chmod(0o777)  # the image's user (uid 10001) writes the share
        files = ["compose.yaml", *overrides]
        self.command = [
            *compose_command(),
            "--project-name",
            self.name,
            "--project-directory",
            str(folder),
            *[arg for f in files for arg in ("-f", str(ROOT / f))],
        ]
        self.env = {
            **os.environ,
            "RUNNER_IMAGE": image,
            "POSTGRES_IMAGE": postgres_image,
            "RUNNER_NETWORK": self.name,
            "RUNNER_UI_PORT": str(self.port),
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
            # On vfs storage the engine copies the whole image for each container it creates:
            # three at once can take longer than compose's 60 s default.
            "COMPOSE_HTTP_TIMEOUT": "600",
        }

    @property
    def code_dir(self) -> Path:
        return self.share / "code_location"

    def compose(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        assert proc.returncode == 0, f"compose {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc.stdout

    def up(self) -> None:
        self.compose("up", "--detach", "--no-build")
        wait_for("the webserver", self._answers, timeout=300, every=1)

    def _answers(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/server_info", timeout=5).ok
        except requests.RequestException:
            return False

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def containers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.name}"
        return docker("ps", "-a", "-q", "--filter", label).split()

    def run_containers(self) -> list[str]:
        """Containers of runs of this stack's locations (they join its network)."""
        return docker(
            "ps",
            "-a",
            "-q",
            "--filter",
            f"label={LOCATION_LABEL}",
            "--filter",
            f"network={self.name}",
        ).split()

    def remove_run_containers(self) -> None:
        """Exited run containers stay for their logs (Dagster's launcher keeps them)."""
        if ids := self.run_containers():
            docker("rm", "-f", *ids)

    def host_pids(self) -> set[int]:
        """The host pids of every process in the project's containers."""
        pids: set[int] = set()
        for cid in self.containers():
            pids |= {int(p) for p in docker("top", cid, "-eo", "pid").split()[1:]}
        return pids

    def psql(self, sql: str) -> str:
        return docker(
            "exec",
            self.container("postgres"),
            "psql",
            "-U",
            "dagster",
            "-d",
            "dagster",
            "-At",
            "-c",
            sql,
        ).strip()

    def logs(self) -> str:
        proc = subprocess.run(
            [*self.command, "logs", "--no-color", "--tail", "80"],
            capture_output=True,
            text=True,
            env=self.env,
        )
        return proc.stdout + proc.stderr

    def down(self) -> None:
        try:
            self.compose("down", "--volumes", "--timeout", "30")
        except AssertionError:
            # A container the engine was still creating when `up` gave up is listed but not
            # yet removable ("No such container"): a second pass finds it whole.
            time.sleep(5)
            self.compose("down", "--volumes", "--timeout", "30")

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, network and volumes that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        networks = json.loads(
            docker("network", "ls", "--format", "{{json .Name}}")
            .replace("\n", ",")
            .strip(",")
            .join("[]")
        )
        return {
            "containers": self.containers(),
            "networks": [n for n in networks if n.startswith(self.name)],
            "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
        }
