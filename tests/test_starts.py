"""Queued server starts: what status says of one that waits (fakes, milliseconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.envs import env as envs
from runner.lifecycle.model import Generation
from runner.servers import warm
from runner.servers.starts import ServerDone, ServerOptions, Starts
from tests.service import wait_for
from tests.test_decisions import ENV, FakeServer, spec


class Server(FakeServer):
    started = 0.0

    class sidecar:  # the server's sidecar files
        @staticmethod
        def ignored() -> list[str]:
            return []

    def wait_ready(self, *, timeout: float) -> None:
        return None


def test_a_start_says_whether_it_waits_for_a_slot_or_for_its_template(tmp_path: Path) -> None:
    template_ready = False

    def start_server(**_: Any) -> Server:
        if not template_ready:
            raise warm.NotReady
        return Server()

    options = ServerOptions(state_dir=tmp_path, host="127.0.0.1", inherited={}, warm_starts=False)
    done: list[ServerDone] = []
    starts = Starts(options, start_server=start_server, done=done.append)
    gen = Generation(spec("a", "1"), ENV, prepared=0.0)
    env = envs.Env("key", tmp_path / "env")
    try:
        starts.queue(gen, env)
        assert starts.waiting(gen) == "waiting for a start slot"
        [(taken, where)] = starts.take(1, wanted=lambda _: True)
        assert starts.spawn(taken, where) is None  # its template is starting: queued again
        assert starts.waiting(gen) == "waiting for its environment's template to start"
        template_ready = True
        [(taken, where)] = starts.take(1, wanted=lambda _: True)
        assert starts.spawn(taken, where) is not None
        assert starts.waiting(gen) is None and len(starts) == 0
        wait_for("the start to be awaited", lambda: done)
        assert done[0].name == "a" and done[0].error is None
    finally:
        starts.shutdown()
