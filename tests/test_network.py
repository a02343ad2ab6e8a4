"""Roles on two network hosts: webserver and daemon on one, runner and its code servers on
the other, joined by a veth pair between this machine's namespace and a new one."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.envs.env import EnvStore, spec_for
from runner.share.script import parse_metadata
from tests.needs import missing
from tests.service import asset_file, drop, running

pytestmark = pytest.mark.slow

WEB_SIDE, RUNNER_SIDE = "10.213.7.1", "10.213.7.2"

SCRIPT = asset_file(["remote"])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def runner_namespace() -> Iterator[str]:
    """A network namespace holding RUNNER_SIDE, reachable from this one at WEB_SIDE."""
    if shutil.which("ip") is None:
        missing("needs iproute2 (apt-get install iproute2)")
    name = f"rt{uuid.uuid4().hex[:6]}"
    host_if, ns_if = f"vh{name}", f"vn{name}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        missing(f"needs root for a network namespace ({exc.stderr.strip()})")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{WEB_SIDE}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{RUNNER_SIDE}/24", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_webserver_and_daemon_reach_code_servers_on_another_host(
    runner_namespace: str, tmp_path: Path, state_dir: Path
) -> None:
    share = tmp_path / "share"
    # The namespace has no route to the package index: build the environment beforehand, as
    # a persistent uv cache and state volume would have it.
    store = EnvStore(state_dir / "envs", for_others=os.geteuid() == 0)  # as the runner's
    store.build(spec_for(parse_metadata(SCRIPT)))
    with (
        running(share, state_dir, tmp_path / "web.log", role="webserver", host=WEB_SIDE) as web,
        running(share, state_dir, tmp_path / "daemon.log", role="daemon"),
    ):
        env = {
            "DAGSTER_WEBSERVER_URL": web.url,
            "RUNNER_SERVER_HOST": "0.0.0.0",
            "RUNNER_ADVERTISE_HOST": RUNNER_SIDE,
        }
        prefix = ("ip", "netns", "exec", runner_namespace)
        with running(share, state_dir, tmp_path / "runner.log", env, "runner", prefix=prefix) as rn:
            drop(rn.code_dir / "remote.py", SCRIPT)
            web.wait_loaded("remote")
            workspace = (share / "dagster_home" / "workspace.yaml").read_text()
            assert f"host: {RUNNER_SIDE}" in workspace
            run_id = web.materialize_all("remote")  # queued: the daemon dequeues it
            assert web.wait_run(run_id) == "SUCCESS", web.run_failure_text(run_id)
        assert rn.leftovers() == []
