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
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dagster._utils.error import SerializableErrorInfo

from . import container_runs, last_good, warm
from . import env as envs
from . import server as servers
from .container_runs import ContainerRuns
from .plan import Generation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerDone:
    """Generation ``serial`` of location ``name`` answered, or did not start (``error``)."""

    name: str
    serial: int
    load_error: SerializableErrorInfo | None
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


class Starts:
    def __init__(
        self,
        options: ServerOptions,
        *,
        start_server: Callable[..., servers.CodeServer],
        done: Callable[[ServerDone], None],
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.options = options
        #: Templates wake the loop when they are ready (or end).
        self.templates = (
            warm.Templates(options.inherited, changed=wake) if options.warm_starts else None
        )
        self._start_server = start_server  # the one place a code server process starts
        self._done = done  # called from a worker thread
        self._queued: dict[str, tuple[Generation, envs.Env]] = {}  # by location name
        self._for_template: set[str] = set()  # queued ones whose template is starting
        self._pool = ThreadPoolExecutor(64, "server-io")

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

    def spawn(self, gen: Generation, env: envs.Env) -> servers.CodeServer | None:
        """Start ``gen``'s server (raises OSError) and await its answer in a worker;
        ``None``: its environment's template is starting, and the start stays queued."""
        opts, name = self.options, gen.spec.name
        file, folder = gen.spec.path, None
        if gen.last_good:  # the share holds a broken version now: serve the copy
            file, folder = last_good.copy_path(opts.state_dir, gen), gen.spec.path.parent
            log.info("%s: restarting the last good version from its copy %s", name, file)
        server_env = {**opts.inherited, **gen.spec.settings.values}
        workdir = opts.state_dir / "work" / name
        runs, run_args, entry_point = opts.container_runs, [], None
        if runs is not None and runs.kind != "local":
            env_file = container_runs.run_env_file(opts.state_dir, name)
            container_runs.write_run_env(env_file, server_env, workdir)
            run_args = runs.server_args(name, gen.spec.metadata.run_limits)
            entry_point = container_runs.entry_point(env.python, env_file)
        launch = functools.partial(self.templates.launch, env.python) if self.templates else None
        try:
            server = self._start_server(
                location=name, python=env.python, file=file, folder=folder, host=opts.host,
                env=server_env, workdir=workdir, sidecars=opts.state_dir / "servers",
                log_format=opts.log_format, run_args=run_args, run_entry_point=entry_point,
                launch=launch,
            )  # fmt: skip
        except warm.NotReady:
            self._queued.setdefault(name, (gen, env))
            self._for_template.add(name)
            return None
        self._for_template.discard(name)
        self._pool.submit(self._wait_ready, name, gen.serial, server)
        return server

    def retire(self, python: Path) -> None:
        """An environment is removed: so are its templates."""
        if self.templates is not None:
            self.templates.retire(python)

    def shutdown(self) -> None:
        """Stop the templates (the servers are stopped one by one, by the supervisor)."""
        if self.templates is not None:
            self.templates.shutdown()
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
