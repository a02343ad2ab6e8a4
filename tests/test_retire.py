"""When retired servers are stopped, without processes: a fake server and a fake clock."""

from __future__ import annotations

import queue
import threading

from runner.servers.retire import OVERDUE_AFTER, Retirements, Stopped


class FakeServer:
    port, server_id, pid, start = 4000, "fake", 4242, "cold"

    def __init__(self) -> None:
        self.stopped = threading.Event()

    def exited(self) -> int | None:
        return 0 if self.stopped.is_set() else None

    def stop(self, *, grace: float) -> None:
        self.stopped.set()


def setup() -> tuple[Retirements, queue.Queue[Stopped], list[float]]:
    now, done = [0.0], queue.Queue()
    return Retirements(grace=1, done=done.put, clock=lambda: now[0]), done, now


def test_a_server_is_stopped_only_once_a_workspace_without_it_is_published() -> None:
    retirements, done, _ = setup()
    old = FakeServer()
    retirements.add(old, None)
    retirements.submitted(7)  # the first version without it
    retirements.stop_due(published=6)
    assert not old.stopped.is_set() and retirements.items()[0].server is old
    retirements.stop_due(published=7)
    retirements.stopped(done.get(timeout=10))
    assert old.stopped.is_set() and retirements.items() == []


def test_a_server_no_workspace_pointed_at_is_stopped_at_once() -> None:
    retirements, done, _ = setup()
    never_published = FakeServer()
    retirements.add(never_published, None, immediately=True)
    retirements.stop_due(published=0)
    assert done.get(timeout=10).item.server is never_published


def test_an_unreachable_webserver_does_not_keep_old_servers_forever() -> None:
    retirements, done, now = setup()
    old = FakeServer()
    retirements.add(old, None)
    retirements.submitted(3)
    now[0] = OVERDUE_AFTER + 1  # version 3 never got published
    retirements.stop_due(published=2)
    assert done.get(timeout=10).item.server is old
