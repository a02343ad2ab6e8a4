"""The reconcile loop: desired (the share) against actual (our servers), and nothing else.

One thread decides. File events, finished builds, ready servers and a periodic tick only wake
it; every pass recomputes from the whole state, so a lost event cannot leave anything stuck.
Slow work (uv builds, waiting for a server to answer, stopping one) runs in worker threads
and comes back as a message; processes are spawned only from this thread (their
parent-death signal is tied to the spawning thread).

A location moves through generations: ``next`` is being built and started; once it answers,
it becomes ``current`` (what workspace.yaml points at) and the previous current is retired
after the webserver and the daemon have moved to the new workspace.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import env as envs
from . import server as servers
from .process import describe_exit
from .publish import Publisher
from .scan import Desired, LocationSpec, Scanner, SpecError
from .workspace import Entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    code_dir: Path
    workspace_path: Path
    state_dir: Path
    webserver_url: str | None
    host: str = "127.0.0.1"
    rescan_every: float = 2.0
    stable_for: float = 1.0
    start_timeout: float = 180.0
    retire_grace: float = 60.0
    shutdown_grace: float = 8.0
    max_parallel_builds: int = 2


@dataclass
class Generation:
    """One attempt at serving one version of a file."""

    spec: LocationSpec
    env: envs.EnvSpec
    started: float
    server: servers.CodeServer | None = None
    ready: bool = False  # answered and loaded; waits for the file to be stable to be served
    load_error: str | None = None

    @property
    def digest(self) -> str:
        return self.spec.digest


@dataclass
class Location:
    name: str
    current: Generation | None = None  # what workspace.yaml points at
    next: Generation | None = None  # being built or started
    failed_digest: str | None = None  # the version that failed: not retried until it changes
    error: str | None = None
    crashes: int = 0
    restart_at: float | None = None


# --- pure decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    spec: LocationSpec


@dataclass(frozen=True)
class Remove:
    name: str


@dataclass(frozen=True)
class Abandon:
    name: str


@dataclass(frozen=True)
class Reject:
    error: SpecError


Action = Prepare | Remove | Abandon | Reject


def plan(
    desired: Mapping[str, Desired],
    actual: Mapping[str, Location],
    now: float,
    early: Mapping[str, Desired] | None = None,
) -> list[Action]:
    """What to do so that ``actual`` converges on ``desired``. Removals come first.

    ``early`` holds files a local writer has finished but that are not stable yet: they are
    prepared ahead (the server starts while the stability window runs out) but an error in
    one is not reported, since the file may still be half-written.
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
            continue  # failed already: wait for the file to change
        if isinstance(want, SpecError):
            actions.append(Reject(want))
            continue
        if loc is None:
            actions.append(Prepare(want))
            continue
        if loc.next is not None and loc.next.digest == want.digest:
            continue  # on its way
        if loc.current is not None and loc.current.digest == want.digest:
            if loc.next is not None:
                actions.append(Abandon(name))  # an edit was reverted: drop the next one
                continue
            crashed = loc.current.server is not None and loc.current.server.exited() is not None
            if crashed and loc.restart_at is not None and now >= loc.restart_at:
                actions.append(Prepare(want))
            continue
        actions.append(Prepare(want))
    return actions


# --- messages from workers ------------------------------------------------------------


@dataclass(frozen=True)
class _Wake:
    pass


@dataclass(frozen=True)
class _Written:
    path: str


@dataclass(frozen=True)
class _EnvDone:
    key: str
    env: envs.Env | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class _ServerDone:
    name: str
    gen: Generation
    load_error: str | None
    error: str | None


Message = _Wake | _Written | _EnvDone | _ServerDone


@dataclass
class _Retiring:
    server: servers.CodeServer
    after_version: int | None = None  # stop once this workspace version is published
    since: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        store: envs.EnvStore | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store or envs.EnvStore(settings.state_dir / "envs")
        self.scanner = Scanner(settings.code_dir, stable_for=settings.stable_for)
        self.locations: dict[str, Location] = {}
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.publisher = Publisher(
            settings.workspace_path,
            webserver_url=settings.webserver_url,
            on_published=lambda version: self.wake(),
        )
        self._builds: dict[str, float] = {}  # env key -> build start
        self._build_pool = ThreadPoolExecutor(settings.max_parallel_builds, "build")
        self._io_pool = ThreadPoolExecutor(64, "server-io")
        self._retiring: list[_Retiring] = []
        self._published_entries: list[Entry] | None = None
        self._stopping = threading.Event()
        self._woken = True
        self._desired: Mapping[str, Desired] = {}

    # -- public -------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look at everything now (thread-safe; for file events and workers)."""
        self.inbox.put(_Wake())

    def written(self, path: str) -> None:
        """A file was closed after writing, or renamed into place (thread-safe)."""
        self.inbox.put(_Written(path))

    def stop(self) -> None:
        self._stopping.set()
        self.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Reconcile until :meth:`stop`; then stop every server we started."""
        self.settings.code_dir.mkdir(parents=True, exist_ok=True)
        self.publisher.start()
        log.info("watching %s (rescan every %.0fs)", self.settings.code_dir, self.settings.rescan_every)
        try:
            next_scan = 0.0
            due: float | None = None
            while not self._stopping.is_set():
                now = self.clock()
                if now >= next_scan or (due is not None and now >= due) or self._woken:
                    scan = self.scanner.scan(now)
                    self._desired = scan.desired
                    due = scan.next_due
                    next_scan = now + self.settings.rescan_every
                    self._woken = False
                    for action in plan(scan.desired, self.locations, now, scan.early):
                        self._apply(action)
                    for loc in list(self.locations.values()):
                        self._promote(loc)
                self._reap()
                self._publish()
                self._retire_due()
                wake_at = min(t for t in (next_scan, due, self._next_restart()) if t is not None)
                self._drain(timeout=max(0.0, wake_at - self.clock()))
        finally:
            self._shutdown()

    # -- the loop's steps -----------------------------------------------------------------

    def _drain(self, timeout: float) -> None:
        try:
            msg = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg: Message) -> None:
        self._woken = True
        if isinstance(msg, _Written):
            self.scanner.mark_written(msg.path)
        elif isinstance(msg, _EnvDone):
            self._on_env(msg)
        elif isinstance(msg, _ServerDone):
            self._on_server(msg)

    def _apply(self, action: Action) -> None:
        if isinstance(action, Remove):
            loc = self.locations.pop(action.name)
            for gen in (loc.current, loc.next):
                if gen is not None and gen.server is not None:
                    self._retire(gen.server, immediately=gen is loc.next)
            log.info("removed %s (file gone)", action.name)
        elif isinstance(action, Abandon):
            self._abandon_next(self.locations[action.name])
        elif isinstance(action, Reject):
            loc = self.locations.setdefault(action.error.name, Location(action.error.name))
            loc.failed_digest, loc.error = action.error.digest, action.error.message
            self._abandon_next(loc)
            log.error("%s: %s: %s", action.error.name, action.error.relpath, action.error.message)
        elif isinstance(action, Prepare):
            self._prepare(action.spec)

    def _prepare(self, spec: LocationSpec) -> None:
        loc = self.locations.setdefault(spec.name, Location(spec.name))
        self._abandon_next(loc)
        env_spec = envs.spec_for(spec.metadata)
        loc.next = Generation(spec=spec, env=env_spec, started=self.clock())
        loc.restart_at = None
        built = self.store.get(env_spec)
        if built is not None:
            self._spawn(loc, built)
            return
        if env_spec.key not in self._builds:
            extra = " (adding dagster==%s: the file does not list it)" % envs.DAGSTER_VERSION
            log.info(
                "building env %s for %s%s",
                env_spec.short,
                spec.name,
                extra if env_spec.added_dagster else "",
            )
            self._builds[env_spec.key] = self.clock()
            self._build_pool.submit(self._build, env_spec)
        else:
            log.info("%s waits for env %s, already building", spec.name, env_spec.short)

    def _build(self, env_spec: envs.EnvSpec) -> None:
        started = time.monotonic()
        try:
            env, error = self.store.build(env_spec), None
        except envs.BuildError as exc:
            env, error = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never kill the worker silently
            log.exception("building env %s crashed", env_spec.short)
            env, error = None, f"building the environment failed: {exc}"
        self.inbox.put(_EnvDone(env_spec.key, env, error, time.monotonic() - started))

    def _on_env(self, msg: _EnvDone) -> None:
        self._builds.pop(msg.key, None)
        short = msg.key[:12]
        if msg.env is not None:
            log.info("built env %s in %.1fs", short, msg.seconds)
        for loc in list(self.locations.values()):
            gen = loc.next
            if gen is None or gen.env.key != msg.key or gen.server is not None:
                continue
            if msg.env is None:
                self._fail(loc, gen, f"could not build the environment:\n{msg.error}")
            else:
                self._spawn(loc, msg.env)

    def _spawn(self, loc: Location, env: envs.Env) -> None:
        gen = loc.next
        assert gen is not None
        try:
            gen.server = servers.start(
                location=loc.name, python=env.python, file=gen.spec.path, host=self.settings.host
            )
        except OSError as exc:
            self._fail(loc, gen, f"could not start the code server: {exc}")
            return
        log.info("starting %s on port %d (pid %d)", loc.name, gen.server.port, gen.server.pid)
        self._io_pool.submit(self._wait_ready, loc.name, gen)

    def _wait_ready(self, name: str, gen: Generation) -> None:
        assert gen.server is not None
        try:
            load_error = gen.server.wait_ready(timeout=self.settings.start_timeout)
        except servers.StartError as exc:
            self.inbox.put(_ServerDone(name, gen, None, str(exc)))
        except Exception as exc:  # noqa: BLE001
            self.inbox.put(_ServerDone(name, gen, None, f"unexpected error: {exc}"))
        else:
            self.inbox.put(_ServerDone(name, gen, load_error, None))

    def _on_server(self, msg: _ServerDone) -> None:
        loc = self.locations.get(msg.name)
        if loc is None or loc.next is not msg.gen:
            if msg.gen.server is not None:  # superseded or removed meanwhile
                self._retire(msg.gen.server, immediately=True)
            return
        gen = msg.gen
        if msg.error is not None:
            self._fail(loc, gen, msg.error)
            return
        gen.ready, gen.load_error = True, msg.load_error
        self._promote(loc)

    def _promote(self, loc: Location) -> None:
        """Serve a ready generation once its file is stable, and retire the one it replaces."""
        gen = loc.next
        stable = self._desired.get(loc.name)
        if gen is None or not gen.ready or stable is None or stable.digest != gen.digest:
            return
        assert gen.server is not None
        if gen.load_error:
            last = gen.load_error.strip().splitlines()[-1] if gen.load_error.strip() else ""
            log.error("%s: the file failed to load (shown in the UI): %s", loc.name, last)
        log.info(
            "serving %s on port %d (pid %d), ready in %.1fs",
            loc.name,
            gen.server.port,
            gen.server.pid,
            self.clock() - gen.started,
        )
        old = loc.current
        loc.current, loc.next = gen, None
        loc.failed_digest, loc.error = None, gen.load_error
        if old is not None and old.server is not None:
            self._retire(old.server)

    def _fail(self, loc: Location, gen: Generation, message: str) -> None:
        log.error("%s: %s", loc.name, message)
        if gen.server is not None:
            self._retire(gen.server, immediately=True)
        loc.next = None
        loc.failed_digest, loc.error = gen.digest, message

    def _abandon_next(self, loc: Location) -> None:
        if loc.next is not None and loc.next.server is not None:
            self._retire(loc.next.server, immediately=True)
        loc.next = None

    def _reap(self) -> None:
        """Notice servers that died on their own and schedule a restart with backoff."""
        now = self.clock()
        for loc in self.locations.values():
            gen = loc.current
            if gen is None or gen.server is None or loc.restart_at is not None:
                continue
            code = gen.server.exited()
            if code is None:
                continue
            healthy_for = now - gen.server.started
            loc.crashes = 1 if healthy_for > 60 else loc.crashes + 1
            delay = min(60.0, 2.0 ** (loc.crashes - 1))
            loc.restart_at = now + delay
            log.error(
                "%s: code server (pid %d) %s; restarting in %.0fs",
                loc.name,
                gen.server.pid,
                describe_exit(code),
                delay,
            )

    def _next_restart(self) -> float | None:
        times = [loc.restart_at for loc in self.locations.values() if loc.restart_at is not None]
        return min(times) if times else None

    def entries(self) -> list[Entry]:
        return sorted(
            Entry(loc.name, self.settings.host, loc.current.server.port)
            for loc in self.locations.values()
            if loc.current is not None and loc.current.server is not None
        )

    def _publish(self) -> None:
        entries = self.entries()
        if entries == self._published_entries:
            return
        self._published_entries = entries
        version = self.publisher.submit(entries)
        for item in self._retiring:
            if item.after_version is None:
                item.after_version = version

    def _retire(self, server: servers.CodeServer, *, immediately: bool = False) -> None:
        item = _Retiring(server, after_version=0 if immediately else None)
        self._retiring.append(item)

    def _retire_due(self) -> None:
        keep = []
        for item in self._retiring:
            published = item.after_version is not None and self.publisher.published >= item.after_version
            overdue = time.monotonic() - item.since > self.settings.retire_grace
            if published or overdue:
                self._io_pool.submit(item.server.stop, grace=self.settings.retire_grace)
            else:
                keep.append(item)
        self._retiring = keep

    def _shutdown(self) -> None:
        self.publisher.stop()
        live = [item.server for item in self._retiring]
        for loc in self.locations.values():
            live += [g.server for g in (loc.current, loc.next) if g is not None and g.server]
        log.info("stopping %d code server(s)", len(live))
        grace = self.settings.shutdown_grace
        threads = [
            threading.Thread(target=s.stop, kwargs={"grace": grace}, daemon=True) for s in live
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=grace + 10)
        self.store.cancel_builds()
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        self._build_pool.shutdown(wait=False, cancel_futures=True)
