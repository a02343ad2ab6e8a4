"""Environment builds in worker threads: one build per environment at a time, what each is
doing (for ``status``), and a line in the log while one takes long, instead of silence."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from runner.base import metrics
from runner.envs.env import BuildError, Env, EnvSpec, EnvStore

log = logging.getLogger(__name__)

#: Seconds between the log lines that say a build is still going.
SAY_EVERY = 15.0


@dataclass(frozen=True)
class EnvDone:
    """A build finished: the environment, or why not."""

    key: str
    env: Env | None
    error: BuildError | None
    seconds: float


class Builds:
    def __init__(
        self,
        store: EnvStore,
        *,
        workers: int,
        done: Callable[[EnvDone], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self._done = done  # called from a worker thread
        self._pool = ThreadPoolExecutor(workers, "build")
        self._started: dict[str, float] = {}  # env key -> when its build was asked for
        self._progress: dict[str, str] = {}  # env key -> what its build is doing
        self._said: dict[str, float] = {}  # env key -> when the log last said so

    def __contains__(self, key: str) -> bool:
        return key in self._started

    def keys(self) -> set[str]:
        return set(self._started)

    def provide(self, spec: EnvSpec, name: str, refresh: bool = False) -> None:
        """Build ``spec``'s environment (once) for location ``name``; ``done`` hears when it
        is built. The lifecycle asks only for one it did not find built; one that a build
        finished since has its ``done`` on the way, and is not built again."""
        if spec.key in self:
            log.info("%s waits for env %s, already building", name, spec.short)
        elif self.store.get(spec) is None:
            added = f" (adding {', '.join(spec.added)}: the file does not list it)"
            log.info("building env %s for %s%s", spec.short, name, added if spec.added else "")
            self.start(spec, refresh=refresh)

    def start(self, spec: EnvSpec, *, refresh: bool = False) -> None:
        """Build ``spec`` in a worker; ``done`` hears the outcome."""
        self._started[spec.key] = self.clock()
        self._progress[spec.key] = "queued"
        self._pool.submit(self._build, spec, refresh)

    def progress(self, key: str) -> str | None:
        return self._progress.get(key)

    def finished(self, msg: EnvDone) -> None:
        """The loop took ``msg`` in: forget the build."""
        for table in (self._started, self._progress, self._said):
            table.pop(msg.key, None)
        if msg.env is not None:
            log.info("built env %s in %.1fs", msg.key[:12], msg.seconds)
            metrics.ENV_BUILD_SECONDS.observe(msg.seconds)

    def say_slow(self, waiting: Callable[[str], list[str]]) -> None:
        """Log builds running for a while, what they are doing, and who waits for them."""
        now = self.clock()
        for key, started in self._started.items():
            if now - self._said.get(key, started) >= SAY_EVERY:
                self._said[key] = now
                log.info(
                    "env %s (for %s) still building after %.0fs: %s",
                    key[:12],
                    ", ".join(waiting(key)) or "-",
                    now - started,
                    self._progress.get(key),
                )

    def shutdown(self) -> None:
        self.store.cancel_builds()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _build(self, spec: EnvSpec, refresh: bool) -> None:
        started = time.monotonic()
        env, error = None, None

        def progress(text: str) -> None:
            self._progress[spec.key] = text  # read by the loop, for status

        try:
            env = self.store.build(spec, progress, refresh=refresh)
        except BuildError as exc:
            error = exc
        except Exception as exc:
            log.exception("building env %s crashed", spec.short)
            error = BuildError(f"building the environment failed: {exc}", transient=False)
        self._done(EnvDone(spec.key, env, error, time.monotonic() - started))
