"""Where things live: the share's layout, the instance in use, and the runner's own state."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# Classic locations of the user's own, kept beside workspace.yaml and merged into it.
STATIC_NAME = "workspace.static.yaml"
TEMPLATES = Path(__file__).parent.parent / "templates"


@dataclass(frozen=True)
class Layout:
    share: Path
    dagster_home: Path  # holds workspace.yaml (and the SQLite instance by default)
    instance_home: Path  # DAGSTER_HOME for every role: the instance's dagster.yaml

    @property
    def code_dir(self) -> Path:
        return self.share / "code_location"

    @property
    def workspace(self) -> Path:
        return self.dagster_home / "workspace.yaml"


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


def layout(share: str | Path | None = None) -> Layout:
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
        return Layout(root, Path(exported).resolve(), Path(explicit).resolve())
    if explicit:
        home = Path(explicit).resolve()
        return Layout(share=root, dagster_home=home, instance_home=home)
    home = root / "dagster_home"
    folder = "-".join(
        part for part, wanted in (("postgres", database_url()), ("docker", docker_runs())) if wanted
    )
    return Layout(share=root, dagster_home=home, instance_home=home / folder if folder else home)


def docker_runs() -> bool:
    """``RUNNER_RUN_LAUNCHER=docker``: runs in containers (``local``, the default: not)."""
    value = os.environ.get("RUNNER_RUN_LAUNCHER", "local").strip().lower()
    if value not in ("local", "docker", ""):
        raise SystemExit(f"RUNNER_RUN_LAUNCHER must be local or docker, not {value!r}")
    return value == "docker"


def ensure_instance_config(where: Layout) -> None:
    """Give a new share the shipped instance settings (never overwrites a user's file)."""
    where.instance_home.mkdir(parents=True, exist_ok=True)
    config = where.instance_home / "dagster.yaml"
    if not config.exists():
        name = where.instance_home.name
        postgres = name.startswith("postgres") and database_url()
        text = (TEMPLATES / ("postgres.dagster.yaml" if postgres else "dagster.yaml")).read_text()
        if name.endswith("docker") and docker_runs():
            text += (TEMPLATES / "docker-runs.yaml").read_text()
        tmp = config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, config)


def export_instance_env(where: Layout) -> None:
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
    owner = service_identity()
    return None if owner == (0, 0) else owner
