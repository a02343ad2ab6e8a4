"""What the runner has, and what it should do next: typed records and one pure function.

``plan(desired, actual, now)`` compares the files on the share with the locations the runner
holds and returns actions; it performs none. The supervisor carries them out. Keeping the
decisions here, free of processes and clocks, makes them testable in milliseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from runner.envs import env as envs
from runner.isolation.identity import Identity
from runner.share.scan import Desired, LocationSpec, SpecError


@dataclass(frozen=True, eq=False)
class Problem:
    """Why a location is not served, as the UI and ``runner status`` show it: the runner's own
    words, or the error its code server reported. Plain data, turned into Dagster's error type
    and back by :mod:`runner.dagster_side.error_servers`. Compared by identity: a new failure
    is a new value, even if it reads the same (the UI then gets a fresh error server)."""

    message: str
    summary: str  # one line for the log: the last line of the innermost cause
    text: str  # all of it, stack and causes included, for ``runner status``
    serialized: str | None = None  # Dagster's own, as the server sent it (None: the runner's)

    @classmethod
    def says(cls, message: str) -> Problem:
        """The runner's own explanation (no Python stack to show)."""
        message = message.rstrip() + "\n"
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return cls(message=message, summary=lines[-1] if lines else "unknown error", text=message)


class Server(Protocol):
    """A process or in-process server that a workspace entry can point at."""

    port: int  # 0 when it listens on ``socket``
    socket: str | None  # the Unix socket it listens on, if it does
    server_id: str
    pid: int  # the process serving it (the runner's own, for an in-process error server)
    start: str  # how it started: "warm", "cold", or "cold: why" (see ``warm``)
    user: Identity | None  # whom it runs as (None: the runner's own user)

    @property
    def where(self) -> str: ...  # "port 4242" or "socket /path"

    def exited(self) -> int | None: ...

    def exit_reason(self) -> str: ...  # how it ended, e.g. "was killed by SIGKILL"

    def reload_requested(self) -> bool: ...  # the UI's Reload on its location, once each

    def stop(self, *, grace: float) -> None: ...


_serials = itertools.count(1)


@dataclass(frozen=True)
class Generation:
    """One attempt at serving one version of a file. Immutable: a change is a new value
    with the same ``serial``."""

    spec: LocationSpec
    env: envs.EnvSpec
    prepared: float  # when the runner began preparing it (building, or finding, its env)
    server: Server | None = None
    spawned: float | None = None  # when its server was started
    ready: bool = False  # answered and loaded; served once its file is stable
    load_error: Problem | None = None  # Dagster's own, from the server
    ignored: tuple[str, ...] = ()  # definitions Dagster dropped (no Definitions in the file)
    last_good: bool = False  # the last good version again, while the file's version is broken
    serial: int = field(default_factory=_serials.__next__)  # which attempt this is

    @property
    def digest(self) -> str:
        return self.spec.digest

    def alive(self) -> bool:
        return self.server is not None and self.server.exited() is None


@dataclass(frozen=True)
class Location:
    """Everything the runner holds for one location name. Immutable: the decisions in
    :mod:`lifecycle` return the next value."""

    name: str
    current: Generation | None = None  # what workspace.yaml points at
    next: Generation | None = None  # being built or started
    error: Problem | None = None  # shown in the UI while set
    failed_digest: str | None = None  # this version failed: not retried until the file changes
    retry_digest: str | None = None  # this version is retried (crash, unreachable index)...
    retry_at: float | None = None  # ...at this time
    attempts: int = 0  # consecutive crashes or transient failures, for the backoff
    refresh: bool = False  # the next build asks the indexes again (a retry from the UI)
    # For ``python -m runner status`` (times on the runner's clock):
    last_loaded: float | None = None  # a version last loaded without error
    last_error: Problem | None = None  # kept after recovery
    last_error_at: float | None = None


@dataclass(frozen=True)
class Prepare:
    spec: LocationSpec
    #: Serve this last good version again (its server died while the file's current version
    #: is broken): from the runner's copy of it, served without waiting for the share.
    last_good: bool = False


@dataclass(frozen=True)
class Remove:
    name: str


@dataclass(frozen=True)
class Abandon:
    name: str


@dataclass(frozen=True)
class Reject:
    error: SpecError
    #: The static workspace uses the name: nothing of the file's may serve under it.
    collision: bool = False


Action = Prepare | Remove | Abandon | Reject


def plan(
    desired: Mapping[str, Desired],
    actual: Mapping[str, Location],
    now: float,
    early: Mapping[str, Desired] | None = None,
    reserved: frozenset[str] = frozenset(),
) -> list[Action]:
    """What to do so that ``actual`` converges on ``desired``. Removals come first.

    ``early`` holds files a local writer has finished that are not yet stable: they are
    prepared ahead (the server starts while the stability window runs out), but an error in
    one is not reported, since the file may still be half-written. ``reserved`` names are
    taken by the user's static workspace: a file that would get one is rejected.
    """
    early = early or {}
    names = set(desired) | set(early)
    actions: list[Action] = [Remove(name) for name in sorted(actual) if name not in names]
    for name in sorted(names):
        want = early.get(name)
        if want is None or isinstance(want, SpecError):
            want = desired.get(name)
        if want is None:
            continue
        loc = actual.get(name)
        if loc is not None and want.digest == loc.failed_digest:
            if _last_good_down(loc) and loc.next is None and now >= (loc.retry_at or 0):
                assert loc.current is not None
                actions.append(Prepare(loc.current.spec, last_good=True))
            continue  # failed already: wait for the file to change
        if name in reserved:
            actions.append(Reject(collision(want), collision=True))
            continue
        if isinstance(want, SpecError):
            actions.append(Reject(want))
            continue
        if loc is None:
            actions.append(Prepare(want))
            continue
        if loc.next is not None and loc.next.digest == want.digest:
            continue  # on its way
        if loc.retry_at is not None and loc.retry_digest == want.digest:
            if now >= loc.retry_at:
                actions.append(Prepare(want))  # a crash restart or a retry after backoff
            continue
        if loc.current is not None and loc.current.digest == want.digest:
            if loc.next is not None:
                actions.append(Abandon(name))  # an edit was reverted: drop the next one
            continue
        actions.append(Prepare(want))
    return actions


def _last_good_down(loc: Location) -> bool:
    """The server of the version that serves died and is due for a restart."""
    return (
        loc.current is not None
        and loc.retry_at is not None
        and loc.retry_digest == loc.current.digest
    )


def collision(want: Desired) -> SpecError:
    from runner.base.paths import STATIC_NAME

    return SpecError(
        want.name,
        want.relpath,
        want.path,
        want.digest,
        f"the location name {want.name!r} is already used in {STATIC_NAME}; "
        "rename the file or that location",
    )


def ignored_warning(ignored: tuple[str, ...]) -> str:
    """What to say about definitions Dagster dropped from a file without ``Definitions``."""
    return (
        f"no Definitions in the file: Dagster loaded only its assets and ignored "
        f"{', '.join(ignored)}; list them in a dg.Definitions(...) to serve them"
    )
