"""``python -m runner lock FILE``: the lock the runner serves a file with, for the file's
own folder, so that ``uv run --script FILE`` gets exactly the versions the service runs.

A file with its own lock is served from it: that lock is the answer. Otherwise the runner's
kept resolution is for the metadata it built (the file's, plus what it added for serving,
such as dagster-postgres); ``uv lock --script`` on a copy of the file, with that resolution
beside it as uv's starting point, gives a lock for the file's own metadata that keeps every
version (uv changes a locked version only when the metadata no longer allows it).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import uv

from runner.base import paths
from runner.service import status


class LockError(Exception):
    """Why there is no lock to give for the file (meant for the person who asked)."""


def served_lock(where: paths.Layout, file: Path) -> str:
    """The text of the lock ``file``'s environment was built from, for ``file``'s metadata."""
    file = file.resolve()
    try:
        relpath = file.relative_to(where.code_dir.resolve()).as_posix()
    except ValueError:
        raise LockError(f"{file} is not in {where.code_dir}") from None
    snapshot = status.read(where.dagster_home / status.STATUS_NAME)
    rows = [
        r
        for r in (snapshot.data.get("files", []) if snapshot else [])
        if r.get("file") == relpath and r.get("state") != "retiring"
    ]
    row = rows[0] if rows else None
    if row is None or not row.get("env_path") or not row.get("pins"):
        raise LockError(
            f"the runner has no built environment for {relpath} yet "
            "(`python -m runner status` says what it is doing)"
        )
    if row["pins"] == "own":
        return Path(f"{file}.lock").read_text()
    env_path = Path(row["env_path"])
    kept = env_path.parent / ".scripts" / f"{env_path.name}.py.lock"
    if not kept.exists():
        raise LockError(f"the runner's resolution for {relpath} is not at {kept}")
    with tempfile.TemporaryDirectory(prefix="runner-lock-") as tmp:
        copy = Path(tmp) / file.name
        shutil.copyfile(file, copy)
        shutil.copyfile(kept, f"{copy}.lock")
        done = subprocess.run(
            [uv.find_uv_bin(), "lock", "--script", str(copy), "--quiet"],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if done.returncode != 0:
            raise LockError(f"uv lock failed: {done.stderr.strip()}")
        return Path(f"{copy}.lock").read_text()
