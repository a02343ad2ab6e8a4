"""Who each location runs as: a user and group of its own, or the runner's, and why.

A file on the share is code, and it runs the moment its server imports it. With
``RUNNER_ISOLATION=user`` (the default wherever the runner can switch users) every location's
server, and every process it starts, runs as a uid and gid of its own from
``RUNNER_UID_RANGE``, with no supplementary groups and no capabilities. The range's first id
is the templates' (they hold only the right to fork servers into location ids, see
``boot/drop.py``), its second is reserved for builds; locations get the others.

Ids are kept in a map beside workspace.yaml (where a standby runner on another machine reads
it when it takes over), so a location keeps its id across reloads and restarts. An id is
released only once the location's last process has ended, and ids are handed out in turn
around the range, so a released id (and whatever files it still owns) comes back into use
only after every other id of the range has been used.
"""

from __future__ import annotations

import grp
import json
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runner.base.files import write_if_changed

IDS_NAME = ".runner-ids.json"
DEFAULT_RANGE = "20000-29999"
#: Capabilities the runner needs to run locations as their own users (bit numbers).
_CAP_CHOWN, _CAP_KILL, _CAP_SETGID, _CAP_SETUID = 0, 5, 6, 7
_NEEDED = {
    "CAP_SETUID": _CAP_SETUID,
    "CAP_SETGID": _CAP_SETGID,
    "CAP_KILL": _CAP_KILL,
    "CAP_CHOWN": _CAP_CHOWN,
}


@dataclass(frozen=True, order=True)
class Identity:
    """A user and group a location's processes run as."""

    uid: int
    gid: int

    @property
    def user(self) -> str:
        """What ``USER`` and ``LOGNAME`` say (the id has no passwd entry)."""
        return f"location-{self.uid}"


@dataclass(frozen=True)
class IdRange:
    lowest: int
    highest: int

    @classmethod
    def parse(cls, text: str) -> IdRange:
        """``LOW-HIGH``: at least three ids, none of them 0."""
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
        if not match:
            raise ValueError(
                f"RUNNER_UID_RANGE must be LOW-HIGH (e.g. {DEFAULT_RANGE}), not {text!r}"
            )
        lowest, highest = int(match.group(1)), int(match.group(2))
        if lowest < 1 or highest - lowest < 2 or highest > 2**32 - 2:
            raise ValueError(f"RUNNER_UID_RANGE {text!r} must hold at least 3 ids, none of them 0")
        return cls(lowest, highest)

    @property
    def template(self) -> Identity:
        return Identity(self.lowest, self.lowest)

    @property
    def builds(self) -> Identity:
        return Identity(self.lowest + 1, self.lowest + 1)

    @property
    def locations(self) -> tuple[int, int]:
        """The ids locations may get (inclusive)."""
        return self.lowest + 2, self.highest

    def describe(self) -> str:
        return f"{self.locations[0]}-{self.locations[1]}"


Mode = Literal["user", "none"]


@dataclass(frozen=True)
class Isolation:
    """Whether locations run as users of their own; ``why`` says why not."""

    mode: Mode
    ids: IdRange
    why: str = ""

    @property
    def on(self) -> bool:
        return self.mode == "user"

    def describe(self) -> str:
        if self.on:
            return f"each location runs as a user and group of its own (ids {self.ids.describe()})"
        return (
            f"every location runs as the runner's own user ({self.why}): one location's code "
            "can read another's settings and files, signal its processes and connect to its "
            "server"
        )


def missing_rights(euid: int, effective: int) -> list[str]:
    """The capabilities (of those the runner needs) missing from ``effective`` (CapEff)."""
    return [name for name, bit in _NEEDED.items() if not effective >> bit & 1]


def read_effective_caps(status: str | None = None) -> int:
    """CapEff of this process, from ``/proc/self/status`` (0 where it cannot be read)."""
    try:
        text = status if status is not None else Path("/proc/self/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", text, re.M)
    return int(found.group(1), 16) if found else 0


def decide(
    requested: str | None, *, ids: IdRange, euid: int, effective: int, setpriv: bool
) -> Isolation:
    """``RUNNER_ISOLATION`` (``user``, ``none``, unset: ``user`` where the runner can switch
    users) against what this process may do. Asked for explicitly, ``user`` fails closed:
    ``ValueError`` saying what is missing."""
    wanted = (requested or "").strip().lower()
    if wanted not in ("", "user", "none"):
        raise ValueError(f"RUNNER_ISOLATION must be user or none, not {requested!r}")
    if wanted == "none":
        return Isolation("none", ids, "RUNNER_ISOLATION=none")
    missing = missing_rights(euid, effective)
    why = ""
    if missing:
        who = "it is not root" if euid != 0 else "it is root without them"
        why = f"the runner cannot switch users: {who} and lacks {', '.join(missing)}"
    elif not setpriv:
        why = "the runner cannot switch users: setpriv (util-linux) is not installed"
    if not why:
        return Isolation("user", ids)
    if wanted == "user":
        raise ValueError(f"RUNNER_ISOLATION=user, but {why}")
    return Isolation("none", ids, why)


def taken_by_system(uid: int) -> bool:
    """An id that names a user or group of this machine belongs to someone else."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def allocate(
    held: Mapping[str, int], cursor: int, ids: IdRange, *, taken: Callable[[int], bool]
) -> tuple[int, int]:
    """The next free id at or after ``cursor`` (around the range), and the cursor after it.
    ``ValueError`` when every id of the range is held or taken."""
    lowest, highest = ids.locations
    size = highest - lowest + 1
    used = set(held.values())
    start = cursor if lowest <= cursor <= highest else lowest
    for step in range(size):
        uid = lowest + (start - lowest + step) % size
        if uid not in used and not taken(uid):
            return uid, lowest + (uid - lowest + 1) % size
    raise ValueError(f"every id of RUNNER_UID_RANGE ({ids.describe()}) is in use")


class Identities:
    """The map of location names to ids, kept in a file (rewritten on every change)."""

    def __init__(
        self,
        path: Path,
        ids: IdRange,
        *,
        taken: Callable[[int], bool] = taken_by_system,
    ) -> None:
        self.path = path
        self.ids = ids
        self._taken = taken
        self._held: dict[str, int] = {}
        self._cursor = ids.locations[0]
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        lowest, highest = self.ids.locations
        held = data.get("ids", {}) if isinstance(data, dict) else {}
        self._held = {
            name: uid
            for name, uid in held.items()
            if isinstance(uid, int) and lowest <= uid <= highest
        }
        if isinstance(data.get("next"), int):
            self._cursor = data["next"]

    def get(self, name: str) -> Identity:
        """``name``'s identity, given one now if it has none (``ValueError``: none left)."""
        uid = self._held.get(name)
        if uid is None:
            uid, self._cursor = allocate(self._held, self._cursor, self.ids, taken=self._taken)
            self._held[name] = uid
            self._save()
        return Identity(uid, uid)

    def held(self) -> dict[str, Identity]:
        return {name: Identity(uid, uid) for name, uid in self._held.items()}

    def release(self, name: str) -> Identity | None:
        uid = self._held.pop(name, None)
        if uid is None:
            return None
        self._save()
        return Identity(uid, uid)

    def _save(self) -> None:
        text = (
            json.dumps({"next": self._cursor, "ids": dict(sorted(self._held.items()))}, indent=1)
            + "\n"
        )
        write_if_changed(self.path, text)
