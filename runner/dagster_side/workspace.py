"""workspace.yaml: render it, write it atomically, and make the webserver read it.

The webserver never re-reads workspace.yaml by itself: after a write we POST the
``reloadWorkspace`` mutation, whose answer lists every location's load status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from runner.base.files import write_if_changed
from runner.base.paths import STATIC_NAME

log = logging.getLogger(__name__)


#: The key of a runner entry's ``additional_metadata`` naming the server it points at: the
#: webserver and the daemon keep an unchanged entry's loaded copy (see ``reload``).
SERVER_ID = "server_id"


def local_address(bind_host: str) -> str:
    """Where this machine reaches a server bound to ``bind_host`` (a wildcard: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


@dataclass(frozen=True, order=True)
class Entry:
    """One ``grpc_server`` location in workspace.yaml."""

    name: str
    host: str
    port: int
    #: The runner knows this location reports a load error (not written to the file).
    expect_error: bool = False
    file: str = ""  # the file on the share, shown with the location in the UI
    server_id: str = ""  # the id of the server on ``port``
    warning: str = ""  # shown with the location in the UI (e.g. definitions Dagster dropped)
    versions: str = ""  # shown with the location: dagster's and its dependencies' versions
    socket: str = ""  # the server's Unix socket, instead of host and port
    #: Shown with the location: what its runs are tagged with (see :mod:`provenance`).
    provenance: tuple[tuple[str, str], ...] = ()


def _grpc_server(entry: Entry) -> dict:
    where = {"socket": entry.socket} if entry.socket else {"host": entry.host, "port": entry.port}
    config: dict = {**where, "location_name": entry.name}
    if entry.server_id:
        metadata = {"file": entry.file, SERVER_ID: entry.server_id}
        if entry.versions:
            metadata["versions"] = entry.versions
        if entry.warning:
            metadata["warning"] = entry.warning
        metadata.update({name: value for name, value in entry.provenance if name != "file"})
        config["additional_metadata"] = metadata
    return {"grpc_server": config}


def render(entries: list[Entry], static: Static | None = None) -> str:
    """The workspace.yaml text: the user's static entries unchanged, then ours (sorted, so
    equal sets give equal text)."""
    load_from = list(static.load_from) if static else []
    load_from += [_grpc_server(e) for e in sorted(entries)]
    header = (
        "# Written by the code-location runner; edits here are overwritten.\n"
        f"# Add classic locations to {STATIC_NAME} beside this file instead.\n"
    )
    return header + yaml.safe_dump({"load_from": load_from}, sort_keys=False)


@dataclass(frozen=True)
class Static:
    """Classic locations a user maintains (python_file, python_module, grpc_server, ...)."""

    load_from: tuple[dict, ...] = ()
    names: frozenset[str] = frozenset()


def load_static(path: Path) -> Static:
    """Read ``workspace.static.yaml``; raise ValueError saying what is wrong with it.

    Location names come from Dagster's own workspace loader, so defaults (a python_file
    without ``location_name``) are named exactly as Dagster names them. Relative paths stay
    as they are: workspace.yaml sits in the same folder, so they mean the same thing.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return Static()
    except yaml.YAMLError as exc:
        raise ValueError(f"{path.name} is not valid YAML: {exc}") from None
    if data is None:
        return Static()
    if not isinstance(data, dict) or not isinstance(data.get("load_from"), list):
        raise ValueError(f"{path.name} must be a mapping with a 'load_from' list")
    from runner.dagster_side.internals import WorkspaceFileTarget

    try:
        origins = WorkspaceFileTarget(paths=[str(path)]).create_origins()
    except Exception as exc:  # Dagster's config errors come in many types
        raise ValueError(f"{path.name} is not a valid workspace: {exc}") from None
    return Static(tuple(data["load_from"]), frozenset(o.location_name for o in origins))


class StaticSource:
    """Re-reads the static workspace when it changes; a broken edit keeps the last good one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = Static()
        self._signature: tuple[int, int] | None = None

    def poll(self) -> Static:
        try:
            st = self.path.stat()
            signature = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            signature = None
        if signature != self._signature:
            self._signature = signature
            try:
                self.current = load_static(self.path)
                log.info(
                    "static workspace: %d location(s) from %s", len(self.current.names), self.path
                )
            except ValueError as exc:
                log.error("%s (keeping the %d location(s) it had)", exc, len(self.current.names))
        return self.current


def ensure_exists(path: Path) -> None:
    """Give a webserver or daemon that starts before the runner an (empty) workspace."""
    if not path.exists():
        write_if_changed(path, render([]))


def without_servers(path: Path) -> None:
    """Keep only the user's static entries: the servers a previous runner published went
    with it, and a webserver or daemon that starts before this runner's first publish would
    try each of them (and log a stack trace per location). A broken static file leaves the
    workspace as it is (the runner reports it)."""
    try:
        static = load_static(path.parent / STATIC_NAME)
    except (ValueError, OSError):
        ensure_exists(path)
        return
    write_if_changed(path, render([], static))


@dataclass(frozen=True)
class LocationStatus:
    name: str
    load_status: str  # LOADING | LOADED
    error: str | None


class ReloadError(Exception):
    """The webserver could not be reached or refused the reload."""


_RELOAD = """
mutation RunnerReloadWorkspace {
  reloadWorkspace {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def reload_webserver(url: str, *, timeout: float = 120.0) -> list[LocationStatus]:
    """Ask the webserver at ``url`` to re-read workspace.yaml; return what it loaded."""
    try:
        resp = requests.post(f"{url.rstrip('/')}/graphql", json={"query": _RELOAD}, timeout=timeout)
        resp.raise_for_status()
        body = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise ReloadError(f"cannot reach the webserver at {url}: {exc}") from None
    if body.get("errors"):
        raise ReloadError(f"webserver rejected the reload: {body['errors'][0].get('message')}")
    result = body["data"]["reloadWorkspace"]
    if result["__typename"] != "Workspace":
        raise ReloadError(f"webserver refused the reload: {result.get('message')}")
    statuses = []
    for entry in result["locationEntries"]:
        loaded = entry.get("locationOrLoadError") or {}
        error = loaded.get("message") if loaded.get("__typename") == "PythonError" else None
        statuses.append(LocationStatus(entry["name"], entry["loadStatus"], error))
    return statuses
