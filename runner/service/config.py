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

import grp
import logging
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from runner.base import paths, process
from runner.dagster_side import container_runs as runs
from runner.dagster_side.container_runs import ContainerRuns
from runner.isolation import identity, trust
from runner.isolation.identity import Isolation
from runner.servers.docker_servers import DockerOptions
from runner.servers.k8s_servers import K8sOptions
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
    #: Code servers in containers on Docker (RUNNER_SERVERS=docker); None: processes here.
    docker: DockerOptions | None = None
    #: Code servers as Deployments on Kubernetes (RUNNER_SERVERS=k8s).
    k8s: K8sOptions | None = None

    @property
    def isolated(self) -> bool:
        return self.isolation is not None and self.isolation.on

    @property
    def use_sockets(self) -> bool:
        """Servers listen on Unix sockets, reachable by the service's roles only, when
        locations run as users of their own and every role is on this machine."""
        return (
            self.isolated
            and self.advertise_host is None
            and self.host in LOOPBACK
            and self.k8s is None  # a pod is reached through its Service
        )

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
            docker=self.docker,
            k8s=self.k8s,
        )


# -- from the environment, read once as the runner starts ---------------------------------


def database_url() -> str | None:
    """``DAGSTER_DATABASE_URL``, or one built from ``DAGSTER_POSTGRES_*`` parts.

    The driver is made explicit (``postgresql+psycopg2://``): dagster-postgres ships psycopg2,
    while SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3.
    """
    url = os.environ.get("DAGSTER_DATABASE_URL")
    if url:
        return _with_driver(url)
    host = os.environ.get("DAGSTER_POSTGRES_HOST")
    if not host:
        return None
    user = quote(os.environ.get("DAGSTER_POSTGRES_USER", "postgres"), safe="")
    password = quote(os.environ.get("DAGSTER_POSTGRES_PASSWORD", ""), safe="")
    port = os.environ.get("DAGSTER_POSTGRES_PORT", "5432")
    db = quote(os.environ.get("DAGSTER_POSTGRES_DB", "postgres"), safe="")
    credentials = f"{user}:{password}@" if password else f"{user}@"
    return f"postgresql+psycopg2://{credentials}{host}:{port}/{db}"


def _with_driver(url: str) -> str:
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare) :]
    return url


def layout(share: str | Path | None = None) -> paths.Layout:
    """The share (``--share``, ``RUNNER_SHARE``, ``./share``) and the instance in use.

    ``DAGSTER_HOME`` wins when set. Otherwise the instance is ``dagster_home/`` (SQLite), or
    ``dagster_home/postgres/`` when a database URL is configured, and ``docker/`` or
    ``postgres-docker/`` with ``RUNNER_RUN_LAUNCHER=docker``: one dagster.yaml cannot switch
    storage or launcher on an environment variable, a folder for each can.
    """
    root = Path(share or os.environ.get("RUNNER_SHARE") or "share").resolve()
    explicit = os.environ.get("DAGSTER_HOME")
    exported = os.environ.get("RUNNER_WORKSPACE_DIR")  # set for the roles by the entrypoint
    if explicit and exported:
        return paths.Layout(root, Path(exported).resolve(), Path(explicit).resolve())
    if explicit:
        home = Path(explicit).resolve()
        return paths.Layout(share=root, dagster_home=home, instance_home=home)
    home = root / "dagster_home"
    folder = "-".join(
        part for part, wanted in (("postgres", database_url()), ("docker", docker_runs())) if wanted
    )
    return paths.Layout(
        share=root, dagster_home=home, instance_home=home / folder if folder else home
    )


def docker_runs() -> bool:
    """``RUNNER_RUN_LAUNCHER=docker``: runs in containers (``local``, the default: not)."""
    value = os.environ.get("RUNNER_RUN_LAUNCHER", "local").strip().lower()
    if value not in ("local", "docker", ""):
        raise SystemExit(f"RUNNER_RUN_LAUNCHER must be local or docker, not {value!r}")
    return value == "docker"


def ensure_instance_config(where: paths.Layout) -> None:
    """Give a new share the shipped instance settings (never overwrites a user's file)."""
    where.instance_home.mkdir(parents=True, exist_ok=True)
    config = where.instance_home / "dagster.yaml"
    if not config.exists():
        name = where.instance_home.name
        postgres = name.startswith("postgres") and database_url()
        text = (
            paths.TEMPLATES / ("postgres.dagster.yaml" if postgres else "dagster.yaml")
        ).read_text()
        if name.endswith("docker") and docker_runs():
            text += (paths.TEMPLATES / "docker-runs.yaml").read_text()
        tmp = config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, config)


def export_instance_env(where: paths.Layout) -> None:
    """Point this process and its children at the instance: ``DAGSTER_HOME``, and the
    normalized database URL its dagster.yaml reads; ``RUNNER_WORKSPACE_DIR`` keeps the
    folder of workspace.yaml for the roles, as ``DAGSTER_HOME`` may now differ from it."""
    os.environ["DAGSTER_HOME"] = str(where.instance_home)
    os.environ["RUNNER_WORKSPACE_DIR"] = str(where.dagster_home)
    url = database_url()
    if url:
        os.environ["DAGSTER_DATABASE_URL"] = url


def state_dir() -> Path:
    """The runner's own files (built environments), never on the share: ``RUNNER_STATE_DIR``;
    else, for root (whose locations run as users of their own, who cannot enter ``/root``),
    ``/var/lib/dagster-code-runner``, and ``~/.cache/dagster-code-runner`` for anyone else."""
    explicit = os.environ.get("RUNNER_STATE_DIR")
    if explicit:
        return Path(explicit).resolve()
    if os.geteuid() == 0 and os.environ.get("RUNNER_ISOLATION", "").lower() != "none":
        return Path("/var/lib/dagster-code-runner")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dagster-code-runner"


def parse_user(text: str) -> tuple[int, int]:
    """``NAME``, ``UID`` or ``UID:GID`` (a name's gid is its primary group)."""
    user, _, group = text.strip().partition(":")
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else None
    except KeyError:
        raise ValueError(f"RUNNER_SERVICE_USER: no user named {user!r}") from None
    uid = entry.pw_uid if entry else int(user)
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    elif entry:
        gid = entry.pw_gid
    else:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    return uid, gid


def service_identity(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """The user and group of the webserver and the daemon: ``RUNNER_SERVICE_USER``, else this
    process's own. Their group may enter every code server's socket folder."""
    text = environ.get("RUNNER_SERVICE_USER", "").strip()
    return parse_user(text) if text else (os.getuid(), os.getgid())


def share_owner() -> tuple[int, int] | None:
    """Who the files the runner writes on the share belong to: the service's user when this
    process is root and ``RUNNER_SERVICE_USER`` names another (the webserver and the daemon
    read and write them), else ``None`` (this process's own)."""
    if os.geteuid() != 0 or not os.environ.get("RUNNER_SERVICE_USER", "").strip():
        return None
    owner = service_user()
    return None if owner == (0, 0) else owner


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
        return service_identity(environ)
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


#: The server image when neither RUNNER_SERVER_IMAGE nor RUNNER_RUN_IMAGE says: the
#: project's own, as the README builds it.
DEFAULT_SERVER_IMAGE = "dagster-code-runner"


def _server_image(environ: Mapping[str, str]) -> str:
    return (
        environ.get("RUNNER_SERVER_IMAGE")
        or environ.get("RUNNER_RUN_IMAGE")
        or DEFAULT_SERVER_IMAGE
    )


def docker_servers(share: Path, environ: Mapping[str, str] = os.environ) -> DockerOptions:
    """Servers on Docker: ``RUNNER_SERVER_IMAGE`` and ``RUNNER_SERVER_NETWORK`` (default: the
    runs' ``RUNNER_RUN_IMAGE`` and ``RUNNER_RUN_NETWORK``), ``RUNNER_SERVER_MEMORY`` and
    ``RUNNER_SERVER_CPUS``; a bad setting stops the runner at once, with its name."""
    try:
        defaults = limits.service_defaults(environ, "server")
    except ValueError as exc:
        raise SystemExit(f"runner: {exc}") from None
    found = DockerOptions(
        image=_server_image(environ),
        share=str(share),
        network=environ.get("RUNNER_SERVER_NETWORK") or environ.get("RUNNER_RUN_NETWORK") or None,
        defaults=defaults,
    )
    log.info(
        "code servers run in Docker containers of image %s on network %s (default limits: %s)",
        found.image,
        found.network or "bridge",
        defaults.describe(),
    )
    return found


#: Where a pod finds its own namespace.
POD_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def k8s_servers(
    share: Path, share_root: Path, environ: Mapping[str, str] = os.environ
) -> K8sOptions:
    """Servers on Kubernetes: ``RUNNER_K8S_NAMESPACE`` (default: the runner's pod's),
    ``RUNNER_K8S_SHARE_CLAIM`` (the share's claim, mounted at ``share_root``, the path the
    runner sees the share at), ``RUNNER_K8S_CACHE_CLAIM`` (the shared uv cache),
    ``RUNNER_K8S_SERVICE_ACCOUNT``, ``RUNNER_SERVER_IMAGE`` and the server limits."""
    try:
        defaults = limits.service_defaults(environ, "server")
    except ValueError as exc:
        raise SystemExit(f"runner: {exc}") from None
    missing = [
        n for n in ("RUNNER_K8S_SHARE_CLAIM", "RUNNER_K8S_CACHE_CLAIM") if not environ.get(n)
    ]
    if missing:
        raise SystemExit(
            f"runner: RUNNER_SERVERS=k8s needs {' and '.join(missing)}: the volume claims of "
            "the share and of the uv cache the servers' pods mount (docs/deploy.md)"
        )
    try:
        own = POD_NAMESPACE.read_text().strip()
    except OSError:
        own = ""
    found = K8sOptions(
        namespace=environ.get("RUNNER_K8S_NAMESPACE") or own or "default",
        image=_server_image(environ),
        share=str(share),
        share_claim=environ["RUNNER_K8S_SHARE_CLAIM"],
        share_path=str(share_root),
        cache_claim=environ["RUNNER_K8S_CACHE_CLAIM"],
        service_account=environ.get("RUNNER_K8S_SERVICE_ACCOUNT") or None,
        defaults=defaults,
        kubeconfig=environ.get("KUBECONFIG") or None,
    )
    log.info(
        "code servers run as Deployments in namespace %s, image %s (default limits: %s)",
        found.namespace,
        found.image,
        defaults.describe(),
    )
    return found


def instance_handed_over(environ: Mapping[str, str] = os.environ) -> str | None:
    """``RUNNER_INSTANCE_READY``: the instance the entrypoint prepared for the roles it
    started (see ``instance.hand_over``)."""
    return environ.get("RUNNER_INSTANCE_READY")
