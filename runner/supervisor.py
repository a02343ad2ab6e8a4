"""The reconcile loop: desired (the share) against actual (our servers), and nothing else.

One thread decides. File events, finished builds, ready servers and a periodic tick only wake
it; every pass recomputes from the whole state, so a lost event cannot leave anything stuck.
Slow work (uv builds, waiting for a server to answer, stopping one) runs in worker threads
and comes back as a message; processes are spawned only from this thread (their
parent-death signal is tied to the spawning thread).

A location moves through generations: ``next`` is being built and started; once it answers
and its file is stable, it becomes ``current`` (what workspace.yaml points at), and the
previous current is retired after the daemon and the webserver have moved to the new
workspace. Failures are kept on the location and shown in the UI (see ``errors``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dagster._utils.error import SerializableErrorInfo

from . import (
    container_runs,
    entries,
    last_good,
    lifecycle,
    location_env,
    metrics,
    script,
    shutdown,
    status,
)
from . import env as envs
from . import server as servers
from .builds import Builds, EnvDone
from .container_runs import ContainerRuns
from .errors import ErrorServer, error_info, summarize
from .lease import Lease
from .location_env import SettingsFiles
from .plan import Abandon, Action, Generation, Location, Prepare, Reject, Remove, Served, plan
from .process import describe_exit
from .publish import Publisher
from .retire import Retirements, Stopped
from .scan import Desired, LocationSpec, Scanner
from .status import STATES, STATUS_NAME, Board, FileStatus
from .workspace import STATIC_NAME, Entry, Static, StaticSource

log = logging.getLogger(__name__)

#: Full rescans use at most this share of one core; on a large share they come less often.
SCAN_CPU_SHARE = 0.01
#: Environments built at once (each uv build uses the network and a core).
PARALLEL_BUILDS = 2
#: Servers starting at once (see ``_start_queued``).
PARALLEL_STARTS = max(2, os.cpu_count() or 2)
#: Seconds each server has to stop when the runner stops.
SHUTDOWN_GRACE = 8.0


@dataclass(frozen=True)
class Settings:
    code_dir: Path
    workspace_path: Path
    state_dir: Path
    webserver_url: str | None
    host: str = "127.0.0.1"  # the address code servers bind to
    #: The address written into workspace.yaml, for a webserver or daemon on another host
    #: or container to reach the servers (default: ``host``).
    advertise_host: str | None = None
    rescan_every: float = 2.0
    stable_for: float = 1.0
    start_timeout: float = 180.0
    #: How long a replaced or deleted server may take to finish its in-flight runs.
    retire_grace: float = 3600.0
    #: When a new version fails, keep serving the last good one (and show the failure beside
    #: it); False shows the failure in place of the location.
    keep_last_good: bool = True
    #: DAGSTER_HOME of the instance; None: the folder of workspace.yaml.
    instance_home: Path | None = None
    #: Packages every environment needs to open the instance (e.g. dagster-postgres).
    extra_requirements: tuple[str, ...] = ()
    #: Dagster's log format for the code servers: colored or json.
    server_log_format: str = "colored"
    #: Settings files outside the share (secrets), laid out like code_location/; they win.
    settings_dir: Path | None = None
    #: More of the service's environment for every location: names or ``PREFIX*``.
    pass_env: tuple[str, ...] = ()
    #: How runs start in containers (Docker, Kubernetes); None: as processes of the server.
    container_runs: ContainerRuns | None = None


# --- messages from workers ------------------------------------------------------------


@dataclass(frozen=True)
class _Wake:
    rescan: bool  # files may have changed: rescan the share now


@dataclass(frozen=True)
class _Written:
    path: str


@dataclass(frozen=True)
class _ServerDone:
    name: str
    gen: Generation
    load_error: SerializableErrorInfo | None
    error: str | None
    seconds: float  # from spawn to ready (or to the failure)
    ignored: tuple[str, ...] = ()  # definitions Dagster dropped (no Definitions in the file)


@dataclass(frozen=True)
class _Retry:
    """The UI's Reload on a location: try its file again now (``name``: the entry's)."""

    name: str


Message = _Wake | _Written | EnvDone | _ServerDone | _Retry | Stopped


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
        self._start_server = start_server  # the one place a code server process starts
        self.store = store or envs.EnvStore(settings.state_dir / "envs")
        roots = [(settings.code_dir, settings.code_dir.name)]
        if settings.settings_dir is not None:
            roots.append((settings.settings_dir, str(settings.settings_dir)))
        self.scanner = Scanner(settings.code_dir, stable_for=settings.stable_for,
                               settings=SettingsFiles(roots))  # fmt: skip
        home = settings.instance_home or settings.workspace_path.parent
        self._inherited = location_env.inherited(
            os.environ, also=[*location_env.instance_variables(home / "dagster.yaml"),
                              *settings.pass_env],
        )  # fmt: skip
        self.static = StaticSource(settings.workspace_path.parent / STATIC_NAME)
        self.locations: dict[str, Location] = {}
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.publisher = Publisher(
            settings.workspace_path,
            webserver_url=settings.webserver_url,
            on_published=lambda version: self.wake(),
        )
        self.builds = Builds(self.store, workers=PARALLEL_BUILDS,
                             done=self.inbox.put, clock=clock)  # fmt: skip
        self._io_pool = ThreadPoolExecutor(64, "server-io")
        self.retirements = Retirements(grace=settings.retire_grace, done=self.inbox.put,
                                       clock=clock)  # fmt: skip
        self._pending: list[str] = []  # relpaths waiting to become stable
        self.board = Board(settings.workspace_path.parent / STATUS_NAME,
                           share=settings.code_dir.parent)  # fmt: skip
        self._used_envs: set[str] = set()  # env keys this runner has served from
        self._published: tuple[list[Entry], Static] | None = None
        self._desired: Mapping[str, Desired] = {}
        self._early: Mapping[str, Desired] = {}  # finished by a local writer, not yet stable
        self._queued: dict[str, tuple[Generation, envs.Env]] = {}  # env ready, not started
        self._rescan_period = settings.rescan_every
        self._scan_costs: deque[float] = deque(maxlen=5)  # CPU seconds of recent rescans
        self._rescan = True
        self._static_names: frozenset[str] = frozenset()
        self._stopping = threading.Event()
        self._lease_lost = False
        self._woken = True

    # -- public -------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look at everything it holds now (thread-safe)."""
        self.inbox.put(_Wake(rescan=False))

    def changed(self) -> None:
        """Something under the code folder changed: rescan it now (thread-safe)."""
        self.inbox.put(_Wake(rescan=True))

    def written(self, path: str) -> None:
        """A file was closed after writing, or renamed into place (thread-safe)."""
        self.inbox.put(_Written(path))

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
        self.settings.code_dir.mkdir(parents=True, exist_ok=True)
        self.publisher.start()
        log.info("full rescan every %.0fs", self.settings.rescan_every)
        try:
            next_scan, due = 0.0, None
            while not self._stopping.is_set():
                now = self.clock()
                if now >= next_scan or (due is not None and now >= due) or self._rescan:
                    due = self._scan(now)
                    next_scan = now + self._rescan_period
                retry = self._next_retry()
                if self._woken or (retry is not None and now >= retry):
                    self._woken = False
                    for action in plan(self._desired, self.locations, now, self._early,
                                       self._reserved()):  # fmt: skip
                        self._apply(action)
                    for loc in list(self.locations.values()):
                        self._promote(loc)
                self._start_queued()
                self._reap()
                self._publish()
                self.retirements.stop_due(self.publisher.published)
                self._report()
                later = now + 1.0 if self._queued else None  # a start slot may free up
                wake_at = min(t for t in (next_scan, due, retry, later) if t is not None)
                self._drain(timeout=max(0.0, wake_at - self.clock()))
        finally:
            self._shutdown()

    # -- messages -------------------------------------------------------------------------

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
        if isinstance(msg, _Wake):
            self._rescan = self._rescan or msg.rescan
        elif isinstance(msg, _Written):
            self.scanner.mark_written(msg.path)
            self._rescan = True
        elif isinstance(msg, EnvDone):
            self._on_env(msg)
        elif isinstance(msg, _ServerDone):
            self._on_server(msg)
        elif isinstance(msg, _Retry):
            self._retry(msg.name)
        elif isinstance(msg, Stopped):
            self.retirements.stopped(msg)
            if msg.item.env_key is not None:
                self._collect_envs()

    def _scan(self, now: float) -> float | None:
        """Rescan the share; return when a file waiting to become stable is due.

        Rescans are what make the runner correct (events get lost, network shares send
        none), but on a share of many files each costs real CPU: the period stretches so
        that rescans use at most ``SCAN_CPU_SHARE`` of one core. The cheapest of the last
        few rescans sets it: one that read many new files says nothing about the next.
        """
        cpu = time.thread_time()
        scan = self.scanner.scan(now)
        self._scan_costs.append(time.thread_time() - cpu)
        self._desired, self._early, self._pending = scan.desired, scan.early, scan.pending
        self._rescan, self._woken = False, True
        cost = min(self._scan_costs)
        period = max(self.settings.rescan_every, cost / SCAN_CPU_SHARE)
        stretched = period > self.settings.rescan_every * 1.25
        if stretched != (self._rescan_period > self.settings.rescan_every * 1.25):
            log.info("a full rescan costs %.0f ms of CPU: rescanning every %.1fs", cost * 1000,
                     period)  # fmt: skip
        self._rescan_period = period
        return scan.next_due

    def _retry(self, entry_name: str) -> None:
        """Try a location's file again now: after a failure, build it afresh (the index is
        asked again); while it serves, start a new server and swap, as ``dagster
        code-server start`` restarts its child."""
        name = entries.location_name(entry_name)
        loc, want = self.locations.get(name), self._desired.get(name)
        if loc is None or want is None:
            return
        if loc.next is not None and loc.next.digest == want.digest:
            return  # already on its way
        failed = (
            loc.error is not None
            or loc.failed_digest is not None
            or (loc.current is not None and loc.current.load_error is not None)
        )
        log.info("%s: %s asked from the UI", name, "retry" if failed else "restart")
        loc.failed_digest, loc.attempts, loc.refresh = None, 0, failed
        loc.retry_digest, loc.retry_at = want.digest, self.clock()

    # -- actions --------------------------------------------------------------------------

    def _apply(self, action: Action) -> None:
        if isinstance(action, Remove):
            loc = self.locations.pop(action.name)
            self._abandon_next(loc)
            if loc.current is not None:
                self._retire(loc.current)
            self._set_error(loc, None)
            log.info("removed %s (file gone)", action.name)
        elif isinstance(action, Abandon):
            self._abandon_next(self.locations[action.name])
        elif isinstance(action, Reject):
            spec_error = action.error
            loc = self.locations.setdefault(spec_error.name, Location(spec_error.name))
            self._abandon_next(loc)
            log.error("%s: %s: %s", spec_error.name, script.escaped(spec_error.relpath),
                      spec_error.message)  # fmt: skip
            metrics.FAILURES.labels(stage="spec").inc()
            if action.collision and loc.current is not None:
                # The name is the static workspace's now: no last good version under it.
                self._retire(loc.current)
                loc.current = None
            shown = script.escaped(spec_error.relpath)
            self._record_failure(
                loc, spec_error.digest, error_info(f"{shown}: {spec_error.message}")
            )
        elif isinstance(action, Prepare):
            self._prepare(action.spec, last_good=action.last_good)

    def _prepare(self, spec: LocationSpec, *, last_good: bool = False) -> None:
        loc = self.locations.setdefault(spec.name, Location(spec.name))
        self._abandon_next(loc)
        env_spec = envs.spec_for(spec.metadata, self.settings.extra_requirements, lock=spec.lock)
        loc.next = Generation(spec=spec, env=env_spec, prepared=self.clock(), last_good=last_good)
        loc.retry_at = None
        built = self.store.get(env_spec)
        if built is not None:
            self._queued[loc.name] = (loc.next, built)
        elif env_spec.key in self.builds:
            log.info("%s waits for env %s, already building", spec.name, env_spec.short)
        else:
            added = f" (adding {', '.join(env_spec.added)}: the file does not list it)"
            log.info("building env %s for %s%s", env_spec.short, spec.name,
                     added if env_spec.added else "")  # fmt: skip
            self.builds.start(env_spec, refresh=loc.refresh)
        loc.refresh = False

    def _on_env(self, msg: EnvDone) -> None:
        self.builds.finished(msg)
        for loc in list(self.locations.values()):
            gen = loc.next
            if gen is None or gen.env.key != msg.key or gen.server is not None:
                continue
            if msg.env is not None:
                loc.attempts = 0
                self._queued[loc.name] = (gen, msg.env)
            elif msg.error is not None and msg.error.transient:
                metrics.FAILURES.labels(stage="env").inc()
                self._fail(loc, gen, f"could not build the environment: {msg.error}",
                           transient=True)  # fmt: skip
            else:
                metrics.FAILURES.labels(stage="env").inc()
                why = (envs.StaleLock.for_file(gen.spec.path.name)
                       if isinstance(msg.error, envs.StaleLock) else msg.error)  # fmt: skip
                self._fail(loc, gen, f"could not build the environment:\n{why}")

    def _start_queued(self) -> None:
        """Start servers whose environment is ready, a few at a time (see
        :func:`lifecycle.free_start_slots`)."""
        spawned = [gen.spawned for loc in self.locations.values()
                   if (gen := loc.next) is not None and gen.server is not None
                   and not gen.ready and gen.spawned is not None]  # fmt: skip
        free = lifecycle.free_start_slots(spawned, now=self.clock(), slots=PARALLEL_STARTS)
        while self._queued and free > 0:
            name = next(iter(self._queued))
            gen, env = self._queued.pop(name)
            loc = self.locations.get(name)
            if loc is not None and loc.next is gen:  # not superseded or removed meanwhile
                self._spawn(loc, gen, env)
                free -= 1

    def _spawn(self, loc: Location, gen: Generation, env: envs.Env) -> None:
        file, folder = gen.spec.path, None
        if gen.last_good:  # the share holds a broken version now: serve the copy
            file, folder = last_good.copy_path(self.settings.state_dir, gen), gen.spec.path.parent
            log.info("%s: restarting the last good version from its copy %s", loc.name, file)
        server_env = {**self._inherited, **gen.spec.settings.values}
        workdir = self.settings.state_dir / "work" / loc.name
        runs, run_args, entry_point = self.settings.container_runs, [], None
        try:
            if runs is not None and runs.kind != "local":
                env_file = container_runs.run_env_file(self.settings.state_dir, loc.name)
                container_runs.write_run_env(env_file, server_env, workdir)
                run_args = runs.server_args(loc.name, gen.spec.metadata.run_limits)
                entry_point = container_runs.entry_point(env.python, env_file)
            server = self._start_server(
                location=loc.name,
                python=env.python,
                file=file,
                folder=folder,
                host=self.settings.host,
                env=server_env,
                workdir=workdir,
                sidecars=self.settings.state_dir / "servers",
                log_format=self.settings.server_log_format,
                run_args=run_args,
                run_entry_point=entry_point,
            )
        except OSError as exc:
            self._fail(loc, gen, f"could not start the code server: {exc}")
            return
        gen.server, gen.spawned = server, self.clock()
        self._used_envs.add(env.key)
        log.info("starting %s on port %d (pid %d)", loc.name, server.port, server.pid)
        self._io_pool.submit(self._wait_ready, loc.name, gen, server)

    def _wait_ready(self, name: str, gen: Generation, server: servers.CodeServer) -> None:
        load_error, error = None, None
        try:
            load_error = server.wait_ready(timeout=self.settings.start_timeout)
        except servers.StartError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"unexpected error: {exc}"
        seconds = time.monotonic() - server.started
        ignored = tuple(server.sidecar.ignored()) if error is None else ()
        self.inbox.put(_ServerDone(name, gen, load_error, error, seconds, ignored))

    def _on_server(self, msg: _ServerDone) -> None:
        loc = self.locations.get(msg.name)
        gen = msg.gen
        if loc is None or loc.next is not gen:
            return  # superseded or removed meanwhile; its server is already retiring
        answer = lifecycle.on_answer(
            start_error=msg.error is not None, load_error=msg.load_error is not None,
            serves_well=self._serves_well(loc), keep_last_good=self.settings.keep_last_good,
        )  # fmt: skip
        if msg.error is not None:
            metrics.FAILURES.labels(stage="start").inc()
        else:
            metrics.SERVER_START_SECONDS.observe(msg.seconds)
            if msg.load_error is not None:
                metrics.FAILURES.labels(stage="load").inc()
        if answer == "start-failed":
            self._fail(loc, gen, msg.error or "the code server did not start")
        elif answer == "failed-beside-last-good":
            assert msg.load_error is not None
            self._fail(loc, gen, msg.load_error)  # Dagster's own error, shown beside
        else:
            gen.ready, gen.load_error, gen.ignored = True, msg.load_error, msg.ignored
            self._promote(loc)

    def _promote(self, loc: Location) -> None:
        """Serve a ready generation once its file is stable, and retire the one it replaces."""
        gen = loc.next
        stable = self._desired.get(loc.name)
        if gen is None:
            return
        promote = lifecycle.promotion(ready=gen.ready, last_good=gen.last_good,
                                      generation=gen.digest,
                                      stable=stable.digest if stable else None)  # fmt: skip
        if promote == "wait":
            return
        assert gen.server is not None
        if promote == "last-good":  # the file's own version stays failed, and shown beside it
            old, loc.current, loc.next = loc.current, gen, None
            loc.retry_digest = loc.retry_at = None
            log.info("serving %s on port %d (pid %d), the last good version again",
                     loc.name, gen.server.port, gen.server.pid)  # fmt: skip
            if old is not None:
                self._retire(old)
            return
        if gen.load_error is not None:
            log.error("%s: the file failed to load (shown in the UI): %s", loc.name,
                      summarize(gen.load_error))  # fmt: skip
        if gen.ignored:
            log.warning("%s: %s", loc.name, status.ignored_warning(gen.ignored))
        log.info("serving %s on port %d (pid %d), ready in %.1fs", loc.name, gen.server.port,
                 gen.server.pid, self.clock() - gen.prepared)  # fmt: skip
        old = loc.current
        loc.current, loc.next = gen, None
        if gen.load_error is None:
            loc.last_loaded = self.wall()
            last_good.keep(self.settings.state_dir, gen)
        else:
            loc.last_error, loc.last_error_at = gen.load_error, self.wall()
        loc.failed_digest = loc.retry_digest = loc.retry_at = None
        self._set_error(loc, None)
        if old is not None:
            self._retire(old)

    def _fail(
        self, loc: Location, gen: Generation, error: str | SerializableErrorInfo, *,
        transient: bool = False,
    ) -> None:  # fmt: skip
        """A new generation did not make it: record why, and retry only if worth it."""
        info = (
            error
            if isinstance(error, SerializableErrorInfo)
            else error_info(f"{gen.spec.relpath}: {error}")
        )
        loc.next = None
        if gen.server is not None:
            self._retire(gen, immediately=True)
        if transient:
            retry = lifecycle.after_transient_failure(loc.attempts, now=self.clock())
            loc.attempts, delay = retry.attempts, retry.delay
            loc.retry_digest, loc.retry_at = gen.digest, retry.at
            log.error("%s: %s; retrying in %.0fs", loc.name, summarize(info), delay)
            info = error_info(f"{info.message.rstrip()}\n(retrying in {delay:.0f}s)")
            self._set_error(loc, info)
            return
        log.error(
            "%s: %s",
            loc.name,
            info.message.rstrip()
            if isinstance(error, str)
            else "the new version failed to load: " + summarize(info),
        )
        self._record_failure(loc, gen.digest, info)

    def _record_failure(self, loc: Location, digest: str, info: SerializableErrorInfo) -> None:
        loc.failed_digest = digest
        loc.retry_digest = loc.retry_at = None
        if not self.settings.keep_last_good and loc.current is not None:
            self._retire(loc.current)
            loc.current = None
        self._set_error(loc, info)

    def _serves_well(self, loc: Location) -> bool:
        return loc.current is not None and loc.current.alive() and loc.current.load_error is None

    def _abandon_next(self, loc: Location) -> None:
        if loc.next is not None and loc.next.server is not None:
            self._retire(loc.next, immediately=True)
        loc.next = None

    def _reap(self) -> None:
        """Notice servers that died on their own and schedule a restart with backoff, and
        servers the UI asked to reload."""
        now = self.clock()
        for loc in list(self.locations.values()):
            gen = loc.current
            sidecar = getattr(gen.server, "sidecar", None) if gen is not None else None
            if sidecar is not None and sidecar.reload_requested():
                self._retry(loc.name)
            if gen is None or gen.server is None or loc.next is not None:
                continue
            if loc.retry_at is not None or gen.alive():
                continue
            spawned = gen.spawned if gen.spawned is not None else gen.prepared
            retry = lifecycle.after_crash(loc.attempts, spawned=spawned, now=now)
            loc.attempts, delay = retry.attempts, retry.delay
            loc.retry_digest, loc.retry_at = gen.digest, retry.at
            pid = gen.server.pid
            how = (
                gen.server.exit_reason()
                if isinstance(gen.server, servers.CodeServer)
                else describe_exit(gen.server.exited())
            )
            reason = f"the code server (pid {pid}) {how}"
            log.error("%s: %s; restarting in %.0fs (attempt %d)", loc.name, reason, delay,
                      loc.attempts)  # fmt: skip
            metrics.RESTARTS.inc()
            if loc.failed_digest is not None and loc.error is not None:
                continue  # keep showing why the file's own version fails; the log says this
            self._set_error(loc, error_info(
                f"{gen.spec.relpath}: {reason}; restarting in {delay:.0f}s (attempt {loc.attempts})"
            ))  # fmt: skip

    def _reserved(self) -> frozenset[str]:
        """Names the static workspace uses; when they change, collisions are looked at anew."""
        names = self.static.poll().names
        if names != self._static_names:
            failed = {n: loc.failed_digest is not None and loc.error is not None
                      for n, loc in self.locations.items()}  # fmt: skip
            for name in lifecycle.look_again(failed):
                self.locations[name].failed_digest = None
            self._static_names = names
        return names

    def _next_retry(self) -> float | None:
        times = [loc.retry_at for loc in self.locations.values() if loc.retry_at is not None]
        return min(times) if times else None

    # -- what the UI sees ----------------------------------------------------------------

    def _set_error(self, loc: Location, info: SerializableErrorInfo | None) -> None:
        """Show ``info`` on the location (an in-process error server), or stop showing it."""
        if loc.error_server is not None and (info is None or info is not loc.error):
            self.retirements.add(loc.error_server, None)
            loc.error_server = None
        loc.error = info
        if info is not None:
            loc.last_error, loc.last_error_at = info, self.wall()
        if info is not None and loc.error_server is None:
            try:
                retry = _Retry(loc.name)
                loc.error_server = ErrorServer(loc.name, info, host=self.settings.host,
                                               on_reload=lambda: self.inbox.put(retry))  # fmt: skip
            except OSError as exc:
                log.error("%s: cannot show its error in the UI: %s", loc.name, exc)

    def entries(self) -> list[Entry]:
        return entries.entries(
            self.locations.values(), host=self.settings.advertise_host or self.settings.host,
            static_names=self._static_names, file_of=self._file_of,
            resolution=self.store.resolution,
        )  # fmt: skip

    def _file_of(self, loc: Location) -> str:
        gen, desired = loc.next or loc.current, self._desired.get(loc.name)
        return gen.spec.relpath if gen else desired.relpath if desired else ""

    def _publish(self) -> None:
        entries, static = self.entries(), self.static.current
        if (entries, static) == self._published:
            return
        self._published = (entries, static)
        self.retirements.submitted(self.publisher.submit(entries, static))

    # -- what operators see --------------------------------------------------------------

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
                loc.name
                for loc in self.locations.values()
                if loc.next is not None and loc.next.env.key == key
            ]
        )

    def _rows(self) -> list[FileStatus]:
        return status.rows(
            self.locations.values(), file_of=self._file_of, env_path=self.store.path,
            resolution=self.store.resolution,
            waiting_to_start=lambda loc: loc.next is not None
            and self._queued.get(loc.name, (None, None))[0] is loc.next,
            build_progress=self.builds.progress,
            retiring=[item.gen for item in self.retirements.items() if item.gen is not None],
            ignored=self.scanner.ignored, pending=self._pending,
        )  # fmt: skip

    # -- retiring and cleanup ------------------------------------------------------------

    def _retire(self, gen: Generation, *, immediately: bool = False) -> None:
        """Stop ``gen``'s server once no published workspace points at it."""
        if gen.server is not None:
            self.retirements.add(gen.server, gen, immediately=immediately)

    def _collect_envs(self) -> None:
        """Delete environments this runner used and nothing uses any more."""
        in_use = {
            gen.env.key
            for loc in self.locations.values()
            for gen in (loc.current, loc.next)
            if gen is not None
        }
        in_use |= self.retirements.env_keys()
        in_use |= self.builds.keys()
        for key in self._used_envs - in_use:
            log.info("removing env %s (no location uses it any more)", key[:12])
            self.store.remove(key)
            self._used_envs.discard(key)

    def _shutdown(self) -> None:
        last_known = self._rows()
        self.publisher.stop()
        # Some retired servers may be waiting out RUNNER_RETIRE_GRACE for their runs.
        live: list[Served] = [item.server for item in self.retirements.items()]
        for loc in self.locations.values():
            live += [g.server for g in (loc.current, loc.next) if g is not None and g.server]
            if loc.error_server is not None:
                live.append(loc.error_server)
        home = self.settings.instance_home or self.settings.workspace_path.parent
        shutdown.stop_all(live, grace=SHUTDOWN_GRACE, instance_home=home)
        self.builds.shutdown()
        self.retirements.shutdown()
        self._io_pool.shutdown(wait=False, cancel_futures=True)
        if not self._lease_lost:
            self.board.update(last_known, stopped=True)
