"""Immutable uv environments, one per distinct PEP 723 metadata.

An environment is keyed by a digest of the metadata it was built from (and of the file's
lockfile, if it has one), so files with the same dependencies share one, and an edit that
changes only code reuses it. It is built aside (``uv venv --relocatable`` + ``uv sync --script
--active --locked`` into a temporary directory, bytecode compiled at build time) and renamed
into place, so a server never sees a half-built environment and nothing ever syncs into an
environment a server uses.

Every build is a locked sync, so what was resolved once is what every later build installs:

* ``own``: the file's own ``FILE.py.lock`` (``uv lock --script FILE.py``), exactly; what the
  runner must add (dagster, the instance's storage package) is installed beside it, held to
  the lock's versions;
* ``kept``: no lockfile, but the runner resolved this metadata before and kept that
  resolution in its state (``.scripts/<key>.py.lock``): rebuilt from it, on any machine that
  shares the state, until the file's metadata changes;
* ``fresh``: resolved now (``uv lock --script`` on the runner's copy of the metadata), then
  kept.

Where locations run as users of their own, uv runs as the builds' own unprivileged user
(``builder``): an sdist's build script is a team's code, and never runs as the runner. It
works in a folder of its own per build, owns the uv cache, and installs by copying (never a
hard link shared with the cache); what it built becomes the runner's, read-only to it and to
every location, before it is put in place, and so do the locks the runner keeps.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import uv

from runner.base import process
from runner.envs import causes, pythons
from runner.isolation import tenancy
from runner.isolation.identity import Identity
from runner.share import limits, script

log = logging.getLogger(__name__)

DAGSTER_VERSION = version("dagster")


class BuildError(Exception):
    """uv could not build the environment; the message is uv's own explanation.

    ``transient`` errors (caused outside the file: a host down, the disk full) are worth
    retrying; the others fail until the file changes. ``None``: not known yet (see
    :mod:`causes`).
    """

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.transient = transient


Pins = Literal["own", "kept", "fresh"]
#: Written into each built environment: how it was resolved, and what it has.
RESOLUTION_FILE = "runner-resolution.json"


@dataclass(frozen=True)
class EnvSpec:
    """What to build: the metadata uv sees (dagster added if missing) and its key."""

    key: str
    metadata: dict[str, Any]
    added: tuple[str, ...]  # requirements the runner added to the file's own
    #: The file's own lockfile (its text): the metadata is then the file's own, and
    #: ``added`` is installed beside the locked packages.
    lock: str | None = None
    #: The projects the file asks for by name (its direct dependencies), for ``status``.
    direct: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.key[:12]


#: How each kind of resolution reads, after the versions it gave.
HOW_PINNED = {
    "own": "as the file's own lockfile pins them",
    "kept": "as the runner locked them when it first built this metadata",
    "fresh": "resolved for this build, and locked for later ones",
}


@dataclass(frozen=True)
class Resolution:
    """How a built environment was resolved, and the versions of what the file asks for."""

    pins: Pins
    versions: dict[str, str]  # dagster and the file's direct dependencies
    #: The digest of the lock its packages were installed from (None: built before this
    #: was recorded).
    lock_sha256: str | None = None

    def describe(self) -> str:
        how = HOW_PINNED[self.pins]
        listed = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        return f"{listed} ({how})" if listed else how


def spec_for(
    metadata: script.ScriptMetadata, extras: tuple[str, ...] = (), *, lock: str | None = None
) -> EnvSpec:
    """The environment a file needs: its own metadata, plus what serving it requires.

    A code server is ``dagster api grpc`` running in the file's environment, so dagster must
    be there (the runner's own version, known to speak to this webserver, if the file does
    not say); ``extras`` are the packages the instance's storage needs (e.g.
    ``dagster-postgres``), unpinned so uv picks the one matching the file's dagster. The
    runner's own ``[tool]`` table (run limits) is not uv's: a limit edit reuses the env.
    """
    data = metadata.to_toml_dict()
    tool = {k: v for k, v in data.get("tool", {}).items() if k != limits.TOOL}
    data.pop("tool", None)
    if tool:
        data["tool"] = tool
    added = [] if metadata.mentions("dagster") else [f"dagster=={DAGSTER_VERSION}"]
    added += [extra for extra in extras if not metadata.mentions(extra)]
    direct = tuple(dict.fromkeys(["dagster", *metadata.names()]))
    if lock is not None:  # uv checks the lock against the file's own metadata: keep it as is
        identity = {**data, "runner-added": added, "lock": script.digest_bytes(lock.encode())}
        return EnvSpec(
            key=script.metadata_digest(identity),
            metadata=data,
            added=tuple(added),
            lock=lock,
            direct=direct,
        )
    data["dependencies"] = [*data["dependencies"], *added]
    return EnvSpec(
        key=script.metadata_digest(data), metadata=data, added=tuple(added), direct=direct
    )


@dataclass(frozen=True)
class Env:
    key: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


class EnvStore:
    """A directory of built environments, owned by the runner, outside the share."""

    def __init__(
        self,
        root: Path,
        *,
        uv_bin: str | None = None,
        for_others: bool = False,
        builder: Identity | None = None,
        network_timeout: float = 30.0,
    ) -> None:
        self.root = root
        #: Seconds a build waits on a silent host (``RUNNER_NETWORK_TIMEOUT``).
        self.network_timeout = network_timeout
        #: Its environments are run by other users (locations'): only their interpreters.
        self.for_others = for_others or builder is not None
        #: The user builds run as (None: the runner's own).
        self.builder = builder
        self.cache: Path | None = None
        if builder is not None:
            # uv's own variable, as uv reads it (the environment passes through to uv).
            self.cache = Path(os.environ.get("UV_CACHE_DIR") or root.parent / "uv-cache")
            tenancy.claimed_folder(self.cache, uid=builder.uid, gid=builder.gid)
        self.uv_bin = uv_bin or uv.find_uv_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._resolutions: dict[str, Resolution] = {}  # built environments never change

    def path(self, key: str) -> Path:
        return self.root / key[:32]

    def get(self, spec: EnvSpec) -> Env | None:
        """The built environment for ``spec``, or ``None`` if it is not built yet."""
        path = self.path(spec.key)
        if not (path / "pyvenv.cfg").exists():
            return None
        env = Env(spec.key, path)
        if self.for_others and (why := pythons.closed_to_others(str(env.python.parent))):
            # Built before locations ran as users of their own, with a Python they cannot run.
            log.warning(
                "env %s: rebuilding it, its interpreter is closed to the locations' users: %s",
                spec.short,
                why,
            )
            shutil.rmtree(path, ignore_errors=True)
            return None
        return env

    def script_path(self, key: str) -> Path:
        """A metadata-only copy of the script: what ``uv sync --script`` reads."""
        return self.root / ".scripts" / f"{key[:32]}.py"

    def lock_path(self, key: str) -> Path:
        """The lock beside that copy: the file's own, or the runner's kept resolution."""
        return self.root / ".scripts" / f"{key[:32]}.py.lock"

    def resolution(self, key: str) -> Resolution | None:
        """How the built environment ``key`` was resolved, or ``None`` (not built, or built
        before this was recorded)."""
        if key in self._resolutions:
            return self._resolutions[key]
        try:
            data = json.loads((self.path(key) / RESOLUTION_FILE).read_text())
            lock_sha256 = data.get("lock_sha256")
            if lock_sha256 is None and self.lock_path(key).exists():  # built before it was kept
                lock_sha256 = script.digest_bytes(self.lock_path(key).read_bytes())
            found = Resolution(
                pins=data["pins"], versions=dict(data["versions"]), lock_sha256=lock_sha256
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._resolutions[key] = found
        return found

    def build(
        self,
        spec: EnvSpec,
        progress: Callable[[str], None] = lambda text: None,
        *,
        refresh: bool = False,
    ) -> Env:
        """Build the environment for ``spec`` unless it exists; raise :class:`BuildError`.

        ``progress`` hears what the build is doing, from uv's own summary lines, as it goes.
        ``refresh``: ask the indexes again instead of trusting uv's cache (a retry asked for
        by a user: the package may have been published since).
        """
        existing = self.get(spec)
        if existing is not None:
            return existing
        text = script.render_block(spec.metadata)
        kept = self.script_path(spec.key)
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(text)
        # A folder of the build's own: the metadata, its lock, the environment being built.
        work = self.root / f".build-{spec.key[:12]}-{uuid.uuid4().hex[:8]}"
        owner = self.builder or Identity(os.getuid(), os.getgid())
        tenancy.owned_folder(work, uid=owner.uid, gid=owner.gid, mode=0o700)
        (work / "script").mkdir()
        os.chown(work / "script", owner.uid, owner.gid)
        meta_script = work / "script" / kept.name
        meta_script.write_text(text)
        staging = work / "env"
        env = _uv_env(
            self.root.parent / "python",
            for_others=self.for_others,
            network_timeout=self.network_timeout,
        )
        if self.builder is not None:
            assert self.cache is not None
            env.update(HOME=str(work), UV_CACHE_DIR=str(self.cache), UV_LINK_MODE="copy")
        started = time.monotonic()
        try:
            final = self._build(spec, meta_script, staging, env, progress, refresh)
        except BuildError as exc:
            raise self._classified(exc, spec, env) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.debug("built env %s in %.1fs", spec.short, time.monotonic() - started)
        return Env(spec.key, final)

    def _build(
        self,
        spec: EnvSpec,
        meta_script: Path,
        staging: Path,
        env: dict[str, str],
        progress: Callable[[str], None],
        refresh: bool,
    ) -> Path:
        progress("finding a Python interpreter")
        python = self._find_python(meta_script, spec, env)
        env = {**env, "VIRTUAL_ENV": str(staging)}
        self._uv(
            ["venv", "--relocatable", "--quiet", "--python", python, str(staging)],
            env,
            cwd=meta_script.parent,
        )
        kept = self.lock_path(spec.key)
        lock = meta_script.with_name(kept.name)  # the build's own copy, which uv may rewrite
        fresh = ["--refresh"] if refresh else []
        pins: Pins = "own" if spec.lock is not None else "kept" if kept.exists() else "fresh"
        if spec.lock is not None:
            self._give_build(lock, spec.lock)
        elif pins == "kept":
            self._give_build(lock, kept.read_text())
        if pins == "fresh":
            progress("resolving dependencies")
            self._uv(
                ["lock", "--script", str(meta_script), "--no-progress", *fresh],
                env,
                cwd=meta_script.parent,
            )
        sync = [
            "sync",
            "--script",
            str(meta_script),
            "--active",
            "--locked",
            "--no-progress",
            *fresh,
        ]

        def report(line: str) -> None:
            _report(line, progress)

        progress("installing the locked versions")
        try:
            self._uv(sync, env, cwd=meta_script.parent, on_line=report)
        except BuildError as exc:
            if "needs to be updated" not in str(exc) or pins == "fresh":
                raise
            if pins == "own":
                raise StaleLock() from None
            # A kept resolution uv no longer accepts (its lock format changed): resolve anew.
            log.warning("env %s: the kept resolution is out of date; resolving again", spec.short)
            pins = "fresh"
            self._uv(
                ["lock", "--script", str(meta_script), "--no-progress", *fresh],
                env,
                cwd=meta_script.parent,
            )
            self._uv(sync, env, cwd=meta_script.parent, on_line=report)
        locked = locked_versions(lock.read_text())
        if spec.lock is not None and spec.added:
            # What serving needs and the lock lacks, held to the lock's versions; Dagster's
            # own libraries at the release that goes with the locked dagster.
            added = [lockstep(r, locked.get("dagster")) for r in spec.added]
            progress(f"adding {', '.join(added)}")
            constraints = staging / "runner-constraints.txt"
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in locked.items()))
            try:
                self._uv(
                    [
                        "pip",
                        "install",
                        "--python",
                        str(staging / "bin" / "python"),
                        "--constraints",
                        str(constraints),
                        "--no-progress",
                        *fresh,
                        *added,
                    ],
                    env,
                    cwd=meta_script.parent,
                )
            except BuildError as exc:
                if "there is no version of" not in str(exc):
                    raise
                raise BuildError(
                    no_companion(added, locked.get("dagster")), transient=False
                ) from None
            constraints.unlink()
        versions = {n: locked[n] for n in map(_normalize, spec.direct) if n in locked}
        if self.builder is not None:  # what it built is the runner's now: no build changes it
            tenancy.claimed_by_runner(staging)
        locked_text = lock.read_text()
        (staging / RESOLUTION_FILE).write_text(
            json.dumps(
                {
                    "pins": pins,
                    "versions": versions,
                    "lock_sha256": script.digest_bytes(locked_text.encode()),
                }
            )
        )
        tmp = kept.with_name(f".{kept.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(locked_text)
        tmp.replace(kept)
        final = self.path(spec.key)
        try:
            staging.rename(final)
        except OSError:
            if not (final / "pyvenv.cfg").exists():  # not a concurrent twin: a real failure
                raise
        return final

    def _give_build(self, path: Path, text: str) -> None:
        """Write ``path`` in a build's folder, for its user to read and rewrite."""
        path.write_text(text)
        if self.builder is not None:
            os.chown(path, self.builder.uid, self.builder.gid, follow_symlinks=False)

    def _classified(self, exc: BuildError, spec: EnvSpec, env: dict[str, str]) -> BuildError:
        """A failure caused outside the file (a host down, the disk full) is transient,
        whatever uv's wording."""
        if exc.transient is not None:
            return exc
        text = str(exc)
        hosts = causes.hosts_needed(spec.metadata, text, env)
        cause = causes.outside_cause(hosts, self.root, text)
        return BuildError(f"{cause}:\n{text}", transient=True) if cause else exc

    def _find_python(self, meta_script: Path, spec: EnvSpec, env: dict[str, str]) -> str:
        """The interpreter ``uv run --script`` would use (downloaded, if uv may), or one
        clear paragraph saying which versions there are."""
        find = ["python", "find", "--script", str(meta_script)]
        cwd = meta_script.parent
        try:
            return self._uv(find, env, cwd=cwd).strip()
        except BuildError:
            pass
        wanted = str(spec.metadata.get("requires-python", "any"))
        downloads = pythons.downloads_allowed(env)
        why = ""
        if downloads:
            try:
                # As the runner (a download runs no build script), outside the builds' cache.
                self._uv(
                    ["python", "install", "--no-progress", "--no-cache", wanted],
                    env,
                    cwd=cwd,
                    as_builder=False,
                )
                return self._uv(find, env, cwd=cwd).strip()
            except BuildError as exc:
                why = _first_error(str(exc))
                cause = causes.outside_cause(causes.hosts_named(str(exc)), self.root, str(exc))
                if cause:
                    raise BuildError(
                        f"downloading a Python for requires-python = {wanted!r} failed: {cause}",
                        transient=True,
                    ) from None
        try:
            listed = self._uv(
                ["python", "list", "--only-installed", "--output-format", "json"], env, cwd=cwd
            )
        except BuildError:
            listed = "[]"
        raise BuildError(
            pythons.missing_message(
                wanted,
                pythons.installed_versions(listed),
                downloads=downloads,
                why=why,
                closed=pythons.closed_interpreters(env) if self.for_others else [],
            ),
            transient=False,
        ) from None

    def _uv(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        cwd: Path,
        on_line: Callable[[str], None] | None = None,
        as_builder: bool = True,
    ) -> str:
        """Run uv (as the builds' user, unless not ``as_builder``); its output, or
        :class:`BuildError`. ``on_line`` streams its lines (merged stdout and stderr) as they
        come."""
        streamed = on_line is not None
        user = self.builder if as_builder else None
        proc = process.spawn(
            [self.uv_bin, *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if streamed else subprocess.PIPE,
            umask=0o022 if self.for_others else -1,  # others run what it installs
            user=(user.uid, user.gid) if user else None,
        )
        with self._lock:
            self._running.add(proc)
        try:
            if streamed:
                assert proc.stdout is not None
                lines = []
                for raw in proc.stdout:
                    lines.append(raw)
                    on_line(raw.decode(errors="replace").rstrip())
                proc.wait()
                out, err = b"".join(lines), None
            else:
                out, err = proc.communicate()
        finally:
            with self._lock:
                self._running.discard(proc)
        if proc.returncode != 0:
            text = (err or out).decode(errors="replace")
            if proc.returncode < 0:
                raise BuildError(f"uv {process.describe_exit(proc.returncode)}", transient=True)
            raise BuildError(explain_uv_failure(text))
        return out.decode(errors="replace")

    def cancel_builds(self) -> None:
        """Stop builds in progress (on shutdown); their staging directories are removed."""
        with self._lock:
            running = list(self._running)
        for proc in running:
            process.stop(proc, name="uv build", grace=2)

    def remove(self, key: str) -> None:
        """Remove an environment no file uses, with its resolution: a file that asks for the
        same metadata later is resolved afresh."""
        shutil.rmtree(self.path(key), ignore_errors=True)
        self.script_path(key).unlink(missing_ok=True)
        self.lock_path(key).unlink(missing_ok=True)


class StaleLock(BuildError):
    """The file's lockfile no longer matches its metadata (uv's ``--locked`` refused it)."""

    def __init__(self) -> None:
        super().__init__(self.for_file("FILE.py"), transient=False)

    @staticmethod
    def for_file(name: str) -> str:
        return (
            f"its lockfile ({name}.lock) does not match its dependencies any more, so uv "
            f"refused to install from it: run `uv lock --script {name}` where the file is "
            "(or remove the lock); the last good version keeps serving"
        )


def lockstep(requirement: str, dagster_version: str | None) -> str:
    """``dagster-postgres`` beside dagster 1.13.27 is ``dagster-postgres==0.29.27``: Dagster
    releases its libraries with dagster itself, as 0.(minor + 16).patch. Anything else (or a
    requirement that already says a version) is left as it is."""
    match = re.fullmatch(r"1\.(\d+)\.(\d+)", dagster_version or "")
    if not match or not re.fullmatch(r"dagster-[a-z0-9-]+", requirement):
        return requirement
    return f"{requirement}==0.{int(match.group(1)) + 16}.{match.group(2)}"


def no_companion(added: list[str], dagster_version: str | None) -> str:
    return (
        f"the file's lock pins dagster {dagster_version}, and the service needs "
        f"{', '.join(added)} beside it, which has no such release: lock a dagster that has "
        f"one (e.g. `uv lock --script FILE.py --upgrade-package dagster=={DAGSTER_VERSION}`, "
        "the runner's own), or add the package to the file's dependencies and lock again"
    )


def locked_versions(lock_text: str) -> dict[str, str]:
    """``{project: version}`` of every package a uv lockfile pins (names normalized)."""
    try:
        packages = tomllib.loads(lock_text).get("package", [])
    except tomllib.TOMLDecodeError:
        return {}
    return {
        _normalize(p["name"]): str(p["version"])
        for p in packages
        if isinstance(p, dict) and "name" in p and "version" in p
    }


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _uv_env(
    python_dir: Path, *, for_others: bool = False, network_timeout: float = 30.0
) -> dict[str, str]:
    """uv's environment: the service's own, passed through (uv's and git's settings), with
    interpreters of version managers findable, downloads (uv's default, unless
    ``UV_PYTHON_DOWNLOADS=never``) kept in the runner's state."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = pythons.search_path(env, for_others=for_others)
    env.setdefault("UV_PYTHON_INSTALL_DIR", str(python_dir))
    env["UV_COMPILE_BYTECODE"] = "1"
    env["NO_COLOR"] = "1"
    # A host that accepts connections and never answers must not hold a build for minutes:
    # uv's HTTP requests and git's transfers give up after this long without progress.
    wait = f"{network_timeout:g}"
    env.setdefault("UV_HTTP_TIMEOUT", wait)
    env.setdefault("GIT_HTTP_LOW_SPEED_LIMIT", "1")
    env.setdefault("GIT_HTTP_LOW_SPEED_TIME", wait)
    return env


def _first_error(text: str) -> str:
    """uv's first ``error:`` line (its own summary), else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
    return (errors or lines or ["uv failed without saying why"])[0]


#: uv's summary line after each phase, and what the build does next.
_PHASES = {
    "Resolved": "resolved {}; downloading",
    "Prepared": "downloaded {}; installing",
    "Installed": "installed {}; compiling bytecode",
    "Bytecode compiled": "compiled {}",
}


def _report(line: str, progress: Callable[[str], None]) -> None:
    for word, text in _PHASES.items():
        if line.startswith(word + " "):
            counted = line[len(word) + 1 :].split(" in ")[0]  # "57 packages"
            progress(text.format(counted))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def explain_uv_failure(output: str) -> str:
    """Keep what matters of uv's explanation: its error lines and their hints."""
    lines = [_ANSI.sub("", line).rstrip() for line in output.strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Resolved", "Using"))]
    text = "\n".join(lines)
    return text[-4000:] if len(text) > 4000 else text or "uv failed without saying why"
