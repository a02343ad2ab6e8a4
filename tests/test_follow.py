"""Following workspace.yaml (``runner.follow``) and the advice for a missing package: fast."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from runner.boot import missing
from runner.dagster_side import follow
from runner.dagster_side.publish import Publisher
from runner.dagster_side.workspace import Entry
from tests.service import wait_for


def test_a_webserver_takes_a_new_version_in_only_after_the_daemon(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("v1\n")
    follow.write_ack(workspace, follow.file_digest(workspace))  # a daemon that has v1
    refreshed: list[str] = []
    follower = follow.WebserverFollower(
        workspace,
        follow.file_digest(workspace),
        lambda: refreshed.append(workspace.read_text()),
        check_every=0.01,
    )
    follower.start()
    try:
        [ack] = follow.webserver_acks(workspace)
        assert ack.digest == follow.file_digest(workspace)
        workspace.write_text("v2\n")
        time.sleep(0.3)
        assert refreshed == []  # the daemon has not loaded v2
        follow.write_ack(workspace, follow.file_digest(workspace))
        wait_for("the follower's refresh", lambda: refreshed == ["v2\n"], timeout=5)
        wait_for(
            "its ack",
            lambda: follow.webserver_acks(workspace)[0].digest == follow.file_digest(workspace),
            timeout=5,
        )
        follow.ack_path(workspace).unlink()  # no daemon follows: no waiting
        workspace.write_text("v3\n")
        wait_for("the follower's refresh", lambda: refreshed[-1:] == ["v3\n"], timeout=5)
    finally:
        follower.stop()
    assert follow.webserver_acks(workspace) == []  # a stopped follower is not waited for


def test_a_dead_webservers_ack_is_not_waited_for(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace.yaml"
    host = socket.gethostname()
    dead = {"digest": "x", "heartbeat": time.time(), "pid": 2**22 + 1, "host": host}
    (tmp_path / f"{follow.WEBSERVER_ACK}.{host}.{dead['pid']}.json").write_text(json.dumps(dead))
    assert follow.webserver_acks(workspace) == []


def test_the_publisher_waits_for_following_webservers_instead_of_asking(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("")
    follow.write_ack(workspace, None, "webserver")  # a following webserver, this process
    published: list[int] = []
    # Nothing listens at the URL: a request would fail and be retried, never published.
    publisher = Publisher(
        workspace, webserver_url="http://127.0.0.1:9", on_published=published.append
    )
    publisher.start()
    try:
        version = publisher.submit([Entry("a", "127.0.0.1", 4000, server_id="a-1")])
        time.sleep(0.3)
        assert published == []
        follow.write_ack(workspace, follow.file_digest(workspace), "webserver")  # it took v1 in
        wait_for("the publish", lambda: published == [version], timeout=5)
    finally:
        publisher.stop()
        follow.ack_path(workspace, "webserver").unlink()


def test_a_missing_package_is_named_with_its_project() -> None:
    def nowhere(name: str) -> None:
        return None

    said = missing.advice("bs4.element", "/nonexistent", find_spec=nowhere)
    assert said is not None and said.startswith("`bs4` is not installed in this file's environment")
    assert '"beautifulsoup4"' in said and "comes from the PyPI project `beautifulsoup4`" in said
    plain = missing.advice("polars", "/nonexistent", find_spec=nowhere)
    assert plain is not None and '"polars"' in plain and "comes from" not in plain
    assert missing.advice("json.nothing", "/nonexistent") is None  # installed: a part missing
    assert missing.advice(None, "/nonexistent", find_spec=nowhere) is None


def test_a_module_beside_the_file_is_a_folder_problem(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("")
    (tmp_path / "pkg").mkdir()
    assert missing.advice("helpers", str(tmp_path), find_spec=lambda name: None) is None
    assert missing.advice("pkg.sub", str(tmp_path), find_spec=lambda name: None) is None
