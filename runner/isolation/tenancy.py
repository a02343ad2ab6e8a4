"""What a location may touch on this machine, made so by the runner (root) for each location.

* Its **folders**: a scratch folder (``work/LOCATION``, its own, mode 0700: HOME, TMPDIR
  and the working directory of its server and runs) and a folder per server
  (``servers/ID``: its socket, the files it and the runner talk through; its own, group of
  the service's roles, mode 2770), both under the runner's state folder, whose other folders
  no location may write.
* Its **code**: read where it is when the location's user can read it; otherwise from a copy
  that only that location (and the runner) may read: the file's bytes as the runner read
  them, and the Python modules and packages of its folder. Symbolic links are never
  followed into a copy (a link on the share could point at anything the runner may read).
* The instance's **shared files**: runs write the instance's SQLite files and its ``storage/``
  folder (compute logs, the default I/O manager's outputs), so those are open to every
  location: the databases writable by all (as the instance is shared, in Dagster itself,
  by every location and run), ``storage/`` writable but not listable, sticky (no location
  removes or replaces what another wrote) and of the service's group, so what a run writes
  there is readable by the webserver and by no other location.
* Its **processes**: every process of a location's user is that location's.

The runner never follows a symbolic link when it changes an owner or a mode.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

from runner.isolation.identity import Identity

log = logging.getLogger(__name__)

#: What a copy of a location's folder may hold at most.
COPY_LIMIT_BYTES = 64 * 1024 * 1024
COPY_LIMIT_FILES = 5000


class CopyError(OSError):
    """The location's code cannot be copied for it; the message says why."""


def _may(st: os.stat_result, who: Identity, bits: int) -> bool:
    """Whether ``who`` (no supplementary groups) has ``bits`` (of r=4, w=2, x=1) on a file
    whose status is ``st``, by its mode."""
    if st.st_uid == who.uid:
        have = st.st_mode >> 6
    elif st.st_gid == who.gid:
        have = st.st_mode >> 3
    else:
        have = st.st_mode
    return have & bits == bits


def blocked(path: Path, who: Identity, *, want: str = "r") -> str | None:
    """Why ``who`` cannot reach ``path`` for ``want`` (``r`` read, ``x`` run, ``rx`` list and
    enter), going by the modes of the path and of every folder above it; ``None`` if it can.
    Symbolic links are followed, as opening the path would (the folders checked are those
    above where they lead)."""
    bits = (4 if "r" in want else 0) | (1 if "x" in want else 0)
    path = Path(os.path.realpath(path))
    for folder in reversed(path.parents):
        try:
            st = folder.stat()
        except OSError as exc:
            return f"{folder} cannot be looked at ({exc.strerror})"
        if not _may(st, who, 1):
            return f"{folder} is closed to other users (mode {stat.S_IMODE(st.st_mode):04o})"
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path} cannot be looked at ({exc.strerror})"
    if not _may(st, who, bits):
        return f"{path} is not open to other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def readable_code(file: Path, who: Identity) -> str | None:
    """Why ``who`` cannot read ``file`` and import the modules beside it (``None``: it can)."""
    return blocked(file, who) or blocked(file.parent, who, want="rx")


def owned_folder(path: Path, *, uid: int, gid: int, mode: int) -> Path:
    """``path`` as a folder of ``uid``:``gid`` with ``mode`` (its parent exists). A symbolic
    link in its place is an error, never followed."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def runner_folder(path: Path, *, mode: int = 0o711) -> Path:
    """A folder of the runner's that other users may pass through (``0711``: enter a folder
    below it they know the name of, but not list it) or not (``0700``)."""
    path.mkdir(parents=True, exist_ok=True)
    return owned_folder(path, uid=os.getuid(), gid=os.getgid(), mode=mode)


def claimed_folder(path: Path, *, uid: int, gid: int) -> Path:
    """``path`` as a folder of ``uid`` (group ``gid``, mode 2770), with everything in it: a
    location that comes back with another id takes its outputs back. Links are not
    followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        before = None
    owned_folder(path, uid=uid, gid=gid, mode=0o2770)
    if before is not None and before.st_uid != uid:
        # By folder descriptors: a link put in place of a folder is never followed.
        for _, folders, files, fd in os.fwalk(path, follow_symlinks=False):
            for name in folders + files:
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    return path


def claimed_by_runner(path: Path) -> None:
    """``path`` and everything below it the runner's (a build's output), by folder
    descriptors: a link is never followed."""
    uid, gid = os.getuid(), os.getgid()
    os.chown(path, uid, gid, follow_symlinks=False)
    for _, folders, files, fd in os.fwalk(path, follow_symlinks=False):
        for name in folders + files:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def remove(path: Path) -> None:
    """Remove a folder a location wrote (its links are removed, not followed)."""
    shutil.rmtree(path, ignore_errors=True)


def copy_code(file: Path, source: bytes, dest: Path, *, readers: int) -> Path:
    """Copy ``file`` (its bytes as the runner read them: ``source``) and the Python modules and
    packages of its folder into the new folder ``dest``, readable by the group ``readers``
    only; return the copy of the file. :class:`CopyError` if the folder holds too much, or
    the file is a symbolic link."""
    if file.is_symlink():
        raise CopyError(
            f"{file.name} is a symbolic link: its location's user cannot read the "
            "share, and a link is never served from a copy"
        )
    owned_folder(dest, uid=os.getuid(), gid=readers, mode=0o750)
    budget = [COPY_LIMIT_BYTES, COPY_LIMIT_FILES]
    for entry in _entries(file.parent):
        if entry.name == file.name:
            continue
        if entry.is_file(follow_symlinks=False) and entry.name.endswith(".py"):
            _copy_file(Path(entry.path), dest / entry.name, readers, budget)
        elif entry.is_dir(follow_symlinks=False) and (Path(entry.path) / "__init__.py").is_file():
            _copy_package(Path(entry.path), dest / entry.name, readers, budget)
    copied = dest / file.name
    _write(copied, source, readers)
    return copied


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".") and e.name != "__pycache__"]
    except OSError as exc:
        raise CopyError(f"cannot read {folder}: {exc.strerror}") from None


def _copy_package(src: Path, dest: Path, readers: int, budget: list[int]) -> None:
    owned_folder(dest, uid=os.getuid(), gid=readers, mode=0o750)
    for entry in _entries(src):
        if entry.is_file(follow_symlinks=False):
            _copy_file(Path(entry.path), dest / entry.name, readers, budget)
        elif entry.is_dir(follow_symlinks=False):
            _copy_package(Path(entry.path), dest / entry.name, readers, budget)


def _copy_file(src: Path, dest: Path, readers: int, budget: list[int]) -> None:
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return  # gone, a link, or unreadable: not the location's to import
    with os.fdopen(fd, "rb") as f:
        data = f.read(budget[0] + 1)
    budget[0] -= len(data)
    budget[1] -= 1
    if budget[0] < 0 or budget[1] < 0:
        raise CopyError(
            f"the folder of the file holds more than {COPY_LIMIT_FILES} files or "
            f"{COPY_LIMIT_BYTES // 2**20} MiB of modules to copy: make the share readable by "
            "the locations' users instead"
        )
    _write(dest, data, readers)


def _write(dest: Path, data: bytes, readers: int) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchown(f.fileno(), os.getuid(), readers)
        os.fchmod(f.fileno(), 0o640)


def processes_of(uid: int) -> list[int]:
    """Pids of live processes whose real or effective user is ``uid``."""
    return processes_of_users({uid}).get(uid, [])


def processes_of_users(uids: set[int]) -> dict[int, list[int]]:
    """Pids of live processes per user of ``uids`` (real or effective), in one pass."""
    found: dict[int, list[int]] = {}
    if not uids:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(b":", 1) for line in text.splitlines() if b":" in line)
        ids = {int(i) for i in fields.get(b"Uid", b"").split()[:2]}
        if fields.get(b"State", b"").split()[:1] == [b"Z"]:
            continue
        for uid in ids & uids:
            found.setdefault(uid, []).append(int(entry.name))
            break
    return found


# --- the instance's files ------------------------------------------------------------------

#: SQLite folders of Dagster's default storage below DAGSTER_HOME, written by every run.
SQLITE_FOLDERS = ("history", "history/runs", "schedules")


def share_instance(home: Path, *, service: tuple[int, int], sqlite: bool) -> None:
    """Open what runs of every location write in the instance ``home``: its SQLite storage
    (if ``sqlite``) and ``storage/``, as the module docstring says."""
    if sqlite:
        for name in SQLITE_FOLDERS:
            folder = home / name
            if folder.is_dir() and not folder.is_symlink():
                owned_folder(folder, uid=service[0], gid=service[1], mode=0o1777)
                for entry in os.scandir(folder):
                    if entry.name.endswith((".db", ".db-wal", ".db-shm")):
                        _open_to_all(Path(entry.path))
    storage = home / "storage"
    storage.mkdir(exist_ok=True)
    owned_folder(storage, uid=service[0], gid=service[1], mode=0o3773)


def _open_to_all(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o666)
    finally:
        os.close(fd)


def create_shared(path: str) -> None:
    """Create the SQLite file ``path`` writable by every location's runs, unless it exists:
    SQLite itself creates databases with mode 0644, whatever the umask."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except OSError:
        return
    try:
        os.fchmod(fd, 0o666)
    finally:
        os.close(fd)
