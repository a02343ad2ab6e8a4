from __future__ import annotations

from pathlib import Path

import yaml

from runner.workspace import Entry, render, write_if_changed


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
