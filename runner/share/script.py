"""PEP 723 metadata, location names and digests: pure functions over strings.

A ``.py`` file is a code location when it carries a ``# /// script`` block. Everything here
takes text and returns values, so the rules are testable without a file system.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from runner.share import limits

# The reference regular expression from PEP 723.
_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
_SCRIPT_OPENER = re.compile(r"(?m)^# /// script\s*$")
_KNOWN_KEYS = {"dependencies", "requires-python", "tool"}


class MetadataError(ValueError):
    """The file has a ``# /// script`` block that is not valid PEP 723 metadata."""


@dataclass(frozen=True)
class ScriptMetadata:
    """The parsed ``script`` block: what uv needs to build the file's environment."""

    dependencies: tuple[str, ...]
    requires_python: str | None
    tool: dict[str, Any]

    def mentions(self, project: str) -> bool:
        """Whether a dependency names ``project`` (normalized as pip does)."""
        want = _normalize(project)
        return any(_normalize(Requirement(d).name) == want for d in self.dependencies)

    def names(self) -> tuple[str, ...]:
        """The projects its dependencies name (normalized as pip does), in order."""
        return tuple(_normalize(Requirement(d).name) for d in self.dependencies)

    @property
    def run_limits(self) -> limits.RunLimits:
        """The memory and CPUs its runs may use, as its ``[tool.dagster-code-runner]`` says."""
        return limits.from_tool(self.tool)

    @property
    def server_limits(self) -> limits.RunLimits:
        """The memory and CPUs its code server may use in a container (``server-memory``)."""
        return limits.from_tool(self.tool, "server")

    def to_toml_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.requires_python is not None:
            data["requires-python"] = self.requires_python
        data["dependencies"] = list(self.dependencies)
        if self.tool:
            data["tool"] = self.tool
        return data


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escaped(relpath: str) -> str:
    """``relpath`` with control characters written as escapes: names from the share are
    data, and a newline in one must not start a line of its own in a log."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], relpath)


def name_problem(relpath: str) -> str | None:
    """Why a file name cannot be a location's file, or ``None``."""
    if _CONTROL.search(relpath):
        return (
            f"the file name {escaped(relpath)!r} contains a control character (a newline, a "
            "tab, ...): rename the file"
        )
    return None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def has_script_block(text: str) -> bool:
    """True when the text opens a ``# /// script`` block (valid or not)."""
    return _SCRIPT_OPENER.search(text) is not None


def parse_metadata(text: str) -> ScriptMetadata | None:
    """Return the file's PEP 723 metadata, ``None`` without a script block.

    Raises :class:`MetadataError` with a message meant for the file's author when the block
    is unclosed, duplicated, not TOML, or has keys or values uv would reject.
    """
    # As Python and uv read files: a UTF-8 byte order mark and Windows line endings are fine.
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    blocks = [m for m in _BLOCK.finditer(text) if m.group("type") == "script"]
    if len(blocks) > 1 or len(_SCRIPT_OPENER.findall(text)) > 1:
        raise MetadataError("the file has more than one '# /// script' block; keep exactly one")
    if not blocks:
        if has_script_block(text):
            raise MetadataError(
                "the '# /// script' block is not closed: end it with a line '# ///', "
                "and start every line inside it with '#'"
            )
        return None
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise MetadataError(f"the '# /// script' block is not valid TOML: {exc}") from None
    return _validate(data)


def _validate(data: dict[str, Any]) -> ScriptMetadata:
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise MetadataError(
            f"unknown key(s) in the script block: {', '.join(unknown)} "
            "(PEP 723 allows dependencies, requires-python and [tool])"
        )
    deps = data.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise MetadataError("'dependencies' must be a list of strings")
    for dep in deps:
        try:
            Requirement(dep)
        except InvalidRequirement as exc:
            raise MetadataError(f"invalid dependency {dep!r}: {exc}") from None
    requires_python = data.get("requires-python")
    if requires_python is not None:
        if not isinstance(requires_python, str):
            raise MetadataError("'requires-python' must be a string such as '>=3.11'")
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier as exc:
            raise MetadataError(f"invalid requires-python {requires_python!r}: {exc}") from None
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise MetadataError("'tool' must be a table")
    try:
        limits.from_tool(tool)
        limits.from_tool(tool, "server")
    except ValueError as exc:
        raise MetadataError(str(exc)) from None
    return ScriptMetadata(dependencies=tuple(deps), requires_python=requires_python, tool=tool)


def render_block(metadata: dict[str, Any]) -> str:
    """Render metadata as a PEP 723 block (the inverse of :func:`parse_metadata`)."""
    import tomli_w

    lines = tomli_w.dumps(metadata).splitlines()
    body = "".join(f"# {line}\n" if line else "#\n" for line in lines)
    return f"# /// script\n{body}# ///\n"


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_digest(metadata: dict[str, Any]) -> str:
    """A stable key for an environment: equal metadata, equal key, whatever the formatting."""
    return hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUFFIX = re.compile(r"-[0-9a-f]{6}$")


def location_name(relpath: str) -> str:
    """Name the location of the file at ``relpath`` (relative to ``code_location/``).

    ``weather.py`` -> ``weather``; ``team/sales.py`` -> ``team.sales``. Characters other
    than letters, digits, ``_`` and ``-`` become ``_``; when that changed anything, a short
    digest of the path is appended (``sales report.py`` -> ``sales_report-1a2b3c``) so two
    files never share a name, and a name does not depend on which other files exist.
    """
    path = PurePosixPath(relpath)
    parts = [*path.parent.parts, path.stem] if path.suffix == ".py" else list(path.parts)
    safe = [_UNSAFE.sub("_", part) for part in parts]
    name = ".".join(safe)
    if safe != parts or _SUFFIX.search(name):
        name += "-" + hashlib.sha256(relpath.encode()).hexdigest()[:6]
    return name


#: Longest location name the runner's own folders and files are named after as it is.
SHORT_NAME_BYTES = 40


def short_name(location: str) -> str:
    """What the runner names the folders and files it keeps for ``location`` after (its
    scratch folder, its outputs, its last good copy, its runs' settings): the name itself
    when it has at most 40 bytes, else its first 24, ``~`` and a digest of the whole. A name
    derived from a 250-byte file name then fits the file system's 255 bytes a name, and stays
    unique: a location's name never holds a ``~`` (see :func:`location_name`)."""
    if len(location.encode()) <= SHORT_NAME_BYTES:
        return location
    digest = hashlib.sha256(location.encode()).hexdigest()[:12]
    return f"{location.encode()[:24].decode(errors='ignore')}~{digest}"
