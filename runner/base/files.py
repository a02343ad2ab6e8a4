"""Files the runner writes for others to read: replaced atomically, never half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Whom the files this process writes belong to: set once as the process starts (see
#: :func:`runner.service.config.share_owner`); None: this process's own user.
_owner: tuple[int, int] | None = None


def write_as(owner: tuple[int, int] | None) -> None:
    """Files this process writes from now on belong to ``owner`` (uid, gid)."""
    global _owner
    _owner = owner


def write_if_changed(path: Path, text: str, *, owner: tuple[int, int] | None = None) -> bool:
    """Replace ``path`` with ``text`` atomically; return False if it already said that.
    ``owner``: (uid, gid) the file belongs to (a runner started as root writes the share's
    files as the service's user)."""
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
        owner = owner or _owner
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
