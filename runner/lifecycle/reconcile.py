"""One pass of the loop, decided: the files on the share against what the runner holds.

Level-triggered: events only wake the loop, and each pass looks at the whole picture again.
``reconcile`` returns the steps, in order, each computed on the locations as the ones before
it left them; the supervisor keeps each step's location and carries out its effects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from runner.envs import env as envs
from runner.lifecycle import transitions
from runner.lifecycle.model import Abandon, Action, Location, Reject, Remove, plan
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
) -> list[Step]:
    """What ``plan()`` asks for, then each location promoted where its file allows."""
    held, steps = dict(locations), []

    def take(step: Step) -> None:
        steps.append(step)
        if step.loc is None:
            held.pop(step.name, None)
        else:
            held[step.name] = step.loc

    for action in plan(desired, held, now, early, reserved):
        take(act(action, held, keep_last_good=keep_last_good, env_for=env_for, now=now))
    for loc in list(held.values()):
        stable = desired.get(loc.name)
        take(transitions.promote(loc, stable=stable.digest if stable else None, now=now))
    return steps


def act(
    action: Action,
    locations: Mapping[str, Location],
    *,
    keep_last_good: bool,
    env_for: Callable[[LocationSpec], envs.EnvSpec],
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
    return transitions.prepare(
        locations.get(action.spec.name),
        action.spec,
        env_for(action.spec),
        last_good=action.last_good,
        now=now,
    )


def serves_well(loc: Location) -> bool:
    """The current version's server is alive and loaded its file."""
    return loc.current is not None and loc.current.alive() and loc.current.load_error is None


def died(loc: Location, *, now: float) -> Step | None:
    """The step for a watched server that died on its own, if ``loc``'s has."""
    if not transitions.watched(loc) or loc.current is None or loc.current.alive():
        return None
    how = loc.current.server.exit_reason() if loc.current.server else ""
    return transitions.exited(loc, how=how, now=now)
