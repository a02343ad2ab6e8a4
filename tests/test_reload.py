"""Loading only what changed in workspace.yaml (``runner.reload``), against real code servers.

``reload`` leans on Dagster's ``WorkspaceProcessContext`` internals: if they move, these
tests fail loudly rather than the webserver and daemon quietly reloading stale entries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from runner.base.files import write_if_changed
from runner.dagster_side import reload
from runner.dagster_side.workspace import Entry, render
from runner.servers import server as servers
from tests.service import asset_file

pytestmark = pytest.mark.slow  # real servers and daemons


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    """Start a real ``dagster api grpc`` for a file with the given assets; stop them all after."""
    started: list[servers.CodeServer] = []

    def start(name: str, assets: list[str]) -> servers.CodeServer:
        path = tmp_path / f"{name}-{len(started)}.py"
        path.write_text(asset_file(assets))
        server = servers.start(
            location=name,
            python=Path(sys.executable),
            file=path,
            host="127.0.0.1",
            env=dict(os.environ),
            workdir=tmp_path / "work",
            sidecars=tmp_path / "servers",
        )
        started.append(server)
        assert server.wait_ready(timeout=120) is None
        return server

    yield start
    for server in started:
        server.stop(grace=5)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        yield instance


def entry(server: servers.CodeServer) -> Entry:
    return Entry(
        server.location, "127.0.0.1", server.port, False, f"{server.location}.py", server.server_id
    )


def assets(context: WorkspaceProcessContext, name: str) -> list[str]:
    location = context.get_current_workspace().code_location_entries[name].code_location
    assert location is not None
    repo = location.get_repository("__repository__")
    return sorted(node.key.to_user_string() for node in repo.asset_graph.asset_nodes)


def test_only_new_and_changed_entries_are_loaded(
    tmp_path: Path, start, instance: DagsterInstance
) -> None:
    a, b = start("a", ["a1"]), start("b", ["b1"])
    workspace = tmp_path / "workspace.yaml"
    write_if_changed(workspace, render([entry(a), entry(b)]))
    with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace)])) as context:
        before = dict(context.get_current_workspace().code_location_entries)
        assert assets(context, "a") == ["a1"] and assets(context, "b") == ["b1"]

        # Nothing changed: nothing is loaded, the very same entries stay.
        assert reload.refresh_changed(context, reload=False) == reload.Outcome((), 2, 0)
        now = context.get_current_workspace().code_location_entries
        assert now["a"] is before["a"] and now["b"] is before["b"]

        # b's new version on a new server: only b is loaded; a is untouched.
        b2 = start("b", ["b2"])
        write_if_changed(workspace, render([entry(a), entry(b2)]))
        assert reload.refresh_changed(context, reload=False) == reload.Outcome(("b",), 1, 0)
        assert context.get_current_workspace().code_location_entries["a"] is before["a"]
        assert assets(context, "b") == ["b2"]
        assert set(context._watch_threads) == {"a", "b"}  # b watched anew, a still watched

        # A user's own entry (no server id): loaded every time, as Dagster would.
        plain = Entry("plain", "127.0.0.1", a.port)
        write_if_changed(workspace, render([entry(a), entry(b2), plain]))
        assert reload.refresh_changed(context, reload=False).loaded == ("plain",)
        assert reload.refresh_changed(context, reload=False).loaded == ("plain",)

        # Removed entries go, and their watch threads with them.
        write_if_changed(workspace, render([entry(b2)]))
        assert reload.refresh_changed(context, reload=False) == reload.Outcome((), 1, 2)
        assert set(context._watch_threads) == {"b"}


def test_the_patched_webserver_reloads_what_changed_and_does_not_watch_runner_servers(
    tmp_path: Path, start, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restored after the test: patch() replaces methods on the class.
    for name in ("reload_workspace", "_start_watch_thread"):
        monkeypatch.setattr(WorkspaceProcessContext, name, getattr(WorkspaceProcessContext, name))
    reload.patch()
    a = start("a", ["a1"])
    workspace = tmp_path / "workspace.yaml"
    write_if_changed(workspace, render([entry(a)]))
    with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace)])) as context:
        before = context.get_current_workspace().code_location_entries["a"]
        b = start("b", ["b1"])
        write_if_changed(workspace, render([entry(a), entry(b)]))
        context.reload_workspace()  # what the reloadWorkspace mutation calls
        entries = context.get_current_workspace().code_location_entries
        assert entries["a"] is before and assets(context, "b") == ["b1"]
        assert context._watch_threads == {}  # the runner publishes its servers' changes

        # A user's own entry is watched, as Dagster does.
        write_if_changed(workspace, render([entry(a), Entry("plain", "127.0.0.1", b.port)]))
        context.reload_workspace()
        assert set(context._watch_threads) == {"plain"}
