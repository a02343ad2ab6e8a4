"""The lifecycle decisions, as scripted histories: pure, milliseconds.

:class:`History` feeds the real ``reconcile()`` and :mod:`runner.lifecycle.transitions` what
the supervisor would (files
on the share, builds finishing, servers answering or dying, time passing) and keeps the
locations and every effect, without a thread, a process or a clock.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path

from runner.envs import env as envs
from runner.lifecycle import transitions as lifecycle
from runner.lifecycle.model import Abandon, Location, Prepare, Problem, Reject, Remove
from runner.lifecycle.reconcile import died, reconcile, serves_well
from runner.lifecycle.transitions import Count, KeepCopy, Provide, Retire, Say, Start, Step
from runner.servers import starts
from runner.share.scan import Desired, LocationSpec
from runner.share.script import ScriptMetadata

META = ScriptMetadata(dependencies=("dagster",), requires_python=None, tool={})
ENV = envs.spec_for(META)
_pids = itertools.count(5000)


def spec(name: str, version: str) -> LocationSpec:
    return LocationSpec(name, f"{name}.py", Path(f"/share/{name}.py"), version, META)


class FakeServer:
    def __init__(self) -> None:
        self.pid = self.port = next(_pids)
        self.server_id = f"s{self.pid}"
        self.start = "cold"
        self.socket = None
        self.user = None
        self.where = f"port {self.port}"
        self.exit_code: int | None = None

    def exited(self) -> int | None:
        return self.exit_code

    def exit_reason(self) -> str:
        return f"exited with code {self.exit_code}"

    def reload_requested(self) -> bool:
        return False

    def stop(self, *, grace: float) -> None:
        self.exit_code = 0


class History:
    def __init__(self, *, keep_last_good: bool = True) -> None:
        self.keep = keep_last_good
        self.now = 0.0
        self.desired: dict[str, Desired] = {}
        self.reserved: frozenset[str] = frozenset()
        self.locations: dict[str, Location] = {}
        self.effects: list[object] = []
        self.servers: dict[str, FakeServer] = {}  # the latest per location
        self.envs: dict[str, envs.Env] = {}  # built, by key

    def carry(self, step: Step) -> None:
        if step.loc is None:
            self.locations.pop(step.name, None)
        else:
            self.locations[step.name] = step.loc
        self.effects += step.effects

    def since(self, mark: int) -> list[object]:
        return self.effects[mark:]

    def tick(self) -> None:
        """A pass of the loop, as the supervisor makes it."""
        for step in reconcile(
            self.desired,
            self.locations,
            self.now,
            reserved=self.reserved,
            keep_last_good=self.keep,
            env_for=lambda spec: envs.spec_for(spec.metadata, lock=spec.lock),
            built=lambda env: self.envs.get(env.key),
        ):
            self.carry(step)

    def built(self, key: str = ENV.key, *, error: envs.BuildError | None = None) -> None:
        env = None if error else envs.Env(key, Path("/envs") / key)
        if env is not None:
            self.envs[env.key] = env
        for loc in list(self.locations.values()):
            self.carry(
                lifecycle.env_done(loc, key, env, error, keep_last_good=self.keep, now=self.now)
            )

    def spawn(self, name: str) -> FakeServer:
        loc = self.locations[name]
        assert loc.next is not None and any(
            isinstance(e, Start) and e.gen.serial == loc.next.serial for e in self.effects
        ), "spawned without a Start"
        server = self.servers[name] = FakeServer()
        self.carry(lifecycle.spawned(loc, loc.next, server, now=self.now))
        return server

    def answer(self, name: str, serial: int, *, load_error: str | None = None) -> None:
        loc = self.locations[name]
        stable = self.desired.get(name)
        self.carry(
            lifecycle.answered(
                loc,
                serial,
                start_error=None,
                load_error=Problem.says(load_error) if load_error else None,
                ignored=(),
                serves_well=serves_well(loc),
                keep_last_good=self.keep,
                stable=stable.digest if stable else None,
                now=self.now,
            )
        )

    def serve(self, name: str, version: str) -> FakeServer:
        """The file at ``version`` on the share, its env built, its server answering."""
        self.desired[name] = spec(name, version)
        self.tick()
        self.built()
        server = self.spawn(name)
        self.answer(name, self.serial(name))
        return server

    def serial(self, name: str) -> int:
        gen = self.locations[name].next
        assert gen is not None
        return gen.serial

    def reap(self) -> None:
        for loc in list(self.locations.values()):
            if (step := died(loc, now=self.now)) is not None:
                self.carry(step)


def _name(action: object) -> str:
    if isinstance(action, Remove | Abandon):
        return action.name
    if isinstance(action, Reject):
        return action.error.name
    assert isinstance(action, Prepare)
    return action.spec.name


def said(effects: list[object], level: int = logging.ERROR) -> list[str]:
    return [e.text for e in effects if isinstance(e, Say) and e.level == level]


def retired(effects: list[object]) -> list[int]:
    return [e.gen.server.pid for e in effects if isinstance(e, Retire) and e.gen.server]


# --- histories -------------------------------------------------------------------------


def test_a_file_is_built_started_and_served_once_stable() -> None:
    h = History()
    server = h.serve("a", "v1")
    loc = h.locations["a"]
    assert loc.current is not None and loc.current.server is server and loc.next is None
    assert any(isinstance(e, Provide) for e in h.effects)
    assert next(e for e in h.effects if isinstance(e, KeepCopy)).gen.digest == "v1"


def test_a_load_error_while_the_last_good_serves_is_shown_beside_it() -> None:
    h = History()
    good = h.serve("a", "v1")
    mark = len(h.effects)
    h.desired["a"] = spec("a", "v2")
    h.tick()
    h.spawn("a")  # the env is the same: already built
    broken = h.servers["a"]
    h.answer("a", h.serial("a"), load_error="SyntaxError: invalid syntax")
    loc = h.locations["a"]
    assert loc.current is not None and loc.current.server is good  # still served
    assert loc.failed_digest == "v2" and loc.error is not None
    assert "SyntaxError" in loc.error.message
    assert retired(h.since(mark)) == [broken.pid]
    assert Count("load") in h.since(mark)
    assert said(h.since(mark)) == ["a: the new version failed to load: SyntaxError: invalid syntax"]
    h.tick()  # not retried while the file stays as it is
    assert h.locations["a"].next is None

    # Shown in place instead, when the service does not keep the last good version.
    h = History(keep_last_good=False)
    good = h.serve("b", "v1")
    h.desired["b"] = spec("b", "v2")
    h.tick()
    h.spawn("b")
    h.answer("b", h.serial("b"), load_error="SyntaxError")
    loc = h.locations["b"]
    assert loc.current is not None and loc.current.load_error is not None  # the error serves
    assert good.pid in retired(h.effects)


def test_a_transient_build_error_is_retried_with_growing_delays() -> None:
    h = History()
    h.desired["a"] = spec("a", "v1")
    h.tick()
    delays = []
    for _ in range(4):
        h.built(error=envs.BuildError("the index did not answer", transient=True))
        loc = h.locations["a"]
        assert loc.retry_at is not None and loc.error is not None
        delays.append(loc.retry_at - h.now)
        h.now = loc.retry_at - 0.1
        h.tick()
        assert h.locations["a"].next is None  # not before its time
        h.now = loc.retry_at
        h.tick()
        assert h.locations["a"].next is not None  # retried
    assert delays == [5, 10, 20, 40]
    h.built()  # the index is back: the attempts start over
    assert h.locations["a"].attempts == 0


def test_a_crash_soon_after_spawn_following_a_long_build_does_not_reset_the_backoff() -> None:
    h = History()
    h.desired["a"] = spec("a", "v1")
    h.tick()
    h.now = 120.0  # a two-minute build
    h.built()
    server = h.spawn("a")
    h.answer("a", h.serial("a"))
    h.locations["a"] = replace(h.locations["a"], attempts=3)  # it crashed three times before
    h.now = 125.0
    server.exit_code = -9
    h.reap()
    loc = h.locations["a"]
    assert (loc.attempts, loc.retry_at) == (4, 125.0 + 8)  # 5 s of uptime: not healthy
    assert Count("restart") in h.effects
    assert "restarting in 8s (attempt 4)" in (loc.error.message if loc.error else "")
    h.reap()  # noticed once
    assert h.effects.count(Count("restart")) == 1

    # The restart serves a healthy while, then dies: the backoff starts over.
    h.now = loc.retry_at
    h.tick()
    restarted = h.spawn("a")
    h.answer("a", h.serial("a"))
    assert h.locations["a"].error is None
    h.now += lifecycle.HEALTHY_AFTER + 1
    restarted.exit_code = 1
    h.reap()
    assert h.locations["a"].attempts == 1


def test_a_static_workspace_name_appearing_rejects_the_files_location() -> None:
    h = History()
    server = h.serve("a", "v1")
    h.reserved = frozenset({"a"})
    h.tick()
    loc = h.locations["a"]
    assert loc.current is None and server.pid in retired(h.effects)  # no last good under it
    assert loc.error is not None and "already used in workspace.static.yaml" in loc.error.message
    h.tick()  # rejected once
    assert sum(isinstance(e, Count) and e.stage == "spec" for e in h.effects) == 1

    # The name is free again: the supervisor looks again, and the file is prepared.
    h.reserved = frozenset()
    h.carry(lifecycle.look_again(h.locations["a"]))
    h.tick()
    assert h.locations["a"].next is not None and h.locations["a"].next.digest == "v1"


def test_an_edit_reverted_before_its_build_ends_keeps_the_current_server() -> None:
    h = History()
    server = h.serve("a", "v1")
    other = replace(spec("a", "v2"), metadata=ScriptMetadata(("dagster", "six"), None, {}))
    h.desired["a"] = other
    h.tick()
    assert h.locations["a"].next is not None
    h.desired["a"] = spec("a", "v1")  # reverted while v2's env builds
    h.tick()
    loc = h.locations["a"]
    assert loc.next is None and loc.current is not None and loc.current.server is server
    mark = len(h.effects)
    h.built(envs.spec_for(other.metadata).key)  # v2's env arrives late: nothing to start
    assert h.since(mark) == [] and h.locations["a"].next is None


def test_a_deletion_while_the_next_version_is_starting_stops_both() -> None:
    h = History()
    first = h.serve("a", "v1")
    h.desired["a"] = spec("a", "v2")
    h.tick()
    starting = h.spawn("a")
    serial = h.serial("a")
    mark = len(h.effects)
    del h.desired["a"]
    h.tick()
    assert "a" not in h.locations
    assert sorted(retired(h.since(mark))) == sorted([first.pid, starting.pid])
    immediately = [e.immediately for e in h.since(mark) if isinstance(e, Retire)]
    assert immediately == [True, False]  # the unpublished one at once
    # Its late answer changes nothing.
    step = lifecycle.answered(
        Location("a"),
        serial,
        start_error=None,
        load_error=None,
        ignored=(),
        serves_well=False,
        keep_last_good=True,
        stable=None,
        now=h.now,
    )
    assert step.loc == Location("a") and step.effects == ()


def test_a_server_that_dies_while_its_file_is_broken_is_served_again_from_its_copy() -> None:
    h = History()
    server = h.serve("a", "v1")
    h.desired["a"] = spec("a", "v2")
    h.tick()
    h.spawn("a")
    h.answer("a", h.serial("a"), load_error="NameError")
    server.exit_code = -9
    h.now = 10.0
    h.reap()
    h.now = h.locations["a"].retry_at or 0
    h.tick()
    gen = h.locations["a"].next
    assert gen is not None and gen.last_good and gen.digest == "v1"
    again = h.spawn("a")
    h.answer("a", gen.serial)
    loc = h.locations["a"]
    assert loc.current is not None and loc.current.server is again  # served at once
    assert loc.failed_digest == "v2" and loc.error is not None  # the file's failure still shown


def test_a_retry_from_the_ui_builds_a_failed_version_afresh() -> None:
    h = History()
    h.desired["a"] = spec("a", "v1")
    h.tick()
    h.built(error=envs.BuildError("no solution for six==99", transient=False))
    assert h.locations["a"].failed_digest == "v1"
    h.carry(lifecycle.retry_asked(h.locations["a"], "v1", now=h.now))
    h.tick()
    provide = [e for e in h.effects if isinstance(e, Provide)]
    assert [p.refresh for p in provide] == [False, True]  # the indexes are asked again


# --- single decisions ------------------------------------------------------------------


def test_backoff_doubles_up_to_a_cap() -> None:
    delays = [lifecycle.backoff(n, base=1.0, cap=60.0) for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_transient_failure_backs_off_up_to_five_minutes() -> None:
    attempts, now, delays = 0, 0.0, []
    for _ in range(8):
        retry = lifecycle.after_transient_failure(attempts, now=now)
        attempts, now = retry.attempts, retry.at
        delays.append(retry.delay)
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_ready_version_is_served_only_once_its_file_is_stable_at_it() -> None:
    ready = {"ready": True, "last_good": False, "generation": "v2"}
    assert lifecycle.promotion(**ready, stable="v2") == "file"
    assert lifecycle.promotion(**ready, stable="v3") == "wait"  # edited again since
    assert lifecycle.promotion(**ready, stable=None) == "wait"  # still being written
    assert lifecycle.promotion(**{**ready, "ready": False}, stable="v2") == "wait"
    # The last good version again: served at once, whatever the share holds now.
    assert lifecycle.promotion(**{**ready, "last_good": True}, stable="v9") == "last-good"


def test_servers_start_a_few_at_a_time_and_a_hanging_one_gives_up_its_slot() -> None:
    per, cold = starts.WARM_PER_SLOT, starts.start_cost(warm=False)
    assert cold == per and starts.start_cost(warm=True) == 1
    assert starts.start_budget([], now=100.0, slots=2) == 2 * per
    assert starts.start_budget([(99.0, False)], now=100.0, slots=2) == per  # one cold
    assert starts.start_budget([(99.0, False)] * 3, now=100.0, slots=2) == 0
    hung = 100.0 - starts.SLOT_HELD_FOR
    assert starts.start_budget([(hung, False), (99.0, False)], now=100.0, slots=2) == per
    # Warm starts only load the file: several share a slot.
    assert starts.start_budget([(99.0, True)] * 3, now=100.0, slots=2) == 2 * per - 3
    assert starts.start_budget([(99.0, True)] * 2 * per, now=100.0, slots=2) == 0
