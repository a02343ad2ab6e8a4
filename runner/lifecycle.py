"""What happens to a location after ``plan()``: pure decisions, no I/O and no clock reads
(``now`` and durations are passed in). The supervisor carries them out.

When to try again, and after how long, once a version failed for a reason outside the file
(a host down, a server that crashed); what a server's answer means; when a ready version is
served; when failed versions are looked at again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: A crashed server is restarted after 1, 2, 4 ... s, at most a minute apart.
CRASH_BACKOFF = (1.0, 60.0)
#: A build that failed for a reason outside the file is retried after 5, 10 ... s, at most
#: five minutes apart.
TRANSIENT_BACKOFF = (5.0, 300.0)
#: A server that served this long before it exited was healthy: its next crash starts the
#: backoff over.
HEALTHY_AFTER = 60.0


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


# --- starting servers a few at a time -------------------------------------------------

#: Seconds a starting server holds its start slot at most.
SLOT_HELD_FOR = 15.0


def free_start_slots(spawned: list[float], *, now: float, slots: int) -> int:
    """How many more servers may start now, given when those still starting were spawned.

    Servers starting together share the CPU (importing Dagster alone takes about 1.5 s of
    it): fifty started at once all answer after a minute, a few at a time make the first ones
    visible within seconds and the last ones no later. A server that takes long to start (an
    import that hangs) gives up its slot after ``SLOT_HELD_FOR``.
    """
    holding = sum(1 for at in spawned if now - at < SLOT_HELD_FOR)
    return max(0, slots - holding)


# --- a new generation's server answered, or did not ------------------------------------

Answer = Literal["start-failed", "failed-beside-last-good", "ready"]


def on_answer(
    *, start_error: bool, load_error: bool, serves_well: bool, keep_last_good: bool
) -> Answer:
    """What a new version's server answering means for its location.

    A server that did not start fails the version. One that loaded the file with Dagster's
    load error is served in its place, unless the last good version serves and is to be kept:
    then the error is shown beside it.
    """
    if start_error:
        return "start-failed"
    if load_error and serves_well and keep_last_good:
        return "failed-beside-last-good"
    return "ready"


Promotion = Literal["last-good", "file", "wait"]


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


def look_again(failed: dict[str, bool]) -> set[str]:
    """Locations whose failed version is planned again once the static workspace's names
    changed (a name collision may be gone, or new). ``failed``: name -> failed and shown."""
    return {name for name, shown in failed.items() if shown}
