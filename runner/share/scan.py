"""Walk the code folder and say which files are locations, once they are stable.

A file counts only once its size and mtime have stayed the same for ``stable_for`` seconds
(SMB clients write in chunks and update mtime on close), or for :data:`SETTLE` seconds if a
local writer has said it is done with it (closed it after writing, or renamed it into place).
Until then, the last stable version of that file (if any) stays what is desired, so a save in
progress never removes a location. The scan never writes into the folder and never keeps a
file open.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import posixpath
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.share import ignore, script
from runner.share.location_env import LocationSettings, SettingsFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocationSpec:
    """A file that should be served: what it is, where it is, and which bytes."""

    name: str
    relpath: str
    path: Path
    digest: str
    metadata: script.ScriptMetadata
    #: Its settings files (their digest is part of ``digest``).
    settings: LocationSettings = field(default_factory=LocationSettings)
    #: Its lockfile beside it (``FILE.py.lock``, as ``uv lock --script`` writes it), if any:
    #: the text is part of ``digest``, and its environment is built from it.
    lock: str | None = field(default=None, repr=False)
    #: The file's bytes as read: a copy serves this version again if it must restart after
    #: the file has changed (see ``Prepare.last_good``).
    source: bytes = field(default=b"", repr=False, compare=False)

    @functools.cached_property
    def sha256(self) -> str:
        """The digest of the file's own bytes, as ``sha256sum FILE`` prints it."""
        return script.digest_bytes(self.source)


@dataclass(frozen=True)
class SpecError:
    """A file that looks like a location but cannot be one, and why."""

    name: str
    relpath: str
    path: Path
    digest: str
    message: str


Desired = LocationSpec | SpecError


#: (size, mtime_ns, mode): a chmod that makes a file readable counts as a change.
Signature = tuple[int, int, int]
#: Files larger than this are not read whole: no location's file is, and reading a huge one
#: (a data dump, a sparse file) would cost the runner its memory.
MAX_FILE_BYTES = 8 * 1024 * 1024
#: How much of a larger file is read to tell a location's file from a helper module.
HEAD_BYTES = 64 * 1024
#: Seconds a file a local writer has finished must stay unchanged to count. Such a file is
#: complete as far as its writer knows; the short wait covers writers that close and reopen
#: to append (``>`` then ``>>``). Changes from other machines give no such sign, and wait
#: out the whole window.
SETTLE = 0.2


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_mode)


@dataclass
class _Seen:
    signature: Signature
    since: float  # monotonic time the signature was first seen
    admitted: Signature | None = None  # signature of the last stable read
    result: Desired | None = None  # None: stable, but not a location (a helper module)
    finished: bool = False  # a local writer finished this signature: SETTLE applies
    early: Desired | None = None  # what a local writer finished, before it counts
    digest: str | None = None  # content digest of the last stable read


@dataclass
class ScanResult:
    desired: dict[str, Desired]
    # Files a local writer has finished that are not yet stable: they may be prepared
    # (env, server) ahead of time, but not published until they are in ``desired``.
    early: dict[str, Desired] = field(default_factory=dict)
    # Relpaths of possible locations waiting to become stable (helper modules left out).
    pending: list[str] = field(default_factory=list)
    next_due: float | None = None  # monotonic time the next pending file may become stable


def is_candidate(name: str) -> bool:
    """Hidden files, editor backups and swap files, and non-``.py`` files are noise."""
    return name.endswith(".py") and not name.startswith((".", "#", "~"))


class Scanner:
    """Keeps what it saw between scans, so unchanged files are not read again."""

    def __init__(
        self, root: Path, *, stable_for: float = 1.0, settings: SettingsFiles | None = None
    ) -> None:
        self.root = root
        self.stable_for = stable_for
        self.settings = settings
        self._seen: dict[str, _Seen] = {}
        self._written: dict[str, Signature] = {}  # relpath -> signature when complete
        self._changed = True  # something was admitted or removed since the last scan
        self._desired: dict[str, Desired] = {}  # the last scan's desired set
        self._locks: dict[str, tuple[Signature, str | None, str | None]] = {}
        self.ignores = ignore.IgnoreFiles(root)
        #: Files and folders an ignore file leaves out, and why (for ``status``).
        self.ignored: dict[str, str] = {}

    def mark_written(self, path: str) -> None:
        """A local writer closed ``path`` (or renamed it into place): it is complete as is."""
        try:
            relpath = Path(path).relative_to(self.root).as_posix()
            st = os.stat(path)
        except (ValueError, OSError):
            return
        self._written[relpath] = signature_of(st)

    def scan(self, now: float) -> ScanResult:
        """Look at every file; the cost of a scan where nothing changed is one stat each."""
        result = ScanResult(desired={})
        present: set[str] = set()
        self.ignored = {}
        self.ignores.begin_scan()
        for relpath, st in self._walk():
            present.add(relpath)
            signature = signature_of(st)
            seen = self._seen.get(relpath)
            if seen is None:
                seen = self._seen[relpath] = _Seen(signature=signature, since=now)
            elif seen.signature != signature:
                seen.signature, seen.since, seen.early, seen.finished = signature, now, None, False
            hinted = self._written.get(relpath) == signature
            seen.finished = seen.finished or hinted
            if seen.admitted != signature:
                due = seen.since + (
                    min(SETTLE, self.stable_for) if seen.finished else self.stable_for
                )
                if now >= due:
                    self._admit(relpath, seen)
                else:
                    if seen.admitted is None or seen.result is not None:  # not a known helper
                        result.pending.append(relpath)
                    result.next_due = due if result.next_due is None else min(result.next_due, due)
                    if hinted:
                        read = self._read(relpath, signature)
                        seen.early = read[0] if read is not None else None
                    if seen.early is not None:
                        result.early[seen.early.name] = seen.early
        for gone in set(self._seen) - present:
            del self._seen[gone]
            self._changed = True
        self._written.clear()  # a hint is good for the scan that follows it only
        if self._changed:
            stable = {s.result.name: s.result for s in self._seen.values() if s.result is not None}
            self._desired = self._with_helpers(stable)
            self._changed = False
        result.desired = self._with_locks(self._with_settings(self._desired))
        if result.early:
            result.early = self._with_locks(self._with_settings(self._with_helpers(result.early)))
        return result

    def _with_locks(self, specs: dict[str, Desired]) -> dict[str, Desired]:
        """Attach each location's lockfile and fold it into its digest, so that adding,
        editing or removing ``FILE.py.lock`` builds the environment anew (one stat each)."""
        out: dict[str, Desired] = {}
        for name, spec in specs.items():
            if isinstance(spec, LocationSpec):
                text, error = self._lock_of(spec.relpath)
                if error is not None:
                    failed = script.digest_bytes(f"{spec.digest}\n{error}".encode())
                    spec = SpecError(name, spec.relpath, spec.path, failed, error)
                elif text is not None:
                    locked = script.digest_bytes(f"{spec.digest}\n{text}".encode())
                    spec = dataclasses.replace(spec, digest=locked, lock=text)
            out[name] = spec
        return out

    def _lock_of(self, relpath: str) -> tuple[str | None, str | None]:
        """The text of ``relpath``'s lockfile (``None``: it has none), or why it is unusable;
        read again only when its size, mtime or mode change."""
        lock_rel = relpath + ".lock"
        path = self.root / lock_rel
        try:
            signature = signature_of(path.stat())
        except FileNotFoundError:
            self._locks.pop(lock_rel, None)
            return None, None
        except OSError as exc:
            return None, f"{lock_rel}: the runner cannot read it ({exc.strerror or exc})"
        cached = self._locks.get(lock_rel)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        text, error = None, None
        try:
            if signature[0] > MAX_FILE_BYTES:
                error = f"{lock_rel} is larger than {MAX_FILE_BYTES // 1024**2} MiB"
            else:
                text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError) as exc:
            error = f"{lock_rel}: the runner cannot read it as a lockfile ({exc})"
        self._locks[lock_rel] = (signature, text, error)
        return text, error

    def _with_settings(self, specs: dict[str, Desired]) -> dict[str, Desired]:
        """Attach each location's settings files and fold them into its digest, so that a
        settings edit reloads the locations it applies to (a few stats per location)."""
        if self.settings is None:
            return dict(specs)
        out: dict[str, Desired] = {}
        for name, spec in specs.items():
            if isinstance(spec, LocationSpec):
                found = self.settings.lookup(spec.relpath)
                if found.error is not None:
                    failed = script.digest_bytes(f"{spec.digest}\n{found.error}".encode())
                    spec = SpecError(name, spec.relpath, spec.path, failed, found.error)
                elif found.files:
                    combined = script.digest_bytes(f"{spec.digest}\n{found.digest}".encode())
                    spec = dataclasses.replace(spec, digest=combined, settings=found)
            out[name] = spec
        return out

    def _walk(
        self, rel: str = "", rules: ignore.Rules = ()
    ) -> Iterator[tuple[str, os.stat_result]]:
        """Candidate files below ``rel``, leaving out what ignore files say (ignored folders
        are not entered)."""
        folder = self.root / rel if rel else self.root
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            log.warning("cannot list %s: %s", folder, exc)
            return
        if any(e.name == ignore.IGNORE_NAME for e in entries):
            rules = (*rules, self.ignores.rules(rel))
        key = ignore.ids(rules)
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.startswith((".", "__pycache__")):
                        continue
                    why = self.ignores.why(rules, relpath, is_dir=True, key=key)
                    if why:
                        self.ignored[relpath + "/"] = why
                    else:
                        yield from self._walk(relpath, rules)
                elif is_candidate(entry.name) and entry.is_file():
                    why = self.ignores.why(rules, relpath, is_dir=False, key=key)
                    if why:
                        self.ignored[relpath] = why
                    else:
                        yield relpath, entry.stat()
            except OSError:  # vanished between listing and stat
                continue

    def _with_helpers(self, specs: dict[str, Desired]) -> dict[str, Desired]:
        """Fold the folder's helper modules into each location's digest, so that editing
        ``helpers.py`` reloads the locations that sit beside it."""
        helpers: dict[str, list[str]] = {}
        for relpath, seen in self._seen.items():
            if seen.result is None and seen.digest is not None:
                helpers.setdefault(posixpath.dirname(relpath), []).append(
                    f"{relpath}:{seen.digest}"
                )
        out: dict[str, Desired] = {}
        for name, spec in specs.items():
            beside = helpers.get(posixpath.dirname(spec.relpath))
            if beside and isinstance(spec, LocationSpec):
                combined = script.digest_bytes("\n".join([spec.digest, *sorted(beside)]).encode())
                spec = dataclasses.replace(spec, digest=combined)
            out[name] = spec
        return out

    def _admit(self, relpath: str, seen: _Seen) -> None:
        read = self._read(relpath, seen.signature)
        if read is None:  # vanished: the next scan will not list it
            return
        seen.result, digest = read
        seen.admitted, seen.early, seen.digest = seen.signature, None, digest
        self._changed = True

    def _read(self, relpath: str, signature: Signature) -> tuple[Desired | None, str] | None:
        """What the file is, and its digest; ``None`` if it vanished. Reads at most
        ``MAX_FILE_BYTES``; a file the runner cannot read is a location in error (it may be
        one), reported once per change of its size, mtime or mode."""
        path = self.root / relpath
        name = script.location_name(relpath)
        stamp = script.digest_bytes(repr(signature).encode())  # stands for unread content
        try:
            with open(path, "rb") as f:
                if signature[0] <= MAX_FILE_BYTES:
                    data = f.read(MAX_FILE_BYTES + 1)
                else:
                    head = f.read(HEAD_BYTES)
                    if not script.has_script_block(head.decode("utf-8", errors="replace")):
                        return None, stamp  # a large helper module or data file
                    too_big = (
                        f"the file is {signature[0] / 1024**2:,.0f} MiB: a location's file may "
                        f"be at most {MAX_FILE_BYTES // 1024**2} MiB (keep data out of it)"
                    )
                    return SpecError(name, relpath, path, stamp, too_big), stamp
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = f"the runner cannot read the file ({exc.strerror or exc})"
            if isinstance(exc, PermissionError):
                why += f": make it readable to uid {os.getuid()}"
            return SpecError(name, relpath, path, stamp, why), stamp
        result = classify(relpath, path, data)
        return result, result.digest if result is not None else script.digest_bytes(data)


def classify(relpath: str, path: Path, data: bytes) -> Desired | None:
    """Turn a file's bytes into a spec, an error, or ``None`` for a helper module."""
    name = script.location_name(relpath)
    digest = script.digest_bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if b"# /// script" not in data:
            return None
        return SpecError(name, relpath, path, digest, f"the file is not valid UTF-8: {exc}")
    try:
        metadata = script.parse_metadata(text)
    except script.MetadataError as exc:
        return SpecError(name, relpath, path, digest, str(exc))
    if metadata is None:
        return None
    problem = script.name_problem(relpath)
    if problem is not None:
        return SpecError(name, relpath, path, digest, problem)
    return LocationSpec(name, relpath, path, digest, metadata, source=data)


#: Full rescans use at most this share of one core; on a large share they come less often
#: (10,000 files: a rescan costs ~42 ms, so every ~10 s). File events wake the loop at once
#: where there are any; on a network share this is how late a change may be seen.
SCAN_CPU_SHARE = 0.004


class RescanPace:
    """How often the share is rescanned.

    Rescans are what make the runner correct (events get lost, network shares send none),
    but on a share of many files each costs real CPU: the period stretches so that rescans
    use at most ``SCAN_CPU_SHARE`` of one core. The cheapest of the last few rescans sets it:
    one that read many new files says nothing about the next.
    """

    def __init__(self, every: float) -> None:
        self.every = every
        self.period = every
        self._costs: deque[float] = deque(maxlen=5)  # CPU seconds of recent rescans

    def measured(self, cpu_seconds: float) -> None:
        self._costs.append(cpu_seconds)
        cost = min(self._costs)
        period = max(self.every, cost / SCAN_CPU_SHARE)
        stretched = period > self.every * 1.25
        if stretched != (self.period > self.every * 1.25):
            log.info(
                "a full rescan costs %.0f ms of CPU: rescanning every %.1fs", cost * 1000, period
            )
        self.period = period
