"""Why a build failed: outside the file (worth retrying) or in it (wait for an edit).

uv's wording differs by failure and version (a git host that is down reads one way, an
index another), so the runner does not sort failures by their text. It looks at the causes
themselves: the hosts the build needed (package indexes, git and URL dependencies, and any
address uv names) are probed, and the disk the environments live on is checked. A host that
cannot be reached, or answers with a server error, or a full disk, makes the failure
transient; otherwise the file (or what it asks for) is what is wrong.
"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

#: uv's default index, when neither the file nor the environment names another.
DEFAULT_INDEX = "https://pypi.org/simple"
#: Below this much free space a build is expected to fail for want of it.
MIN_FREE_BYTES = 200 * 1024 * 1024

_URL = re.compile(r"(?:git\+)?(?:https?|ssh)://[^\s\"'`<>)\]]+")
_INDEX_VARIABLES = (
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_INDEX",
    "UV_EXTRA_INDEX_URL",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
)


def hosts_needed(metadata: Mapping[str, Any], output: str, environ: Mapping[str, str]) -> list[str]:
    """``scheme://host[:port]`` of every address the build needed, in a stable order."""
    urls: list[str] = []
    uv_table = metadata.get("tool", {}).get("uv", {})
    indexes = [uv_table.get("index-url"), *uv_table.get("extra-index-url", [])]
    indexes += [index.get("url") for index in uv_table.get("index", []) if isinstance(index, dict)]
    for source in uv_table.get("sources", {}).values():
        for entry in source if isinstance(source, list) else [source]:
            if isinstance(entry, dict):
                indexes += [entry.get("git"), entry.get("url")]
    for variable in _INDEX_VARIABLES:
        indexes += environ.get(variable, "").split()
    urls += [url for url in indexes if isinstance(url, str) and url]
    replaced = (
        uv_table.get("index-url")
        or any(
            isinstance(index, dict) and index.get("default") for index in uv_table.get("index", [])
        )
        or any(environ.get(v) for v in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"))
    )
    if not replaced:
        urls.append(DEFAULT_INDEX)
    for requirement in metadata.get("dependencies", []):
        urls += _URL.findall(str(requirement))
    return _origins([*urls, *_URL.findall(output)])


def hosts_named(output: str) -> list[str]:
    """``scheme://host[:port]`` of every address in ``output`` (what uv says it tried)."""
    return _origins(_URL.findall(output))


def _origins(urls: list[str]) -> list[str]:
    return list(dict.fromkeys(filter(None, (_origin(url) for url in urls))))


def _origin(url: str) -> str | None:
    parts = urlsplit(url.removeprefix("git+"))
    if parts.scheme not in ("http", "https", "ssh") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def probe(origin: str, *, timeout: float = 5.0) -> str | None:
    """Why ``origin`` cannot serve a build right now, or ``None`` if it answers.

    Any HTTP answer below 500 (even 404 or 401) means the host is up; the question is only
    whether it was there, not whether it had what the file asked for.
    """
    parts = urlsplit(origin)
    if parts.scheme == "ssh":
        try:
            socket.create_connection((parts.hostname, parts.port or 22), timeout=timeout).close()
        except OSError as exc:
            return f"{parts.hostname}: {exc.strerror or exc}"
        return None
    try:
        reply = requests.head(origin + "/", timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return f"{parts.hostname} could not be reached ({_short(exc)})"
    if reply.status_code >= 500:
        return f"{parts.hostname} answered {reply.status_code} {reply.reason}"
    return None


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in (
        "Name or service not known",
        "Temporary failure in name resolution",
        "Connection refused",
        "timed out",
        "No route to host",
        "Network is unreachable",
    ):
        if marker in text:
            return marker
    return type(exc).__name__


def disk_trouble(path: Path, output: str) -> str | None:
    """Why the disk of ``path`` cannot take a build, or ``None``."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free < MIN_FREE_BYTES or "No space left on device" in output:
        return f"the disk of {path} has {free // (1024 * 1024)} MiB free"
    return None


def outside_cause(
    hosts: Iterable[str],
    disk: Path,
    output: str,
    probe: Callable[[str], str | None] = probe,
) -> str | None:
    """What outside the file made the build fail (a host, the disk), or ``None``."""
    trouble = disk_trouble(disk, output)
    if trouble:
        return trouble
    for host in hosts:
        why = probe(host)
        if why:
            return why
    return None
