"""The runner's settings: where the share, the workspace and the state are, and how code
servers start, from the command line (see :mod:`cli`) and the environment.

The service's own variables are read here, once, as the runner starts; every other module
gets values. What passes through on purpose is not a setting: the variables a location
inherits (:mod:`runner.share.location_env`), uv's and git's own (handed to uv as they are),
the instance's ``env:`` variables, and what the places of things are read from
(:mod:`runner.base.paths`, which the entrypoint exports to every role). ``boot/`` runs in a
location's environment and reads its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.base import paths, process
from runner.dagster_side import container_runs as runs
from runner.dagster_side.container_runs import ContainerRuns
from runner.isolation import identity, trust
from runner.isolation.identity import Isolation
from runner.servers.starts import ServerOptions
from runner.share import limits, location_env

log = logging.getLogger(__name__)

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


# -- from the environment, read once as the runner starts ---------------------------------


def isolation(environ: Mapping[str, str] = os.environ) -> Isolation:
    """``RUNNER_ISOLATION`` and ``RUNNER_UID_RANGE`` against what this process may do; a bad
    setting, or ``user`` where it cannot be had, stops at once with the reason."""
    try:
        ids = identity.IdRange.parse(environ.get("RUNNER_UID_RANGE") or identity.DEFAULT_RANGE)
        return identity.decide(
            environ.get("RUNNER_ISOLATION"),
            ids=ids,
            euid=os.geteuid(),
            effective=identity.read_effective_caps(),
            setpriv=process.can_set_user(),
        )
    except ValueError as exc:
        raise SystemExit(f"runner: {exc}") from None


def roles_isolated(environ: Mapping[str, str] = os.environ) -> bool:
    """The webserver and the daemon serve locations that run as users of their own (the
    entrypoint exports ``RUNNER_ISOLATION=user`` to them once the runner can have it)."""
    return environ.get("RUNNER_ISOLATION") == "user"


def service_user(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``RUNNER_SERVICE_USER``: the user and group of the webserver and the daemon."""
    try:
        return paths.service_identity(environ)
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"runner: {exc}") from None


def webserver_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """``DAGSTER_WEBSERVER_URL``: a stock webserver to tell about each new workspace."""
    return environ.get("DAGSTER_WEBSERVER_URL") or None


def settings_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """``RUNNER_SETTINGS_DIR``: settings files (secrets) outside the share."""
    value = environ.get("RUNNER_SETTINGS_DIR")
    return Path(value).resolve() if value else None


def pass_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """``RUNNER_PASS_ENV``: more of the service's environment for every location."""
    return tuple(location_env.pass_env_patterns(environ))


def container_runs(
    kind: runs.Kind, environ: Mapping[str, str] = os.environ
) -> ContainerRuns | None:
    """How runs start, from the instance's launcher and the ``RUNNER_RUN_*`` settings; a bad
    setting stops the runner at once, with the setting's name."""
    try:
        defaults = limits.service_defaults(environ)
        found = ContainerRuns.from_environ(
            kind, environ, own_container=runs.read_own_container(), defaults=defaults
        )
    except ValueError as exc:
        raise SystemExit(f"runner: {exc}") from None
    if kind == "local":
        return None
    problem = found.problem()
    if problem:
        log.warning("%s", problem)
    log.info(
        "runs start in %s containers (image %s, default limits: %s)",
        kind,
        found.image or "from the run launcher's config",
        found.defaults.describe(),
    )
    return found
