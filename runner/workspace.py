"""workspace.yaml: render it, write it atomically, and make the webserver read it.

The webserver never re-reads workspace.yaml by itself: after a write we POST the
``reloadWorkspace`` mutation, whose answer lists every location's load status.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Entry:
    """One ``grpc_server`` location in workspace.yaml."""

    name: str
    host: str
    port: int
    #: The runner knows this location reports a load error (not written to the file).
    expect_error: bool = False


def render(entries: list[Entry]) -> str:
    """The workspace.yaml text for ``entries`` (sorted, so equal sets give equal text)."""
    load_from = [
        {"grpc_server": {"host": e.host, "port": e.port, "location_name": e.name}}
        for e in sorted(entries)
    ]
    header = "# Written by the code-location runner; edits here are overwritten.\n"
    return header + yaml.safe_dump({"load_from": load_from}, sort_keys=False)


def write_if_changed(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` atomically; return False if it already said that."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def ensure_exists(path: Path) -> None:
    """Give a webserver or daemon that starts before the runner an (empty) workspace."""
    if not path.exists():
        write_if_changed(path, render([]))


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
