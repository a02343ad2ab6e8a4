"""The reconcile decisions, without processes: desired + actual -> actions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from runner.envs import env
from runner.lifecycle.model import Abandon, Generation, Location, Prepare, Reject, Remove, plan
from runner.share.scan import LocationSpec, SpecError
from runner.share.script import ScriptMetadata

META = ScriptMetadata(dependencies=("dagster",), requires_python=None, tool={})


def spec(name: str, digest: str) -> LocationSpec:
    return LocationSpec(name, f"{name}.py", Path(f"/share/{name}.py"), digest, META)


class FakeServer:
    port, server_id, pid, start = 4000, "fake", 4242, "cold"

    def __init__(self, exit_code: int | None = None) -> None:
        self.exit_code = exit_code

    def exited(self) -> int | None:
        return self.exit_code


def serving(s: LocationSpec, server: FakeServer | None = None) -> Location:
    gen = Generation(spec=s, env=env.spec_for(META), prepared=0.0, server=server or FakeServer())
    return Location(s.name, current=gen)


def test_new_files_are_prepared_and_gone_files_removed_first() -> None:
    actual = {"old": serving(spec("old", "1"))}
    actions = plan({"new": spec("new", "1")}, actual, now=0)
    assert actions == [Remove("old"), Prepare(spec("new", "1"))]


def test_an_unchanged_file_needs_nothing() -> None:
    s = spec("a", "1")
    assert plan({"a": s}, {"a": serving(s)}, now=0) == []


def test_an_edit_prepares_a_new_generation_once() -> None:
    actual = {"a": serving(spec("a", "1"))}
    edited = spec("a", "2")
    assert plan({"a": edited}, actual, now=0) == [Prepare(edited)]
    actual["a"] = replace(
        actual["a"], next=Generation(spec=edited, env=env.spec_for(META), prepared=0.0)
    )
    assert plan({"a": edited}, actual, now=0) == []  # already on its way


def test_a_failed_version_is_not_retried_until_the_file_changes() -> None:
    actual = {"a": Location("a", failed_digest="1")}
    assert plan({"a": spec("a", "1")}, actual, now=0) == []
    assert plan({"a": spec("a", "2")}, actual, now=0) == [Prepare(spec("a", "2"))]


def test_bad_metadata_is_rejected_once() -> None:
    error = SpecError("a", "a.py", Path("/share/a.py"), "9", "not valid TOML")
    assert plan({"a": error}, {}, now=0) == [Reject(error)]
    assert plan({"a": error}, {"a": Location("a", failed_digest="9")}, now=0) == []


def test_a_crashed_server_is_restarted_only_after_its_backoff() -> None:
    s = spec("a", "1")
    loc = serving(s, FakeServer(exit_code=-9))
    loc = replace(loc, retry_digest="1", retry_at=10.0)
    assert plan({"a": s}, {"a": loc}, now=5.0) == []
    assert plan({"a": s}, {"a": loc}, now=10.0) == [Prepare(s)]


def test_an_edit_during_a_backoff_is_tried_at_once() -> None:
    loc = Location("a", retry_digest="1", retry_at=100.0)
    assert plan({"a": spec("a", "2")}, {"a": loc}, now=0) == [Prepare(spec("a", "2"))]


def test_a_reverted_edit_abandons_the_next_generation() -> None:
    s = spec("a", "1")
    actual = {"a": serving(s)}
    upcoming = Generation(spec=spec("a", "2"), env=env.spec_for(META), prepared=0.0)
    actual["a"] = replace(actual["a"], next=upcoming)
    assert plan({"a": s}, actual, now=0) == [Abandon("a")]


def test_a_finished_local_write_is_prepared_before_it_is_stable() -> None:
    actual = {"a": serving(spec("a", "1"))}
    early = spec("a", "2")
    assert plan({"a": spec("a", "1")}, actual, now=0, early={"a": early}) == [Prepare(early)]
    assert plan({}, {}, now=0, early={"b": spec("b", "1")}) == [Prepare(spec("b", "1"))]


def test_an_early_error_is_not_reported_while_the_file_may_be_half_written() -> None:
    half = SpecError("a", "a.py", Path("/share/a.py"), "2", "not valid TOML")
    s = spec("a", "1")
    assert plan({"a": s}, {"a": serving(s)}, now=0, early={"a": half}) == []
    assert plan({}, {}, now=0, early={"a": half}) == []


def test_a_file_whose_name_the_static_workspace_uses_is_rejected() -> None:
    actions = plan({"classic": spec("classic", "1")}, {}, now=0, reserved=frozenset({"classic"}))
    assert len(actions) == 1 and isinstance(actions[0], Reject)
    assert "already used in workspace.static.yaml" in actions[0].error.message
