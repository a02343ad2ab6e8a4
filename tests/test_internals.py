"""Dagster's private symbols, taken in one module (runner/dagster_side/internals.py): these
tests fail loudly when an upgrade moves one."""

from __future__ import annotations

import ast
import inspect

from runner.dagster_side import internals
from tests.service import ROOT


def test_every_private_symbol_the_runner_uses_is_there() -> None:
    for name in internals.WHERE:
        assert getattr(internals, name) is not None, name


def test_no_other_module_of_the_runner_imports_dagster_internals() -> None:
    """boot/ runs in a location's own environment, where the runner is not importable."""
    found = []
    for path in sorted((ROOT / "runner").rglob("*.py")):
        if "boot" in path.parts or path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            private = [n for n in names if n.startswith("dagster") and "._" in n]
            found += [f"{path.relative_to(ROOT)}: {n}" for n in private]
    assert found == []


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
    assert "self._workspace_process_context" in init  # what runner/dagster_side/daemon.py reloads
    from dagster._core.workspace.context import WorkspaceProcessContext

    # What runner/dagster_side/reload.py's refresh_changed uses of it, on the daemon's context.
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
