"""One pass of the loop, decided: the files on the share against what the runner holds.

Level-triggered: events only wake the loop, and each pass looks at the whole picture again.
``reconcile`` returns the steps, in order, each computed on the locations as the ones before
it left them; the supervisor keeps each step's location and carries out its effects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from runner.envs import env as envs
from runner.lifecycle import transitions
from runner.lifecycle.model import (
    Abandon,
    Action,
    Location,
    Problem,
    Reject,
    Remove,
    Server,
    plan,
)
from runner.lifecycle.transitions import Step
from runner.share.scan import Desired, LocationSpec


def reconcile(
    desired: Mapping[str, Desired],
    locations: Mapping[str, Location],
    now: float,
    *,
    early: Mapping[str, Desired] | None = None,
    reserved: frozenset[str] = frozenset(),
    keep_last_good: bool,
    env_for: Callable[[LocationSpec], envs.EnvSpec],
    built: Callable[[envs.EnvSpec], envs.Env | None],
) -> list[Step]:
    """What ``plan()`` asks for, then each location promoted where its file allows.
    ``env_for`` says which environment a file needs, ``built`` whether it is built."""
    held, steps = dict(locations), []

    def take(step: Step) -> None:
        steps.append(step)
        if step.loc is None:
            held.pop(step.name, None)
        else:
            held[step.name] = step.loc

    for action in plan(desired, held, now, early, reserved):
        step = act(
            action, held, keep_last_good=keep_last_good, env_for=env_for, built=built, now=now
        )
        take(step)
    for loc in list(held.values()):
        stable = desired.get(loc.name)
        take(transitions.promote(loc, stable=stable.digest if stable else None, now=now))
    return steps


def due(now: float, *times: float | None) -> bool:
    """Whether any of ``times`` (a rescan, a file becoming stable, a retry) has come."""
    return any(t is not None and now >= t for t in times)


def next_retry(locations: Mapping[str, Location]) -> float | None:
    """When the earliest retry of a location is due (a Reload's is due at once)."""
    return transitions.next_retry(list(locations.values()))


def act(
    action: Action,
    locations: Mapping[str, Location],
    *,
    keep_last_good: bool,
    env_for: Callable[[LocationSpec], envs.EnvSpec],
    built: Callable[[envs.EnvSpec], envs.Env | None],
    now: float,
) -> Step:
    """The step one of ``plan()``'s actions takes."""
    if isinstance(action, Remove):
        return transitions.remove(locations[action.name])
    if isinstance(action, Abandon):
        return transitions.abandon(locations[action.name])
    if isinstance(action, Reject):
        return transitions.reject(
            locations.get(action.error.name),
            action.error,
            collision=action.collision,
            keep_last_good=keep_last_good,
            now=now,
        )
    env = env_for(action.spec)
    return transitions.prepare(
        locations.get(action.spec.name),
        action.spec,
        env,
        built=built(env),
        last_good=action.last_good,
        now=now,
    )


def env_built(
    locations: Mapping[str, Location],
    key: str,
    env: envs.Env | None,
    error: envs.BuildError | None,
    *,
    keep_last_good: bool,
    now: float,
) -> list[Step]:
    """Environment ``key`` was built (``env``) or not (``error``): for every location."""
    return [
        transitions.env_done(loc, key, env, error, keep_last_good=keep_last_good, now=now)
        for loc in locations.values()
    ]


def server_answered(
    loc: Location,
    serial: int,
    *,
    start_error: str | None,
    load_error: Problem | None,
    ignored: tuple[str, ...],
    desired: Mapping[str, Desired],
    keep_last_good: bool,
    now: float,
) -> Step:
    """Generation ``serial`` of ``loc`` answered (or did not start: ``start_error``)."""
    stable = desired.get(loc.name)
    return transitions.answered(
        loc,
        serial,
        start_error=start_error,
        load_error=load_error,
        ignored=ignored,
        serves_well=serves_well(loc),
        keep_last_good=keep_last_good,
        stable=stable.digest if stable is not None else None,
        now=now,
    )


def static_changed(locations: Mapping[str, Location]) -> list[Step]:
    """The names the static workspace uses changed: failures are looked at anew."""
    return [transitions.look_again(loc) for loc in locations.values()]


def serves_well(loc: Location) -> bool:
    """The current version's server is alive and loaded its file."""
    return loc.current is not None and loc.current.alive() and loc.current.load_error is None


def reaped(
    locations: Mapping[str, Location],
    desired: Mapping[str, Desired],
    *,
    reload_asked: set[str],
    now: float,
) -> list[Step]:
    """Locations whose Reload the UI asked for are tried again (their file's version as it
    is now); servers that died on their own are restarted or shown as failed."""
    steps = []
    for name, loc in locations.items():
        if name in reload_asked and (want := desired.get(name)) is not None:
            step = transitions.retry_asked(loc, want.digest, now=now)
            steps.append(step)
            if step.loc is None:
                continue
            loc = step.loc
        if (step := died(loc, now=now)) is not None:
            steps.append(step)
    return steps


def unused_envs(used: set[str], locations: Mapping[str, Location], *, busy: set[str]) -> set[str]:
    """Environments this runner used that no location's version and nothing ``busy`` (a
    retiring server, a build) uses any more: to delete."""
    in_use = {gen.env.key for loc in locations.values() for gen in (loc.current, loc.next) if gen}
    return used - in_use - busy


def servers_of(locations: Mapping[str, Location]) -> list[Server]:
    """Every server the locations' versions hold (the current ones and those on their way)."""
    return [
        g.server for loc in locations.values() for g in (loc.current, loc.next) if g and g.server
    ]


def died(loc: Location, *, now: float) -> Step | None:
    """The step for a watched server that died on its own, if ``loc``'s has."""
    if not transitions.watched(loc) or loc.current is None or loc.current.alive():
        return None
    how = loc.current.server.exit_reason() if loc.current.server else ""
    return transitions.exited(loc, how=how, now=now)
