"""The runner's settings: where the share, the workspace and the state are, and how code
servers start (from the command line and the environment, see :mod:`cli`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runner.dagster_side.container_runs import ContainerRuns
from runner.isolation import trust
from runner.isolation.identity import Isolation
from runner.servers.starts import ServerOptions
from runner.share import location_env

LOOPBACK = ("127.0.0.1", "::1", "localhost")


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
    #: Seconds a build waits on a silent host (uv's HTTP timeout, git's low-speed limit).
    network_timeout: float = 30.0
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
    #: Fork code servers from a template per environment (see :mod:`warm`); False: cold.
    warm_starts: bool = True
    #: Who locations run as (see :mod:`identity`); None: the runner's own user.
    isolation: Isolation | None = None
    #: The user and group of the webserver and the daemon (RUNNER_SERVICE_USER).
    service: tuple[int, int] = (0, 0)

    @property
    def isolated(self) -> bool:
        return self.isolation is not None and self.isolation.on

    @property
    def use_sockets(self) -> bool:
        """Servers listen on Unix sockets, reachable by the service's roles only, when
        locations run as users of their own and every role is on this machine."""
        return self.isolated and self.advertise_host is None and self.host in LOOPBACK

    @property
    def home(self) -> Path:
        """DAGSTER_HOME of the instance."""
        return self.instance_home or self.workspace_path.parent

    def settings_files(self) -> location_env.SettingsFiles:
        """Settings files beside the code, and outside the share (they win)."""
        roots = [(self.code_dir, self.code_dir.name)]
        if self.settings_dir is not None:
            roots.append((self.settings_dir, str(self.settings_dir)))
        return location_env.SettingsFiles(roots)

    def server_options(self) -> ServerOptions:
        """What every code server gets, its environment included: what the service's
        environment passes on to locations (see :mod:`location_env`)."""
        also = [*location_env.instance_variables(self.home / "dagster.yaml"), *self.pass_env]
        return ServerOptions(
            state_dir=self.state_dir,
            host=self.host,
            inherited=location_env.inherited(os.environ, also=also),
            log_format=self.server_log_format,
            start_timeout=self.start_timeout,
            container_runs=self.container_runs,
            warm_starts=self.warm_starts,
            isolation=self.isolation,
            service_gid=self.service[1],
            use_sockets=self.use_sockets,
            trusted_indexes=trust.service_indexes(os.environ),
            outputs=self.home / "storage" / "locations" if self.isolated else None,
        )
