"""What happens to a location after ``plan()``: pure decisions, no I/O and no clock reads
(``now`` and durations are passed in). The supervisor carries them out.

So far: when to try again, and after how long, once a version failed for a reason outside
the file (a host down, a server that crashed).
"""

from __future__ import annotations

from dataclasses import dataclass

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
