"""The daemon wrapper leans on Dagster internals: these tests fail loudly if they move."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import follow
from runner.server import free_port
from runner.workspace import Entry, render, write_if_changed
from tests.service import ROOT, wait_for

pytestmark = pytest.mark.slow  # real servers and daemons


def test_the_dagster_internals_we_use_are_there() -> None:
    from dagster._daemon import controller

    assert isinstance(controller.RELOAD_WORKSPACE_INTERVAL, int | float)
    assert isinstance(controller.THREAD_CHECK_INTERVAL, int | float)
    params = inspect.signature(controller.daemon_controller_from_instance).parameters
    assert "workspace_load_target" in params
    init = inspect.getsource(controller.DagsterDaemonController.__init__)
    assert "self._workspace_process_context = workspace_process_context" in init
    for method in ("check_daemon_threads", "check_daemon_heartbeats"):
        assert callable(getattr(controller.DagsterDaemonController, method))
    init = inspect.getsource(controller.DagsterDaemonController.__init__)
    assert "self._workspace_process_context" in init  # what runner/daemon.py reloads
    from dagster._core.workspace.context import WorkspaceProcessContext

    # What runner/reload.py's refresh_changed uses of it, on the daemon's context.
    for method in ("_load_location", "_start_watch_thread"):
        assert callable(getattr(WorkspaceProcessContext, method))
    context_init = inspect.getsource(WorkspaceProcessContext.__init__)
    for attribute in (
        "_current_workspace",
        "_lock",
        "_watch_threads",
        "_watch_thread_shutdown_events",
    ):
        assert f"self.{attribute}" in context_init, attribute
    assert "_origins" in inspect.getsource(WorkspaceProcessContext)


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
