"""The daemon wrapper leans on Dagster internals: these tests fail loudly if they move."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.base.files import write_if_changed
from runner.dagster_side import follow
from runner.dagster_side.workspace import Entry, render
from runner.servers.server import free_port
from tests.service import ROOT, wait_for

pytestmark = pytest.mark.slow  # real servers and daemons


def test_daemon_follows_workspace_changes_and_acknowledges_them(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    workspace = home / "workspace.yaml"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "daemon", "--share", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("the daemon to load the empty workspace", lambda: _acked(workspace), timeout=60)
        # A location whose server is down: the daemon records the error and moves on.
        write_if_changed(workspace, render([Entry("nowhere", "127.0.0.1", free_port("127.0.0.1"))]))
        wait_for("the daemon to load the new workspace", lambda: _acked(workspace), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert follow.read_ack(workspace) is None  # a stopped daemon is not waited for


def _acked(workspace: Path) -> bool:
    ack = follow.read_ack(workspace)
    return ack is not None and ack.fresh() and ack.digest == follow.file_digest(workspace)
