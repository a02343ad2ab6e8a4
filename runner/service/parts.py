"""What the service is made of, and how the parts are connected: each part gets the settings
it needs as values, and reports to the loop's inbox."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from runner.base.paths import STATIC_NAME
from runner.dagster_side.error_servers import ErrorServers, Sockets
from runner.dagster_side.publish import Publisher
from runner.dagster_side.workspace import StaticSource
from runner.envs import env as envs
from runner.envs.builds import Builds
from runner.isolation.identity import IDS_NAME, Identities
from runner.servers import server as servers
from runner.servers.retire import Retirements
from runner.servers.starts import Starts
from runner.service.config import Settings
from runner.service.inbox import Inbox, Wake
from runner.service.status import STATUS_NAME, Board
from runner.share.scan import RescanPace, Scanner

#: Environments built at once (each uv build uses the network and a core).
PARALLEL_BUILDS = 2


@dataclass
class Parts:
    store: envs.EnvStore  # built environments
    scanner: Scanner  # the share
    pace: RescanPace  # how often it is rescanned
    static: StaticSource  # the user's own workspace entries
    publisher: Publisher  # workspace.yaml, to the daemon and the webserver
    builds: Builds  # environments being built
    starts: Starts  # servers queued and starting
    retirements: Retirements  # servers no workspace points at, stopping
    errors: ErrorServers  # failures shown in the UI
    board: Board  # the status file


def assemble(
    settings: Settings,
    inbox: Inbox,
    *,
    clock: Callable[[], float] = time.monotonic,
    store: envs.EnvStore | None = None,
    start_server: Callable[..., servers.CodeServer] = servers.start,
) -> Parts:
    def wake() -> None:
        inbox.put(Wake())

    # Where locations run as users of their own, so do builds (an sdist runs its code).
    isolation = settings.isolation if settings.isolated else None
    store = store or envs.EnvStore(
        settings.state_dir / "envs",
        builder=isolation.ids.builds if isolation else None,
        network_timeout=settings.network_timeout,
    )
    home = settings.workspace_path.parent
    starts = Starts(
        settings.server_options(),
        start_server=start_server,
        done=inbox.put,
        wake=wake,
        identities=Identities(home / IDS_NAME, isolation.ids) if isolation else None,
        lock_path=store.lock_path,
        resolution=store.resolution,
    )
    retirements = Retirements(grace=settings.retire_grace, done=inbox.put, clock=clock)
    sockets = settings.state_dir / "servers"
    return Parts(
        store=store,
        scanner=Scanner(
            settings.code_dir, stable_for=settings.stable_for, settings=settings.settings_files()
        ),
        pace=RescanPace(settings.rescan_every),
        static=StaticSource(home / STATIC_NAME),
        publisher=Publisher(
            settings.workspace_path,
            webserver_url=settings.webserver_url,
            on_published=lambda version: wake(),
        ),
        builds=Builds(store, workers=PARALLEL_BUILDS, done=inbox.put, clock=clock),
        starts=starts,
        retirements=retirements,
        errors=ErrorServers(
            host=settings.host,
            on_reload=wake,
            retire=lambda server: retirements.add(server, None),
            sockets=Sockets(sockets, settings.service[1]) if settings.use_sockets else None,
        ),
        board=Board(
            home / STATUS_NAME,
            share=settings.code_dir.parent,
            isolation=settings.isolation.describe() if settings.isolation else "",
        ),
    )
