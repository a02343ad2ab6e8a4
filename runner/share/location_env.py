"""What a location's server and its runs see in their environment.

Two parts, and nothing else of the service's own environment:

* **Inherited**: what any process needs (``PATH``, ``HOME``, locale, time zone, proxies, CA
  bundles), the instance's own settings (``DAGSTER_*`` and every variable the instance's
  ``dagster.yaml`` reads with ``env:``: runs write to its database), and the names listed in
  ``RUNNER_PASS_ENV`` (``NAME`` or ``PREFIX_*``). A secret of the service is not handed to
  every team's code.
* **Settings files**, in the dotenv format Dagster and uv users know, read by the runner:
  ``.env`` in the file's folder and in every folder above it up to ``code_location/``
  (outer first, inner wins), then ``<file stem>.env`` beside the file; then the same paths
  under ``RUNNER_SETTINGS_DIR``, a folder outside the share for secrets, which win over the
  share's. Values are taken literally (no ``${VAR}`` expansion), never logged, never
  written to the status file or workspace.yaml: only files and names are shown.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from dotenv.parser import parse_stream

#: Variables every process needs; proxies and CA bundles in either case.
_BASICS = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
)
_PREFIXES = ("LC_", "DAGSTER_")
#: A settings file larger than this is not a settings file.
MAX_SETTINGS_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LocationSettings:
    """The settings files that apply to one file, merged; ``repr`` shows names, never values."""

    files: tuple[str, ...] = ()  # as shown to users: "code_location/team/.env"
    values: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    digest: str = ""  # of the files' paths and bytes: part of the location's identity
    error: str | None = None  # a file that cannot be read or parsed, and where

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.values))


def candidates(relpath: str) -> list[str]:
    """Settings paths (relative to a settings root) for the file at ``relpath``, in order."""
    folder = posixpath.dirname(relpath)
    parts = folder.split("/") if folder else []
    out = [posixpath.join(*parts[:depth], ".env") for depth in range(len(parts) + 1)]
    stem = posixpath.splitext(posixpath.basename(relpath))[0]
    return [*out, posixpath.join(folder, f"{stem}.env")]


def parse(text: str, shown_as: str) -> dict[str, str]:
    """Bindings of a dotenv file; ``ValueError`` naming the file and line (never a value)."""
    values: dict[str, str] = {}
    for binding in parse_stream(StringIO(text)):
        if binding.error:
            raise ValueError(
                f"{shown_as}, line {binding.original.line}: not a NAME=value line "
                "(values with spaces or # need quotes)"
            )
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


@dataclass(frozen=True)
class _File:
    """One settings file as last read: its bytes and bindings, or why it cannot be used."""

    data: bytes = b""
    values: Mapping[str, str] = field(default_factory=dict, repr=False)
    error: str | None = None


class SettingsFiles:
    """Finds and reads settings files, re-reading one only when its size or mtime changes."""

    def __init__(self, roots: Iterable[tuple[Path, str]]) -> None:
        self.roots = list(roots)  # (folder, how it is shown), the last one wins
        self._cache: dict[Path, tuple[tuple[int, int], _File]] = {}

    def lookup(self, relpath: str) -> LocationSettings:
        """The settings for the file at ``relpath``: one stat per candidate path."""
        merged: dict[str, str] = {}
        files: list[str] = []
        digest = hashlib.sha256()
        for root, shown in self.roots:
            for candidate in candidates(relpath):
                shown_as = f"{shown}/{candidate}"
                found = self._read(root / candidate, shown_as)
                if found is None:
                    continue
                if found.error is not None:
                    return LocationSettings(tuple(files), {}, "", found.error)
                merged.update(found.values)
                files.append(shown_as)
                digest.update(f"{shown_as}\0".encode() + found.data + b"\0")
        return LocationSettings(tuple(files), merged, digest.hexdigest() if files else "")

    def _read(self, path: Path, shown_as: str) -> _File | None:
        """The file as last read (again if it changed), or ``None`` if there is none."""
        try:
            st = path.stat()
        except OSError:
            self._cache.pop(path, None)
            return None
        if not path.is_file():
            return None
        signature = (st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        found = _parse_file(path, shown_as, st.st_size)
        self._cache[path] = (signature, found)
        return found


def _parse_file(path: Path, shown_as: str, size: int) -> _File:
    if size > MAX_SETTINGS_BYTES:
        return _File(error=f"{shown_as}: larger than {MAX_SETTINGS_BYTES // 1024} KiB")
    try:
        data = path.read_bytes()
        return _File(data, parse(data.decode("utf-8"), shown_as))
    except OSError as exc:
        return _File(error=f"{shown_as}: cannot be read ({exc.strerror or exc})")
    except UnicodeDecodeError:
        return _File(error=f"{shown_as}: not UTF-8 text")
    except ValueError as exc:
        return _File(error=str(exc))


def instance_variables(dagster_yaml: Path) -> set[str]:
    """Names the instance's ``dagster.yaml`` reads with ``{env: NAME}``."""
    try:
        data = yaml.safe_load(dagster_yaml.read_text())
    except (OSError, yaml.YAMLError):
        return set()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("env"), str) and len(node) == 1:
                found.add(node["env"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return found


def inherited(environ: Mapping[str, str], *, also: Iterable[str] = ()) -> dict[str, str]:
    """What a location takes from the service's environment (see the module docstring).

    ``also``: names or ``PREFIX*`` patterns to pass as well (the instance's variables and
    ``RUNNER_PASS_ENV``).
    """
    patterns = [p.strip() for p in also if p.strip()]
    out = {}
    for name, value in environ.items():
        if (
            name.upper() in _BASICS
            or name.startswith(_PREFIXES)
            or any(fnmatch.fnmatchcase(name, p) for p in patterns)
        ):
            out[name] = value
    return out


def pass_env_patterns(environ: Mapping[str, str]) -> list[str]:
    """``RUNNER_PASS_ENV``: names or ``PREFIX_*`` patterns, separated by commas or spaces."""
    return environ.get("RUNNER_PASS_ENV", "").replace(",", " ").split()
