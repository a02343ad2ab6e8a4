"""What happens to a location after ``plan()``: pure decisions, no I/O and no clock reads
(``now`` and what was observed are passed in). The supervisor carries them out.

Each decision takes a location as it is and what just happened (an environment built or
failed, a server answered or exited, the UI asked for a retry, the file is stable at a
version) and returns a :class:`Step`: the location afterwards, and the effects to carry out
(servers to retire, an environment to provide, a start to queue, a copy to keep, what to say
in the log, what to count). Locations are immutable: a step is the only way one changes.

The rules, in one place: a new version that fails keeps the last good one serving (unless the
service shows failures in place); a failure outside the file (an index down) is retried with
growing delays, a failure of the file waits for it to change; a server that dies is restarted
with a backoff that starts over once it has served a healthy while; a version is served once
its file is stable at it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

from runner.envs import env as envs
from runner.lifecycle.model import Generation, Location, Problem, Server, ignored_warning
from runner.share import script
from runner.share.scan import LocationSpec, SpecError

#: A crashed server is restarted after 1, 2, 4 ... s, at most a minute apart.
CRASH_BACKOFF = (1.0, 60.0)
#: A build that failed for a reason outside the file is retried after 5, 10 ... s, at most
#: five minutes apart.
TRANSIENT_BACKOFF = (5.0, 300.0)
#: A server that served this long before it exited was healthy: its next crash starts the
#: backoff over.
HEALTHY_AFTER = 60.0


# --- effects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Retire:
    """Stop ``gen``'s server once no published workspace points at it (``immediately``: no
    workspace ever did)."""

    gen: Generation
    immediately: bool = False


@dataclass(frozen=True)
class Provide:
    """Find ``gen``'s environment built, or build it (``refresh``: ask the indexes again)."""

    gen: Generation
    refresh: bool = False


@dataclass(frozen=True)
class Start:
    """``gen``'s environment is ready: start its server when a start slot is free."""

    gen: Generation
    env: envs.Env


@dataclass(frozen=True)
class KeepCopy:
    """``gen`` loaded: keep its bytes, to serve again should the share hold a broken one."""

    gen: Generation


@dataclass(frozen=True)
class Say:
    level: int
    text: str


@dataclass(frozen=True)
class Count:
    """One more failure at ``stage`` (spec, env, start, load), or a ``restart``."""

    stage: str


Effect = Retire | Provide | Start | KeepCopy | Say | Count


@dataclass(frozen=True)
class Step:
    """Location ``name`` afterwards (``None``: forgotten), and what to do about it."""

    name: str
    loc: Location | None
    effects: tuple[Effect, ...] = ()

    def after(self, *effects: Effect) -> Step:
        """The same step, with ``effects`` carried out first."""
        return replace(self, effects=(*effects, *self.effects))


def _step(loc: Location, *effects: Effect) -> Step:
    return Step(loc.name, loc, effects)


# --- backoff ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Try the same version again at ``at``; ``attempts`` in a row have failed."""

    attempts: int
    delay: float
    at: float


def backoff(attempts: int, *, base: float, cap: float) -> float:
    """``base`` doubled for each attempt after the first, up to ``cap``."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def after_crash(attempts: int, *, spawned: float, now: float) -> Retry:
    """A served version's server exited by itself: restart it, backing off while it keeps
    dying soon after its start. Uptime counts from the spawn, not from the build before it."""
    attempts = 1 if now - spawned > HEALTHY_AFTER else attempts + 1
    delay = backoff(attempts, base=CRASH_BACKOFF[0], cap=CRASH_BACKOFF[1])
    return Retry(attempts, delay, now + delay)


def after_transient_failure(attempts: int, *, now: float) -> Retry:
    """A build or start failed for a reason outside the file: retry, backing off."""
    attempts += 1
    delay = backoff(attempts, base=TRANSIENT_BACKOFF[0], cap=TRANSIENT_BACKOFF[1])
    return Retry(attempts, delay, now + delay)


# --- the file's versions ---------------------------------------------------------------


def prepare(
    loc: Location | None,
    spec: LocationSpec,
    env: envs.EnvSpec,
    *,
    built: envs.Env | None,
    last_good: bool,
    now: float,
) -> Step:
    """Begin serving ``spec`` (``last_good``: the last good version again, from its copy):
    whatever was on its way is dropped; its server starts in its environment if that is
    ``built``, else the environment is provided first."""
    loc = loc or Location(spec.name)
    gen = Generation(spec=spec, env=env, prepared=now, last_good=last_good)
    then = Start(gen, built) if built is not None else Provide(gen, refresh=loc.refresh)
    return _step(replace(loc, next=gen, retry_at=None, refresh=False), *_retire_next(loc), then)


def abandon(loc: Location) -> Step:
    """An edit was reverted: the version on its way is not wanted any more."""
    return _step(_abandoned(loc), *_retire_next(loc))


def remove(loc: Location) -> Step:
    """The file is gone: stop everything it had."""
    effects = [*_retire_next(loc), Say(logging.INFO, f"removed {loc.name} (file gone)")]
    if loc.current is not None:
        effects.append(Retire(loc.current))
    return Step(loc.name, None, tuple(effects))


def reject(
    loc: Location | None, error: SpecError, *, collision: bool, keep_last_good: bool, now: float
) -> Step:
    """The file cannot be served as it is (its metadata, its name). A name the static
    workspace uses is the static workspace's: nothing of the file's serves under it."""
    loc = loc or Location(error.name)
    shown = f"{script.escaped(error.relpath)}: {error.message}"
    effects: list[Effect] = [
        *_retire_next(loc),
        Say(logging.ERROR, f"{error.name}: {shown}"),
        Count("spec"),
    ]
    loc = _abandoned(loc)
    if collision and loc.current is not None:
        effects.append(Retire(loc.current))
        loc = replace(loc, current=None)
    failed = _failed(loc, error.digest, Problem.says(shown), keep_last_good=keep_last_good, now=now)
    return failed.after(*effects)


def env_done(
    loc: Location,
    key: str,
    env: envs.Env | None,
    error: envs.BuildError | None,
    *,
    keep_last_good: bool,
    now: float,
) -> Step:
    """Environment ``key`` was built (``env``) or not (``error``): a version waiting for it
    starts, or fails; a failure outside the file is retried."""
    gen = loc.next
    if gen is None or gen.env.key != key or gen.server is not None:
        return _step(loc)  # not waiting for this one
    if env is not None:
        return _step(replace(loc, attempts=0), Start(gen, env))
    assert error is not None
    if error.transient:
        step = failed(
            loc,
            gen,
            f"could not build the environment: {error}",
            transient=True,
            keep_last_good=keep_last_good,
            now=now,
        )
    else:
        why = (
            envs.StaleLock.for_file(gen.spec.path.name)
            if isinstance(error, envs.StaleLock)
            else error
        )
        step = failed(
            loc,
            gen,
            f"could not build the environment:\n{why}",
            keep_last_good=keep_last_good,
            now=now,
        )
    return step.after(Count("env"))


def spawned(loc: Location, gen: Generation, server: Server, *, now: float) -> Step:
    """``gen``'s server was started; it is awaited."""
    text = f"starting {loc.name} on {server.where} (pid {server.pid}, {server.start}{_as(server)})"
    return _step(
        replace(loc, next=replace(gen, server=server, spawned=now)), Say(logging.INFO, text)
    )


def answered(
    loc: Location,
    serial: int,
    *,
    start_error: str | None,
    load_error: Problem | None,
    ignored: tuple[str, ...],
    serves_well: bool,
    keep_last_good: bool,
    stable: str | None,
    now: float,
) -> Step:
    """Generation ``serial``'s server answered (``load_error``: the file did not load) or
    did not start (``start_error``).

    A server that did not start fails the version. One that loaded the file with Dagster's
    load error is served in its place, unless the last good version serves well and is to be
    kept: then the error is shown beside it. ``serves_well``: the current version's server is
    alive and loaded its file. ``stable``: the digest the file is stable at now.
    """
    gen = loc.next
    if gen is None or gen.serial != serial:
        return _step(loc)  # superseded or abandoned meanwhile; its server is retiring
    if start_error is not None:
        step = failed(loc, gen, start_error, keep_last_good=keep_last_good, now=now)
        return step.after(Count("start"))
    counted: tuple[Effect, ...] = (Count("load"),) if load_error is not None else ()
    if load_error is not None and serves_well and keep_last_good:
        step = failed(loc, gen, load_error, keep_last_good=keep_last_good, now=now)
        return step.after(*counted)
    ready = replace(gen, ready=True, load_error=load_error, ignored=ignored)
    step = promote(replace(loc, next=ready), stable=stable, now=now)
    return step.after(*counted)


Promotion = Literal["last-good", "file", "wait"]


def _as(server: Server) -> str:
    return f", as uid {server.user.uid}" if server.user is not None else ""


def promotion(*, ready: bool, last_good: bool, generation: str, stable: str | None) -> Promotion:
    """Whether a ready generation becomes what the workspace points at.

    The file's own version is served only once the file is stable at that very version (a
    save in progress or an edit since keeps the current one); the last good version again
    (its server died while the file is broken) is served at once, as the share holds none.
    """
    if not ready:
        return "wait"
    if last_good:
        return "last-good"
    return "file" if stable == generation else "wait"


def promote(loc: Location, *, stable: str | None, now: float) -> Step:
    """Serve the next version once it is ready and its file is stable at it; the version it
    replaces retires."""
    gen = loc.next
    if gen is None:
        return _step(loc)
    how = promotion(ready=gen.ready, last_good=gen.last_good, generation=gen.digest, stable=stable)
    if how == "wait":
        return _step(loc)
    assert gen.server is not None
    old = (Retire(loc.current),) if loc.current is not None else ()
    where = f"on {gen.server.where} (pid {gen.server.pid})"
    if how == "last-good":  # the file's own version stays failed, and shown beside it
        text = f"serving {loc.name} {where}, the last good version again"
        loc = replace(loc, current=gen, next=None, retry_digest=None, retry_at=None)
        return _step(loc, Say(logging.INFO, text), *old)
    effects: list[Effect] = []
    if gen.load_error is not None:
        effects.append(
            Say(
                logging.ERROR,
                f"{loc.name}: the file failed to load (shown in the UI): {gen.load_error.summary}",
            )
        )
    if gen.ignored:
        effects.append(Say(logging.WARNING, f"{loc.name}: {ignored_warning(gen.ignored)}"))
    effects.append(
        Say(logging.INFO, f"serving {loc.name} {where}, ready in {now - gen.prepared:.1f}s")
    )
    loc = replace(
        loc,
        current=gen,
        next=None,
        failed_digest=None,
        retry_digest=None,
        retry_at=None,
        error=None,
    )
    if gen.load_error is None:
        loc = replace(loc, last_loaded=now)
        effects.append(KeepCopy(gen))
    else:
        loc = replace(loc, last_error=gen.load_error, last_error_at=now)
    return _step(loc, *effects, *old)


def failed(
    loc: Location,
    gen: Generation,
    error: str | Problem,
    *,
    transient: bool = False,
    keep_last_good: bool,
    now: float,
) -> Step:
    """A new version did not make it: show why; retry it only if the cause is outside the
    file (``transient``), with growing delays; otherwise it waits for the file to change."""
    info = error if isinstance(error, Problem) else Problem.says(f"{gen.spec.relpath}: {error}")
    effects: list[Effect] = [Retire(gen, immediately=True)] if gen.server is not None else []
    loc = replace(loc, next=None)
    if transient:
        retry = after_transient_failure(loc.attempts, now=now)
        effects.append(
            Say(logging.ERROR, f"{loc.name}: {info.summary}; retrying in {retry.delay:.0f}s")
        )
        info = Problem.says(f"{info.message.rstrip()}\n(retrying in {retry.delay:.0f}s)")
        loc = replace(
            loc,
            attempts=retry.attempts,
            retry_digest=gen.digest,
            retry_at=retry.at,
            **_showing(info, now),
        )
        return _step(loc, *effects)
    said = (
        info.message.rstrip()
        if isinstance(error, str)
        else "the new version failed to load: " + info.summary
    )
    effects.append(Say(logging.ERROR, f"{loc.name}: {said}"))
    step = _failed(loc, gen.digest, info, keep_last_good=keep_last_good, now=now)
    return step.after(*effects)


def _failed(loc: Location, digest: str, info: Problem, *, keep_last_good: bool, now: float) -> Step:
    """Version ``digest`` failed for a reason in the file: shown until the file changes."""
    effects: tuple[Effect, ...] = ()
    if not keep_last_good and loc.current is not None:
        effects, loc = (Retire(loc.current),), replace(loc, current=None)
    loc = replace(
        loc, failed_digest=digest, retry_digest=None, retry_at=None, **_showing(info, now)
    )
    return _step(loc, *effects)


def _showing(info: Problem, now: float) -> dict:
    return {"error": info, "last_error": info, "last_error_at": now}


def _abandoned(loc: Location) -> Location:
    return replace(loc, next=None) if loc.next is not None else loc


def _retire_next(loc: Location) -> tuple[Effect, ...]:
    gen = loc.next
    return (Retire(gen, immediately=True),) if gen is not None and gen.server is not None else ()


# --- the served version's server -------------------------------------------------------


def watched(loc: Location) -> bool:
    """Whether the exit of ``loc``'s serving server would be news: a version on its way or a
    restart already planned takes care of it."""
    gen = loc.current
    return gen is not None and gen.server is not None and loc.next is None and loc.retry_at is None


def exited(loc: Location, *, how: str, now: float) -> Step:
    """The serving server exited by itself (``how``, e.g. "was killed by SIGKILL"): restart
    it, backing off while it keeps dying soon after its start."""
    gen = loc.current
    assert gen is not None and gen.server is not None
    spawned_at = gen.spawned if gen.spawned is not None else gen.prepared
    retry = after_crash(loc.attempts, spawned=spawned_at, now=now)
    reason = f"the code server (pid {gen.server.pid}) {how}"
    restarting = f"restarting in {retry.delay:.0f}s"
    said = Say(logging.ERROR, f"{loc.name}: {reason}; {restarting} (attempt {retry.attempts})")
    loc = replace(loc, attempts=retry.attempts, retry_digest=gen.digest, retry_at=retry.at)
    if loc.failed_digest is None or loc.error is None:  # else: keep showing the file's failure
        shown = Problem.says(
            f"{gen.spec.relpath}: {reason}; {restarting} (attempt {retry.attempts})"
        )
        loc = replace(loc, **_showing(shown, now))
    return _step(loc, said, Count("restart"))


def retry_asked(loc: Location, digest: str, *, now: float) -> Step:
    """The UI's Reload, with the file at ``digest``: after a failure, build it afresh (the
    indexes are asked again); while it serves, start a new server and swap, as ``dagster
    code-server start`` restarts its child."""
    if loc.next is not None and loc.next.digest == digest:
        return _step(loc)  # already on its way
    failing = (
        loc.error is not None
        or loc.failed_digest is not None
        or (loc.current is not None and loc.current.load_error is not None)
    )
    said = Say(logging.INFO, f"{loc.name}: {'retry' if failing else 'restart'} asked from the UI")
    loc = replace(
        loc, failed_digest=None, attempts=0, refresh=failing, retry_digest=digest, retry_at=now
    )
    return _step(loc, said)


def look_again(loc: Location) -> Step:
    """The static workspace's names changed: a failed version shown is planned again (a name
    collision may be gone, or new)."""
    if loc.failed_digest is not None and loc.error is not None:
        return _step(replace(loc, failed_digest=None))
    return _step(loc)


def next_retry(locations: list[Location]) -> float | None:
    """When the earliest planned retry is due."""
    times = [loc.retry_at for loc in locations if loc.retry_at is not None]
    return min(times) if times else None
