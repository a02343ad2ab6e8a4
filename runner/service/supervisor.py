"""The reconcile loop: desired (the share) against actual (our servers), carried out.

One thread decides. File events, finished builds, ready servers and a periodic tick only wake
it; every pass recomputes from the whole state, so a lost event cannot leave anything stuck.
Slow work (uv builds, waiting for a server to answer, stopping one) runs in worker threads
and comes back as a message; processes are spawned only from this thread (their
parent-death signal is tied to the spawning thread).

What to do is decided elsewhere, by pure functions in :mod:`runner.lifecycle`: a pass by
:func:`~runner.lifecycle.reconcile.reconcile` (which version of each file to prepare, and
when to promote it), and what a build, a server's answer or exit, a retry means for a
location by :mod:`~runner.lifecycle.transitions`. Each returns a step, and
:meth:`Supervisor._take` is the one place a location changes and effects happen: servers
retired, environments built, servers queued, lines logged, failures counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from runner.base import metrics
from runner.dagster_side import entries
from runner.dagster_side.workspace import Entry, Static
from runner.envs import env as envs
from runner.envs.builds import EnvDone
from runner.lifecycle import reconcile
from runner.lifecycle.model import Location
from runner.lifecycle.transitions import Count, Effect, KeepCopy, Provide, Retire, Say, Start, Step
from runner.servers import last_good
from runner.servers import server as servers
from runner.servers.retire import Stopped
from runner.servers.starts import ServerDone
from runner.service import shutdown, status
from runner.service.config import Settings
from runner.service.inbox import Inbox, Message, Wake
from runner.service.lease import Lease
from runner.service.parts import assemble
from runner.service.status import STATES, FileStatus
from runner.share.scan import Desired, LocationSpec

log = logging.getLogger(__name__)

#: Seconds each server has to stop when the runner stops.
SHUTDOWN_GRACE = 8.0


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        store: envs.EnvStore | None = None,
        lease: Lease | None = None,
        start_server: Callable[..., servers.CodeServer] = servers.start,
    ) -> None:
        self.settings = settings
        self.lease = lease  # held while it runs: one runner per share (see ``lease``)
        self.clock = clock  # for every decision about time
        self.wall = wall  # for times people read (status)
        self.inbox = Inbox()
        self.locations: dict[str, Location] = {}
        parts = assemble(settings, self.inbox, clock=clock, store=store, start_server=start_server)
        self.store, self.scanner = parts.store, parts.scanner
        self.pace, self.static = parts.pace, parts.static
        self.publisher, self.builds, self.starts = parts.publisher, parts.builds, parts.starts
        self.retirements, self.errors, self.board = parts.retirements, parts.errors, parts.board
        self._pending: list[str] = []  # relpaths waiting to become stable
        self._published: tuple[list[Entry], Static] | None = None
        self._desired: Mapping[str, Desired] = {}
        self._early: Mapping[str, Desired] = {}  # finished by a local writer, not yet stable
        self._rescan = True
        self._next_scan: float = 0.0  # the next full rescan
        self._due: float | None = None  # when a file waiting to become stable is due
        self._static_names: frozenset[str] = frozenset()
        self._stopping = threading.Event()
        self._lease_lost = False
        self._woken = True

    # -- public -------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look at everything it holds now (thread-safe)."""
        self.inbox.put(Wake())

    def changed(self) -> None:
        """Something under the code folder changed: rescan it now (thread-safe)."""
        self.inbox.put(Wake(rescan=True))

    def written(self, path: str) -> None:
        """A file was closed after writing, or renamed into place (thread-safe)."""
        self.inbox.put(Wake(rescan=True, written=path))

    def stop(self) -> None:
        self._stopping.set()
        self.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def stop_requested(self) -> threading.Event:
        """Set by :meth:`stop` (also before :meth:`run`, e.g. while waiting for the lease)."""
        return self._stopping

    def run(self) -> None:
        """Reconcile until :meth:`stop`; then stop every server we started."""
        self.begin()
        try:
            while not self._stopping.is_set():
                self.turn()
        finally:
            self.end()

    def begin(self) -> None:
        self.settings.code_dir.mkdir(parents=True, exist_ok=True)
        self.starts.begin()
        self.publisher.start()
        log.info("full rescan every %.0fs", self.settings.rescan_every)

    def turn(self, *, wait: float | None = None) -> None:
        """One pass of the loop: observe, decide, carry out; then wait for a message until
        the next thing due (at most ``wait`` seconds, when given: tests drive it so)."""
        now = self.clock()
        if self._rescan or reconcile.due(now, self._next_scan, self._due):
            self._due = self._scan(now)
            self._next_scan = now + self.pace.period
        if self._woken or reconcile.due(now, reconcile.next_retry(self.locations)):
            self._woken = False
            self._look_at_static()
            for step in reconcile.reconcile(
                self._desired,
                self.locations,
                now,
                early=self._early,
                reserved=self._static_names,
                keep_last_good=self.settings.keep_last_good,
                env_for=self._env_for,
                built=self.store.get,
            ):
                self._take(step)
        self._start_queued()
        self._reap()
        self.errors.sync({name: loc.error for name, loc in self.locations.items()})
        self._publish()
        self.retirements.stop_due(self.publisher.published)
        self._report()
        retry = reconcile.next_retry(self.locations)  # a Reload's too
        later = now + 1.0 if self.starts else None  # a start slot may free up
        wake_at = min(t for t in (self._next_scan, self._due, retry, later) if t is not None)
        timeout = max(0.0, wake_at - self.clock())
        self.inbox.drain(self._handle, timeout=timeout if wait is None else min(wait, timeout))

    # -- messages -------------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        self._woken = True
        decided = {"keep_last_good": self.settings.keep_last_good, "now": self.clock()}
        if isinstance(msg, Wake):
            self._rescan = self._rescan or msg.rescan
            if msg.written is not None:
                self.scanner.mark_written(msg.written)
        elif isinstance(msg, EnvDone):
            self.builds.finished(msg)
            for step in reconcile.env_built(self.locations, msg.key, msg.env, msg.error, **decided):
                self._take(step)
        elif isinstance(msg, ServerDone):
            if msg.error is None:
                metrics.SERVER_START_SECONDS.observe(msg.seconds)
            if (loc := self.locations.get(msg.name)) is not None:
                self._take(
                    reconcile.server_answered(
                        loc,
                        msg.serial,
                        start_error=msg.error,
                        load_error=msg.load_error,
                        ignored=msg.ignored,
                        desired=self._desired,
                        **decided,
                    )
                )
        elif isinstance(msg, Stopped):
            self.retirements.stopped(msg)
            if msg.item.env_key is not None:
                self._collect_envs()
            busy = {item.gen.spec.name for item in self.retirements.items() if item.gen}
            self.starts.release(busy | set(self.locations))

    def _scan(self, now: float) -> float | None:
        """Rescan the share; return when a file waiting to become stable is due."""
        cpu = time.thread_time()
        scan = self.scanner.scan(now)
        self.pace.measured(time.thread_time() - cpu)
        self._desired, self._early, self._pending = scan.desired, scan.early, scan.pending
        self._rescan, self._woken = False, True
        return scan.next_due

    def _look_at_static(self) -> None:
        """Names the static workspace uses; when they change, failures are looked at anew."""
        names = self.static.poll().names
        if names != self._static_names:
            for step in reconcile.static_changed(self.locations):
                self._take(step)
            self._static_names = names

    # -- carrying out -------------------------------------------------------------------

    def _env_for(self, spec: LocationSpec) -> envs.EnvSpec:
        return envs.spec_for(spec.metadata, self.settings.extra_requirements, lock=spec.lock)

    def _take(self, step: Step) -> None:
        """The one place a location changes: keep its next value, then carry out the effects."""
        if step.loc is None:
            self.locations.pop(step.name, None)
        else:
            self.locations[step.name] = step.loc
        for effect in step.effects:
            self._carry_out(effect)

    def _carry_out(self, effect: Effect) -> None:
        match effect:
            case Retire(gen, immediately) if gen.server is not None:
                self.retirements.add(gen.server, gen, immediately=immediately)
            case Provide(gen, refresh):
                self.builds.provide(gen.env, gen.spec.name, refresh)
            case Start(gen, env):
                self.starts.queue(gen, env)
            case KeepCopy(gen):
                last_good.keep(self.settings.state_dir, gen)
            case Say(level, text):
                log.log(level, "%s", text)
            case Count("restart"):
                metrics.RESTARTS.inc()
            case Count(stage):
                metrics.FAILURES.labels(stage=stage).inc()

    def _start_queued(self) -> None:
        """Start servers whose environment is ready, a few at a time."""
        keep = self.settings.keep_last_good
        for step in self.starts.start_queued(self.locations, now=self.clock(), keep_last_good=keep):
            self._take(step)

    def _reap(self) -> None:
        """Servers that died on their own, and the UI's Reload on a location."""
        asked = set()
        for name, loc in self.locations.items():
            shown = [loc.current.server if loc.current else None, self.errors.get(name)]
            if any([server.reload_requested() for server in shown if server is not None]):
                asked.add(name)  # (each asked: a request is taken once)
        for step in reconcile.reaped(
            self.locations, self._desired, reload_asked=asked, now=self.clock()
        ):
            self._take(step)

    # -- what the UI and operators see --------------------------------------------------

    def entries(self) -> list[Entry]:
        return entries.entries(
            self.locations.values(),
            host=self.settings.advertise_host or self.settings.host,
            static_names=self._static_names,
            file_of=self._file_of,
            resolution=self.store.resolution,
            error_server=self.errors.get,
        )

    def _file_of(self, loc: Location) -> str:
        gen, desired = loc.next or loc.current, self._desired.get(loc.name)
        return gen.spec.relpath if gen else desired.relpath if desired else ""

    def _publish(self) -> None:
        entries, static = self.entries(), self.static.current
        if (entries, static) == self._published:
            return
        self._published = (entries, static)
        self.retirements.submitted(self.publisher.submit(entries, static))

    def _report(self) -> None:
        """Status file and metrics; a line in the log for builds that take a while."""
        if self.lease is not None and not self.lease.renew():
            self._lease_lost = True  # another runner serves the share now: leave its files
            self.stop()
            return
        rows = self._rows()
        self.board.update(rows)
        metrics.count_states((row.state for row in rows), STATES)
        self.builds.say_slow(
            lambda key: [
                loc.name for loc in self.locations.values() if loc.next and loc.next.env.key == key
            ]
        )

    def _rows(self) -> list[FileStatus]:
        offset = self.wall() - self.clock()  # the runner's clock to the wall's, for people
        return status.rows(
            self.locations.values(),
            file_of=self._file_of,
            env_path=self.store.path,
            resolution=self.store.resolution,
            waiting_to_start=lambda loc: self.starts.waiting(loc.next) if loc.next else None,
            build_progress=self.builds.progress,
            retiring=[item.gen for item in self.retirements.items() if item.gen is not None],
            ignored=self.scanner.ignored,
            pending=self._pending,
            wall=lambda t: t + offset,
        )

    # -- cleanup -------------------------------------------------------------------------

    def _collect_envs(self) -> None:
        """Delete environments this runner used and nothing uses any more."""
        busy = self.retirements.env_keys() | self.builds.keys()
        for key in reconcile.unused_envs(self.starts.used_envs, self.locations, busy=busy):
            log.info("removing env %s (no location uses it any more)", key[:12])
            self.starts.retire(envs.Env(key, self.store.path(key)).python)
            self.store.remove(key)
            self.starts.used_envs.discard(key)

    def end(self) -> None:
        """Stop every server and worker; the status file says the runner stopped."""
        last_known = self._rows()
        self.publisher.stop()
        # Some retired servers may be waiting out RUNNER_RETIRE_GRACE for their runs.
        retiring = [item.server for item in self.retirements.items()]
        live = [*retiring, *reconcile.servers_of(self.locations), *self.errors.all()]
        shutdown.stop_all(live, grace=SHUTDOWN_GRACE, instance_home=self.settings.home)
        self.builds.shutdown()
        self.retirements.shutdown()
        self.starts.shutdown()
        if not self._lease_lost:
            self.board.update(last_known, stopped=True)
