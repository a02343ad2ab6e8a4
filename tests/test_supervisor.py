"""The real ``Supervisor`` loop with fake code servers, a fake environment store and a clock
the test moves: its decisions over a scripted history, in well under a second of waiting.

The share, the scanner, workspace.yaml, the status file and the error servers are real; only
what would start processes (uv, ``dagster api grpc``) and time itself are replaced.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from runner.envs import env as envs
from runner.service.config import Settings
from runner.service.supervisor import Supervisor
from tests.service import asset_file, wait_for

_ports = itertools.count(41000)
T = TypeVar("T")


class FakeSidecar:
    def ignored(self) -> list[str]:
        return []

    def reload_requested(self) -> bool:
        return False


class FakeServer:
    """Answers at once; ``crash()`` makes it exit as a SIGKILLed process would."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.port = next(_ports)
        self.pid = self.port  # unique, and never a real process
        self.server_id = f"{location}-{self.port}"
        self.start = "warm"
        self.socket = None
        self.user = None
        self.where = f"port {self.port}"
        self.sidecar = FakeSidecar()
        self.exit_code: int | None = None
        self.started = 0.0
        self.answer = threading.Event()
        self.answer.set()

    def wait_ready(self, *, timeout: float) -> None:
        self.answer.wait(timeout)  # answers when the test says so (at once by default)
        return None  # loaded, no load error

    def exited(self) -> int | None:
        return self.exit_code

    def exit_reason(self) -> str:
        return f"exited with code {self.exit_code}"

    def reload_requested(self) -> bool:
        return self.sidecar.reload_requested()

    def crash(self) -> None:
        self.exit_code = -9

    def stop(self, *, grace: float, terminate: object = None) -> None:
        if self.exit_code is None:
            self.exit_code = 0


class FakeStore(envs.EnvStore):
    """Every environment is already built: no uv."""

    def get(self, spec: envs.EnvSpec) -> envs.Env:
        return envs.Env(spec.key, self.path(spec.key))

    def remove(self, key: str) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, root: Path) -> None:
        self.code = root / "share" / "code_location"
        self.workspace = root / "share" / "dagster_home" / "workspace.yaml"
        self.clock = Clock()
        self.servers: list[FakeServer] = []
        self.hold_answers = False  # new servers answer only when the test sets theirs
        settings = Settings(
            code_dir=self.code,
            workspace_path=self.workspace,
            state_dir=root / "state",
            webserver_url=None,
        )
        self.sup = Supervisor(
            settings,
            clock=self.clock,
            store=FakeStore(root / "state" / "envs"),
            start_server=self._start,
        )

    def _start(self, *, location: str, **_options: Any) -> FakeServer:
        server = FakeServer(location)
        if self.hold_answers:
            server.answer.clear()
        self.servers.append(server)
        return server

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.sup.changed()
        self.sup.turn(wait=0)

    def until(self, what: str, check: Callable[[], T], timeout: float = 10) -> T:
        """Turn the loop (no time passes on its clock) until ``check`` holds; a worker's
        answer (a server ready, one stopped) arrives as a message it waits for briefly."""

        def turned() -> T:
            self.sup.turn(wait=0.01)
            return check()

        return wait_for(what, turned, timeout=timeout, every=0)

    def wait_seen(self, relpath: str, state: str = "waiting-for-stable") -> None:
        """Until the status file shows ``relpath`` in ``state`` (the loop has scanned it)."""
        status = self.workspace.parent / ".runner-status.json"

        def seen() -> bool:
            try:
                rows = json.loads(status.read_text())["files"]
            except (FileNotFoundError, ValueError):
                return False
            return any(r["file"] == relpath and r["state"] == state for r in rows)

        self.until(f"{relpath} {state}", seen)

    def tick_until(self, what: str, check: Callable[[], T]) -> T:
        """Let time pass, half a second per look, until ``check`` holds."""

        def ticked() -> T:
            self.advance(0.5)
            self.sup.turn(wait=0.01)
            return check()

        return wait_for(what, ticked, timeout=20, every=0)

    def ports(self) -> dict[str, int]:
        try:
            data = yaml.safe_load(self.workspace.read_text()) or {}
        except FileNotFoundError:
            return {}
        return {
            e["grpc_server"]["location_name"]: e["grpc_server"]["port"]
            for e in data.get("load_from") or []
        }

    def serving(self, name: str, server: FakeServer) -> bool:
        return self.ports().get(name) == server.port


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    h.code.mkdir(parents=True)
    h.sup.begin()
    try:
        yield h
    finally:
        h.sup.stop()
        h.sup.end()


def test_a_file_is_served_once_stable_and_a_crash_restarts_it_with_growing_delays(
    harness: Harness,
) -> None:
    (harness.code / "a.py").write_text(asset_file(["x"]))
    harness.advance(0)
    harness.wait_seen("a.py")
    assert not harness.servers  # not stable yet: nothing is started
    harness.advance(1.5)
    first = harness.until("a server for a.py", lambda: harness.servers and harness.servers[0])
    harness.until("a.py in workspace.yaml", lambda: harness.serving("a", first), timeout=10)

    # Dies 5 s after its spawn: restarted after 1 s, not at once.
    harness.clock.now += 5
    first.crash()
    harness.sup.wake()
    harness.until("the crash noticed", lambda: (loc := harness.sup.locations["a"]).retry_at and loc)
    assert harness.sup.locations["a"].retry_at == harness.clock.now + 1
    assert len(harness.servers) == 1
    harness.advance(1)
    second = harness.until("a restart", lambda: len(harness.servers) == 2 and harness.servers[1])
    harness.until("the restart served", lambda: harness.serving("a", second), timeout=10)

    # Dies soon again: the next delay doubles.
    harness.clock.now += 3
    second.crash()
    harness.sup.wake()
    harness.until("the second crash noticed", lambda: harness.sup.locations["a"].retry_at)
    assert harness.sup.locations["a"].retry_at == harness.clock.now + 2
    assert harness.sup.locations["a"].attempts == 2


def test_an_edit_is_served_by_a_new_server_and_a_deletion_removes_the_location(
    harness: Harness,
) -> None:
    (harness.code / "b.py").write_text(asset_file(["x"]))
    first = harness.tick_until("b.py served", lambda: harness.servers and harness.servers[0])
    harness.until("b.py in workspace.yaml", lambda: harness.serving("b", first), timeout=10)
    (harness.code / "b.py").write_text(asset_file(["x", "y"]))
    edited = harness.tick_until(
        "the edit's server", lambda: len(harness.servers) == 2 and harness.servers[1]
    )
    harness.until("the edit served", lambda: harness.serving("b", edited), timeout=10)
    harness.until("the old server stopped once unpublished", lambda: first.exit_code == 0)
    (harness.code / "b.py").unlink()
    harness.advance(0)
    harness.until("the deletion", lambda: "b" not in harness.ports(), timeout=10)
    assert "b" not in harness.sup.locations


def test_a_deletion_while_the_next_version_is_starting_stops_both(harness: Harness) -> None:
    (harness.code / "c.py").write_text(asset_file(["x"]))
    first = harness.tick_until("c.py started", lambda: harness.servers and harness.servers[0])
    harness.until("c.py served", lambda: harness.serving("c", first), timeout=10)
    harness.hold_answers = True
    (harness.code / "c.py").write_text(asset_file(["x", "y"]))
    starting = harness.tick_until(
        "the edit's server", lambda: len(harness.servers) == 2 and harness.servers[1]
    )
    (harness.code / "c.py").unlink()
    harness.tick_until("the deletion", lambda: "c" not in harness.ports())
    harness.until("the starting server stopped", lambda: starting.exit_code == 0, timeout=10)
    harness.until("the served one stopped", lambda: first.exit_code == 0, timeout=10)
    starting.answer.set()  # it answers after all: too late, nothing is served
    harness.advance(1)
    assert "c" not in harness.ports() and "c" not in harness.sup.locations
    assert len(harness.servers) == 2


def test_a_static_workspace_name_appearing_rejects_the_files_location(harness: Harness) -> None:
    (harness.code / "d.py").write_text(asset_file(["x"]))
    first = harness.tick_until("d.py started", lambda: harness.servers and harness.servers[0])
    harness.until("d.py served", lambda: harness.serving("d", first), timeout=10)
    static = harness.workspace.parent / "workspace.static.yaml"
    static.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"grpc_server": {"host": "localhost", "port": 4999, "location_name": "d"}}
                ]
            }
        )
    )
    harness.tick_until("the collision shown", lambda: "d~name-collision" in harness.ports())
    assert harness.ports()["d"] == 4999  # the static entry keeps its name
    harness.until("the file's server stopped", lambda: first.exit_code == 0, timeout=10)
    static.unlink()  # the name is free again: the file is served once more
    again = harness.tick_until(
        "d.py served again",
        lambda: len(harness.servers) == 2 and harness.serving("d", harness.servers[1]),
    )
    assert again and "d~name-collision" not in harness.ports()
