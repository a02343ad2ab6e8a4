"""Starting code servers: queued once their environment is ready, spawned a few at a time
from the loop's thread (a server's parent-death signal is tied to the thread that spawned
it), each awaited in a worker until it answers, which comes back as a :class:`ServerDone`.

Every server of the service gets the same options: its location's environment variables,
its scratch folder, the log format, how its runs start in containers, and whether it is
forked from its environment's template (see :mod:`warm`) or started cold.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runner.base import process
from runner.dagster_side import container_runs, provenance
from runner.dagster_side.container_runs import ContainerRuns
from runner.envs import env as envs
from runner.isolation import tenancy, trust
from runner.isolation.identity import Identities, Identity, Isolation
from runner.lifecycle import transitions
from runner.lifecycle.model import Generation, Location, Problem
from runner.lifecycle.transitions import Step
from runner.servers import last_good, warm
from runner.servers import server as servers
from runner.servers.cgroup import Cgroups
from runner.servers.docker_servers import DockerOptions, DockerServers
from runner.servers.k8s_servers import K8sOptions, K8sServers
from runner.share.script import render_block, short_name

log = logging.getLogger(__name__)

#: Cold starts at once; warm ones share these slots (see :func:`start_budget`).
PARALLEL_STARTS = max(2, os.cpu_count() or 2)

#: Seconds a starting server holds its start slot at most.
SLOT_HELD_FOR = 15.0
#: A server forked from its environment's template only loads its file (about a tenth of a
#: cold start's CPU, which imports Dagster first): this many warm starts share one slot.
WARM_PER_SLOT = 4


def start_cost(warm: bool) -> int:
    """What a start holds of the start slots, in warm starts."""
    return 1 if warm else WARM_PER_SLOT


def start_budget(starting: list[tuple[float, bool]], *, now: float, slots: int) -> int:
    """How many more warm starts may begin now (a cold one costs :func:`start_cost`), given
    when each server still starting was spawned and whether it started warm.

    Servers starting together share the CPU (importing Dagster alone takes about 1.5 s of
    it): fifty cold starts at once all answer after a minute, a few at a time make the first
    ones visible within seconds and the last ones no later. A server that takes long to
    start (an import that hangs) gives up its slot after ``SLOT_HELD_FOR``.
    """
    held = sum(start_cost(warm) for at, warm in starting if now - at < SLOT_HELD_FOR)
    return max(0, slots * WARM_PER_SLOT - held)


def is_next(locations: Mapping[str, Location], gen: Generation) -> bool:
    """Whether ``gen`` is still the version on its way for its location."""
    loc = locations.get(gen.spec.name)
    return loc is not None and loc.next is not None and loc.next.serial == gen.serial


def starting(loc: Location) -> tuple[float, bool] | None:
    """When the server of ``loc``'s next version was spawned, and whether warm, while it has
    not answered."""
    gen = loc.next
    if gen is None or gen.server is None or gen.ready or gen.spawned is None:
        return None
    return gen.spawned, gen.server.start == "warm"


@dataclass(frozen=True)
class ServerDone:
    """Generation ``serial`` of location ``name`` answered, or did not start (``error``)."""

    name: str
    serial: int
    load_error: Problem | None
    error: str | None
    seconds: float  # from spawn to ready (or to the failure)
    ignored: tuple[str, ...] = ()  # definitions Dagster dropped (no Definitions in the file)


@dataclass(frozen=True)
class ServerOptions:
    """What every code server of the service gets."""

    state_dir: Path
    host: str
    inherited: Mapping[str, str]  # the service's environment a location sees
    log_format: str = "colored"
    start_timeout: float = 180.0
    container_runs: ContainerRuns | None = None
    #: Fork servers from a template per environment; False: every server starts cold.
    warm_starts: bool = True
    #: Who locations run as (see :mod:`identity`); None: the runner's own user.
    isolation: Isolation | None = None
    #: The group of the service's roles (webserver, daemon): it reaches the servers' sockets.
    service_gid: int = 0
    #: Servers listen on Unix sockets in folders of their own (else on TCP ports of ``host``).
    use_sockets: bool = False
    #: The indexes the service builds from: a template holds rights only over their code.
    trusted_indexes: frozenset[str] = frozenset()
    #: Where each location's runs keep their outputs, a folder each (locations as users).
    outputs: Path | None = None
    #: Servers run in containers of their own on Docker (see :mod:`docker_servers`).
    docker: DockerOptions | None = None
    #: Servers run as Deployments on Kubernetes (see :mod:`k8s_servers`).
    k8s: K8sOptions | None = None


class Starts:
    def __init__(
        self,
        options: ServerOptions,
        *,
        start_server: Callable[..., servers.CodeServer],
        done: Callable[[ServerDone], None],
        wake: Callable[[], None] = lambda: None,
        identities: Identities | None = None,
        lock_path: Callable[[str], Path] | None = None,
        resolution: Callable[[str], envs.Resolution | None] = lambda key: None,
    ) -> None:
        self.options = options
        isolation = options.isolation if options.isolation and options.isolation.on else None
        #: Whom each location runs as (None: every location runs as the runner).
        self.identities = identities if isolation is not None else None
        rights = warm.Rights(isolation.ids.template, isolation.ids.locations) if isolation else None
        #: Where servers run when not as processes here: containers on Docker.
        self.docker = DockerServers(options.docker) if options.docker else None
        self.k8s = K8sServers(options.k8s) if options.k8s else None
        self._deployed: set[str] = set()  # locations with objects on the cluster
        #: Templates wake the loop when they are ready (or end); a container starts cold.
        self.templates = (
            warm.Templates(options.inherited, changed=wake, rights=rights)
            if options.warm_starts and self.docker is None and self.k8s is None
            else None
        )
        self._lock_path = lock_path
        self._resolution = resolution  # how an environment was resolved: its lock's digest
        self._used: set[str] = set()  # names this runner started servers for
        self.used_envs: set[str] = set()  # env keys this runner started servers in
        self._foreign: dict[str, str | None] = {}  # env key -> why its template holds no rights
        self._start_server = start_server  # the one place a code server process starts
        self._done = done  # called from a worker thread
        self._queued: dict[str, tuple[Generation, envs.Env]] = {}  # by location name
        self._for_template: set[str] = set()  # queued ones whose template is starting
        self._pool = ThreadPoolExecutor(64, "server-io")
        #: A cgroup per server, where one can be made (see :mod:`cgroup`); made by ``begin``.
        self.cgroups: Cgroups | None = None

    def __len__(self) -> int:
        return len(self._queued)

    def queue(self, gen: Generation, env: envs.Env) -> None:
        """Start ``gen``'s server in ``env`` when a slot is free (it replaces any queued
        earlier for the location)."""
        self._queued[gen.spec.name] = (gen, env)
        self._for_template.discard(gen.spec.name)

    def queued(self, gen: Generation) -> bool:
        held = self._queued.get(gen.spec.name)
        return held is not None and held[0].serial == gen.serial

    def waiting(self, gen: Generation) -> str | None:
        """Why ``gen``'s start waits, if it is queued (for ``status``)."""
        if not self.queued(gen):
            return None
        if gen.spec.name in self._for_template:
            return "waiting for its environment's template to start"
        return "waiting for a start slot"

    def take(
        self, free: int, *, wanted: Callable[[Generation], bool]
    ) -> list[tuple[Generation, envs.Env]]:
        """Up to ``free`` queued starts still ``wanted``, oldest first (the others are
        dropped: superseded or removed meanwhile)."""
        taken: list[tuple[Generation, envs.Env]] = []
        while self._queued and len(taken) < free:
            gen, env = self._queued.pop(next(iter(self._queued)))
            if wanted(gen):
                taken.append((gen, env))
        return taken

    def start_queued(
        self, locations: Mapping[str, Location], *, now: float, keep_last_good: bool
    ) -> list[Step]:
        """Start queued servers while start slots are free, each at most once (one whose
        template is starting goes back in line); the step of each, in order."""
        held, steps = dict(locations), []
        started = [at for loc in held.values() if (at := starting(loc)) is not None]
        budget = start_budget(started, now=now, slots=PARALLEL_STARTS)
        least = start_cost(warm=self.templates is not None)
        waiting = Counter(str(env.python) for _, env in self._queued.values())
        for _ in range(len(self)):
            if budget < least or not (taken := self.take(1, wanted=lambda g: is_next(held, g))):
                break
            gen, env = taken[0]
            loc = held[gen.spec.name]
            try:
                server = self.spawn(gen, env, alone=waiting[str(env.python)] <= 1)
            except OSError as exc:
                why = f"could not start the code server: {exc}"
                step = transitions.failed(loc, gen, why, keep_last_good=keep_last_good, now=now)
            else:
                if server is None:  # its template is starting; the start stays queued
                    continue
                budget -= start_cost(server.start == "warm")
                self.used_envs.add(env.key)
                step = transitions.spawned(loc, gen, server, now=now)
            steps.append(step)
            if step.loc is not None:
                held[step.name] = step.loc
        return steps

    def spawn(
        self, gen: Generation, env: envs.Env, *, alone: bool = True
    ) -> servers.CodeServer | None:
        """Start ``gen``'s server (raises OSError) and await its answer in a worker;
        ``None``: its environment's template is starting, and the start stays queued.
        ``alone``: no other start waits for ``env`` (see :data:`warm.FIRST_START`)."""
        opts, name = self.options, gen.spec.name
        user = self._user(name)
        file, folder, source = gen.spec.path, None, None
        if gen.last_good:  # the share holds a broken version now: serve the copy
            file, folder = last_good.copy_path(opts.state_dir, gen), gen.spec.path.parent
            log.info("%s: restarting the last good version from its copy %s", name, file)
        if user is not None:
            if (why := tenancy.blocked(env.python, user, want="x")) is not None:
                raise OSError(
                    f"its user (uid {user.uid}) cannot run its environment's "
                    f"interpreter {env.python}: {why}"
                )
            if tenancy.readable_code(file, user) is not None:
                # Not readable by its user (or the last good copy): serve a copy it can read.
                file, folder, source = gen.spec.path, None, gen.spec.source
        server_env = {**opts.inherited, **gen.spec.settings.values}
        facts = provenance.facts(gen.spec, env.key, self._resolution(env.key))
        server_env[provenance.VARIABLE] = provenance.variable(facts)  # its runs tag themselves
        if user is not None and opts.outputs is not None:
            folder_of_outputs = opts.outputs / short_name(name)
            tenancy.claimed_folder(folder_of_outputs, uid=user.uid, gid=opts.service_gid)
            server_env["RUNNER_OUTPUTS"] = str(folder_of_outputs)
        workdir = opts.state_dir / "work" / short_name(name)
        runs, run_args, entry_point = opts.container_runs, [], None
        if runs is not None and runs.kind != "local":
            env_file = container_runs.run_env_file(opts.state_dir, name)
            container_runs.write_run_env(env_file, server_env, workdir, user=user)
            run_args = runs.server_args(name, gen.spec.metadata.run_limits, user=user)
            entry_point = container_runs.entry_point(env.python, env_file)
        launch = None
        if self.k8s is not None:
            lock = self._lock_path(env.key) if self._lock_path else None
            launch = functools.partial(
                self.k8s.launch,
                location=name,
                limits=gen.spec.metadata.server_limits,
                env_script=render_block(gen.env.metadata),
                env_lock=gen.env.lock or (lock.read_text() if lock and lock.exists() else ""),
            )
            self._deployed.add(name)
        elif self.docker is not None:
            launch = functools.partial(
                self.docker.launch, location=name, limits=gen.spec.metadata.server_limits
            )
        elif self.templates is not None:
            launch = functools.partial(
                self.templates.launch,
                env.python,
                cold=self._no_rights(env) if user else None,
                alone=alone,
            )
        try:
            server = self._start_server(
                location=name,
                python=env.python,
                file=file,
                folder=folder,
                host=opts.host,
                env=server_env,
                workdir=workdir,
                sidecars=opts.state_dir / "servers",
                log_format=opts.log_format,
                run_args=run_args,
                run_entry_point=entry_point,
                launch=launch,
                user=user,
                service_gid=opts.service_gid,
                use_socket=opts.use_sockets,
                source=source,
                cgroups=self.cgroups,
                title=f"server {name} gen {gen.serial}",
            )
        except warm.NotReady:
            self._queued.setdefault(name, (gen, env))
            self._for_template.add(name)
            return None
        self._for_template.discard(name)
        self._pool.submit(self._wait_ready, name, gen.serial, server)
        return server

    def _user(self, name: str) -> Identity | None:
        if self.identities is None:
            return None
        try:
            user = self.identities.get(name)
        except ValueError as exc:  # every id is in use
            raise OSError(str(exc)) from None
        self._used.add(name)
        return user

    def release(self, busy: set[str]) -> None:
        """Give back the ids of locations this runner served that have no server left
        (``busy``: names that still have one): what their users still run is stopped, their
        scratch folders and run settings removed."""
        if self.k8s is not None:  # a location gone: its Secret and NetworkPolicy too
            for name in sorted(self._deployed - busy):
                self._deployed.discard(name)
                self._pool.submit(self.k8s.delete_location, name)
        if self.identities is None:
            return
        for name in sorted(self._used - busy):
            self._used.discard(name)
            user = self.identities.release(name)
            if user is not None:
                log.info("%s: its user (uid %d) is released", name, user.uid)
                self._pool.submit(self._clear, name, user)

    def begin(self) -> None:
        """Once the runner holds the share: its cgroups made, what a killed runner left
        behind stopped."""
        if self.k8s is not None:
            log.info("code servers run as Deployments in namespace %s", self.k8s.options.namespace)
            self.k8s.remove_all(why="that a previous runner of this share applied")
            return
        if self.docker is not None:  # each server is fenced by a container of its own
            log.info("code servers run in Docker containers (image %s)", self.docker.options.image)
            self.docker.remove_all(why="that a previous runner of this share left")
            self.stop_leftovers()
            return
        self.cgroups, how = Cgroups.create()
        if self.cgroups is not None:
            log.info("code servers run %s", how)
            if self.templates is not None:
                self.templates.cgroup = self.cgroups.make("templates")
        else:
            log.info(
                "code servers run without a cgroup each (%s): what a server leaves "
                "behind is found by the variable it inherits%s",
                how,
                " and by its location's user" if self.identities else "",
            )
        self.stop_leftovers()

    def stop_leftovers(self) -> None:
        """What the locations' users still run from a runner that was killed (a child that
        left its server's session): this runner serves the share now, so it is stale."""
        if self.identities is None:
            return
        uids = {user.uid for user in self.identities.held().values()}
        pids = [pid for uid, found in tenancy.processes_of_users(uids).items() for pid in found]
        if pids:
            log.info(
                "stopping %d process(es) that locations' users still ran from a previous "
                "runner: %s",
                len(pids),
                pids,
            )
            process.stop_pids(pids, name="a previous runner's processes")

    def _clear(self, name: str, user: Identity) -> None:
        stop_user(user, name=name)
        tenancy.remove(self.options.state_dir / "work" / short_name(name))
        container_runs.run_env_file(self.options.state_dir, name).unlink(missing_ok=True)

    def _no_rights(self, env: envs.Env) -> str | None:
        """Why ``env``'s template may not fork into locations' users (its Dagster is not
        the service's to trust, see :mod:`trust`), once per environment."""
        if env.key not in self._foreign:
            try:
                text = self._lock_path(env.key).read_text() if self._lock_path else ""
            except OSError:
                text = ""
            why = (
                trust.foreign_source(text, self.options.trusted_indexes)
                if text
                else ("its lock is missing")
            )
            shared = "a template shared by users of several locations would run it"
            self._foreign[env.key] = f"{why}: {shared}" if why else None
        return self._foreign[env.key]

    def retire(self, python: Path) -> None:
        """An environment is removed: so are its templates."""
        if self.templates is not None:
            self.templates.retire(python)

    def shutdown(self) -> None:
        """Stop the templates (the servers are stopped one by one, by the supervisor), then
        whatever the locations' users still run (a child that left its server's session)."""
        if self.templates is not None:
            self.templates.shutdown()
        if self.identities is not None:
            held = self.identities.held()
            for name in sorted(self._used):
                if name in held:
                    stop_user(held[name], name=name)
        if self.k8s is not None:  # the last word: nothing of the share stays on the cluster
            self.k8s.remove_all(why="still there as the runner stopped")
        if self.docker is not None:  # the last word: no container of the share stays
            self.docker.remove_all(why="still there as the runner stopped")
        if self.cgroups is not None:  # the last word: nothing a server started stays
            left = self.cgroups.kill()
            if left:
                log.info("stopped %d process(es) left in the servers' cgroups: %s", len(left), left)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _wait_ready(self, name: str, serial: int, server: servers.CodeServer) -> None:
        load_error, error = None, None
        try:
            load_error = server.wait_ready(timeout=self.options.start_timeout)
        except servers.StartError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"unexpected error: {exc}"
        seconds = time.monotonic() - server.started
        ignored = tuple(server.sidecar.ignored()) if error is None else ()
        self._done(ServerDone(name, serial, load_error, error, seconds, ignored))


def stop_user(user: Identity, *, name: str) -> None:
    """Stop every process of a location's user: they are all the location's."""
    pids = tenancy.processes_of(user.uid)
    if pids:
        log.info(
            "%s: stopping %d process(es) of its user (uid %d): %s", name, len(pids), user.uid, pids
        )
        process.stop_pids(pids, name=f"processes of {name}")
