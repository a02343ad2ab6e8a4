from __future__ import annotations

from pathlib import Path

import yaml

from runner.base.files import write_if_changed
from runner.dagster_side.workspace import Entry, render


def test_render_is_sorted_grpc_server_entries() -> None:
    text = render([Entry("b", "127.0.0.1", 2), Entry("a.x", "127.0.0.1", 1)])
    assert yaml.safe_load(text) == {
        "load_from": [
            {"grpc_server": {"host": "127.0.0.1", "port": 1, "location_name": "a.x"}},
            {"grpc_server": {"host": "127.0.0.1", "port": 2, "location_name": "b"}},
        ]
    }
    assert yaml.safe_load(render([])) == {"load_from": []}


def test_write_only_when_the_content_changes(tmp_path: Path) -> None:
    path = tmp_path / "workspace.yaml"
    assert write_if_changed(path, "a\n")
    inode = path.stat().st_ino
    assert not write_if_changed(path, "a\n")
    assert path.stat().st_ino == inode
    assert write_if_changed(path, "b\n")
    assert path.read_text() == "b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["workspace.yaml"]  # no temp files left


def test_static_locations_are_named_as_dagster_names_them(tmp_path: Path) -> None:
    import pytest

    from runner.dagster_side.workspace import load_static

    path = tmp_path / "workspace.static.yaml"
    assert load_static(path).names == frozenset()  # absent: nothing
    path.write_text(
        "load_from:\n"
        "  - python_file: {relative_path: jobs.py, location_name: classic}\n"
        "  - python_module: my_pkg\n"
        "  - grpc_server: {host: other, port: 4000, location_name: remote}\n"
    )
    static = load_static(path)
    assert static.names == {"classic", "my_pkg", "remote"}
    text = render([Entry("mine", "127.0.0.1", 1)], static)
    assert yaml.safe_load(text)["load_from"] == [
        {"python_file": {"relative_path": "jobs.py", "location_name": "classic"}},
        {"python_module": "my_pkg"},
        {"grpc_server": {"host": "other", "port": 4000, "location_name": "remote"}},
        {"grpc_server": {"host": "127.0.0.1", "port": 1, "location_name": "mine"}},
    ]
    for bad, message in [
        ("load_from: [", "not valid YAML"),
        ("- a\n", "must be a mapping with a 'load_from' list"),
        (
            "load_from:\n  - python_file: {relative_path: a.py, location_name: x}\n"
            "  - python_module: {module_name: b, location_name: x}\n",
            "multiple locations with the same name",
        ),
        ("load_from:\n  - no_such_kind: 1\n", "not a valid workspace"),
    ]:
        path.write_text(bad)
        with pytest.raises(ValueError, match=message):
            load_static(path)


def test_a_start_with_no_runner_serving_keeps_only_the_static_entries(tmp_path: Path) -> None:
    from runner.base.paths import STATIC_NAME
    from runner.dagster_side.workspace import load_static, without_servers

    path, static = tmp_path / "workspace.yaml", tmp_path / STATIC_NAME
    static.write_text("load_from:\n  - grpc_server: {host: other, port: 4000, location_name: r}\n")
    path.write_text(render([Entry("gone", "127.0.0.1", 1)], load_static(static)))
    without_servers(path)
    assert yaml.safe_load(path.read_text())["load_from"] == [
        {"grpc_server": {"host": "other", "port": 4000, "location_name": "r"}}
    ]
    static.write_text("load_from: [")  # broken: the runner reports it; nothing is dropped
    path.write_text(before := render([Entry("gone", "127.0.0.1", 1)]))
    without_servers(path)
    assert path.read_text() == before
