"""Whether an environment's template may hold the right to fork into other users.

A template imports Dagster and what Dagster requires from the environment (``boot/guard.py``),
and is shared by locations that run as users of their own. That is safe only if that code is
the service's, not a team's: published on the indexes the service itself builds from (PyPI,
or the index its operator set: ``UV_DEFAULT_INDEX``, ``UV_INDEX_URL``, ``UV_INDEX``,
``UV_EXTRA_INDEX_URL``), not taken from an index, a URL, a git repository or a folder that a
file names. The environment's lock says where each package came from.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

PYPI = "https://pypi.org/simple"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _url(text: str) -> str:
    """An index URL without credentials or a trailing slash (how the lock records it)."""
    parts = urlsplit(text.strip())
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def service_indexes(environ: Mapping[str, str]) -> frozenset[str]:
    """The indexes the service's own uv settings name (PyPI unless another default is set)."""
    found: set[str] = set()
    default = environ.get("UV_DEFAULT_INDEX") or environ.get("UV_INDEX_URL")
    found.add(_url(default) if default else PYPI)
    for variable in ("UV_INDEX", "UV_EXTRA_INDEX_URL"):
        for item in environ.get(variable, "").split():
            found.add(_url(item.split("=", 1)[1] if "=" in item.split("://")[0] else item))
    return frozenset(found)


def foreign_source(lock_text: str, trusted: frozenset[str]) -> str | None:
    """Why Dagster, or a package it requires, does not come from a ``trusted`` index in this
    uv lock (``None``: all of them do). A lock that cannot be read is not trusted."""
    try:
        packages = tomllib.loads(lock_text).get("package", [])
    except tomllib.TOMLDecodeError:
        return "its lock cannot be read"
    by_name = {_normal(p["name"]): p for p in packages if isinstance(p, dict) and "name" in p}
    seen, todo = set(), ["dagster"]
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        package = by_name[name]
        source = package.get("source", {})
        registry = source.get("registry") if isinstance(source, dict) else None
        if registry is None or _url(registry) not in trusted:
            kind = next(iter(source), "an unknown source") if isinstance(source, dict) else "?"
            where = _url(registry) if registry else kind
            return (
                f"{package['name']} (which Dagster needs) comes from {where}, not an index "
                "of the service"
            )
        todo += [_normal(d["name"]) for d in package.get("dependencies", []) if "name" in d]
    return None
