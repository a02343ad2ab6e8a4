"""Which Python interpreters uv may use for a file's environment, as ``uv run --script`` would.

uv finds interpreters on ``PATH`` and in its own install folder, and downloads a missing one
unless ``UV_PYTHON_DOWNLOADS=never``. Version managers get in its way: a pyenv *shim* for a
version that is installed but not active answers "command not found", so uv cannot inspect
it, and versions that are not active are not on ``PATH`` at all. The runner hands uv a
``PATH`` where shims are replaced by the real ``bin`` folders (the active version first, then
every other installed one), so any installed version is found; downloads go to the runner's
state folder unless ``UV_PYTHON_INSTALL_DIR`` says otherwise.

Where locations run as users of their own, an interpreter they cannot run is no use (pyenv's
live below ``/root``, which other users may not enter): ``for_others`` leaves out every
folder of ``PATH`` closed to them, and the missing-Python message names what was left out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

#: Where version managers keep their interpreters: (root variable, default root, versions
#: folder below it). Every ``<versions>/<version>/bin`` found is offered to uv.
_MANAGERS = (
    ("PYENV_ROOT", "~/.pyenv", "versions"),
    ("ASDF_DATA_DIR", "~/.asdf", "installs/python"),
    ("MISE_DATA_DIR", "~/.local/share/mise", "installs/python"),
)
#: CPython 3.8 and newer by version number ("3.13.0", not "2.7.18", "3.11-dev" or "pypy"):
#: an interpreter uv cannot inspect makes discovery fail instead of being skipped.
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_VERSION = re.compile(r"^3\.([89]|[1-9]\d)(\.\d+)?[a-z0-9]*$")


def search_path(environ: Mapping[str, str], *, for_others: bool = False) -> str:
    """``PATH`` for uv: shims replaced by real interpreter folders, other versions appended;
    ``for_others``: only folders other users may list and enter."""
    parts = [p for p in environ.get("PATH", "").split(os.pathsep) if p]
    shims = [p for p in parts if Path(p).name == "shims"]
    active, others = _managed_bins(environ)
    out: list[str] = []
    for part in parts:
        if part in shims:
            if part == shims[0]:
                out += active  # where the first shim stood: what the shim would have run
            continue
        out.append(part)
    out += others if shims else active + others
    if for_others:
        out = [part for part in out if closed_to_others(part) is None]
    return os.pathsep.join(dict.fromkeys(out))


def closed_to_others(folder: str) -> str | None:
    """Why other users cannot use the interpreters in ``folder`` (``None``: they can): they
    cannot enter it, or one of its ``python`` links leads where they cannot go (a virtual
    environment of a Python below ``/root``)."""
    from runner.isolation.identity import Identity
    from runner.isolation.tenancy import blocked

    anyone = Identity(2**31, 2**31)
    why = blocked(Path(folder), anyone, want="rx")
    if why is not None:
        return why
    try:
        names = [e.name for e in os.scandir(folder) if _PYTHON.match(e.name)]
    except OSError as exc:
        return f"{folder} cannot be listed ({exc.strerror})"
    for name in names:
        if why := blocked(Path(os.path.realpath(Path(folder) / name)), anyone, want="x"):
            return f"{folder}/{name}: {why}"
    return None


def closed_interpreters(environ: Mapping[str, str]) -> list[str]:
    """Interpreter folders of version managers that other users cannot enter, and why."""
    active, others = _managed_bins(environ)
    return [
        f"{folder} ({why})"
        for folder in [*active, *others]
        if (why := closed_to_others(folder)) is not None
    ]


def _managed_bins(environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(bin folders of the active pyenv versions, bin folders of every other version)."""
    pyenv_root = Path(environ.get("PYENV_ROOT") or Path("~/.pyenv").expanduser())
    wanted = environ.get("PYENV_VERSION", "").split(":")
    if not any(wanted):
        try:
            wanted = (pyenv_root / "version").read_text().split()
        except OSError:
            wanted = []
    active = [
        str(pyenv_root / "versions" / v / "bin")
        for v in wanted
        if v and (pyenv_root / "versions" / v / "bin").is_dir()
    ]
    others: list[str] = []
    for variable, default, below in _MANAGERS:
        root = Path(environ.get(variable) or Path(default).expanduser()) / below
        try:
            versions = sorted(p for p in root.iterdir() if _VERSION.match(p.name))
        except OSError:
            continue
        others += [str(p / "bin") for p in versions if (p / "bin").is_dir()]
    return active, [b for b in others if b not in active]


def downloads_allowed(environ: Mapping[str, str]) -> bool:
    """uv's own default is to download a missing interpreter; ``never`` turns it off."""
    return environ.get("UV_PYTHON_DOWNLOADS", "automatic").lower() not in ("never", "manual")


def installed_versions(uv_json: str) -> list[str]:
    """Distinct ``3.x.y`` versions from ``uv python list --only-installed --output-format
    json``, newest first."""
    try:
        rows = json.loads(uv_json)
    except ValueError:
        return []
    found = {row.get("version", "") for row in rows if row.get("implementation") == "cpython"}
    return sorted((v for v in found if v), key=_version_key, reverse=True)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


def missing_message(
    wanted: str, versions: list[str], *, downloads: bool, why: str, closed: list[str] = ()
) -> str:
    """One paragraph: what the file asks for, what is here, and what to do. ``closed``:
    interpreters left out as the locations' users cannot run them."""
    have = ", ".join(versions) if versions else "none"
    if closed:
        have += (
            "; left out, as the locations' users cannot run them: "
            + "; ".join(closed)
            + " (let other users pass through that folder, or install the Python "
            "elsewhere)"
        )
    if downloads:
        return (
            f"no Python satisfying requires-python = {wanted!r} is installed here "
            f"(installed: {have}), and uv could not download one: {why}"
        )
    return (
        f"no Python satisfying requires-python = {wanted!r} is installed here "
        f"(installed: {have}), and downloads are off (UV_PYTHON_DOWNLOADS=never): install "
        "one (e.g. `uv python install` on the runner's machine), or relax requires-python."
    )
