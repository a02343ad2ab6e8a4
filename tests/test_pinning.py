"""Reproducible environments, with real uv: a file's own lock, the runner's kept resolution,
``python -m runner lock``, and the versions in ``status`` and in the UI.

Versions are pinned below the newest on purpose (``uv lock --upgrade-package six==1.16.0``;
six 1.17.0 is out), so that a build that resolved afresh instead of from the lock would show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uv

from tests.service import ROOT, Service, drop, running, wait_for

pytestmark = pytest.mark.slow

FILE = """\
# /// script
# dependencies = [{deps}]
# ///
import dagster as dg
import six


@dg.asset
def pinned() -> str:
    return six.__version__


defs = dg.Definitions(assets=[pinned])
"""


def script(*deps: str) -> str:
    return FILE.format(deps=", ".join(f'"{d}"' for d in ("dagster", "six", *deps)))


def uv_lock(folder: Path, name: str, text: str, *options: str) -> str:
    """What ``uv lock --script`` writes for ``text`` (made aside, as a user's checkout)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    for args in ([], list(options)):
        subprocess.run([uv.find_uv_bin(), "lock", "--script", name, "--quiet", *args],
                       cwd=folder, check=True)  # fmt: skip
    return (folder / f"{name}.lock").read_text()


def row(svc: Service, file: str) -> dict[str, Any]:
    """The file's row in ``python -m runner status --json``, as an operator reads it."""
    out = subprocess.run([sys.executable, "-m", "runner", "status", "--json", "--share",
                          str(svc.share)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    rows = [r for r in json.loads(out.stdout).get("files", []) if r["file"] == file]
    return rows[0] if rows else {}


def serving_with(svc: Service, file: str, pins: str, six: str) -> dict[str, Any]:
    return wait_for(
        f"{file} serving from {pins} pins with six {six}",
        lambda: (r := row(svc, file)).get("state") == "serving" and r.get("pins") == pins
        and (r.get("versions") or {}).get("six") == six and r,
        timeout=300,
    )  # fmt: skip


def shown_versions(svc: Service, name: str) -> str:
    data = svc.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "displayMetadata { key value } } } } }"
    )
    [entry] = [e for e in data["workspaceOrError"]["locationEntries"] if e["name"] == name]
    return {m["key"]: m["value"] for m in entry["displayMetadata"]}.get("versions", "")


def six_in(env_path: str) -> str:
    return subprocess.run([f"{env_path}/bin/python", "-c", "import six; print(six.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def test_a_files_lock_is_honoured_edits_swap_and_a_stale_one_keeps_the_last_good(
    service: Service, tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    lock = uv_lock(checkout, "pinned.py", script(), "--upgrade-package", "six==1.16.0")
    drop(service.code_dir / "pinned.py.lock", lock)
    drop(service.code_dir / "pinned.py", script())
    first = serving_with(service, "pinned.py", "own", "1.16.0")
    assert six_in(first["env_path"]) == "1.16.0"  # the newest is 1.17.0: the lock was used
    assert first["versions"]["dagster"]
    assert wait_for("the versions in the UI", lambda: "six 1.16.0" in shown_versions(
        service, "pinned"), timeout=60)  # fmt: skip
    assert "own lockfile" in shown_versions(service, "pinned")

    # A lock edit builds the new environment aside and swaps.
    relocked = uv_lock(checkout, "pinned.py", script(), "--upgrade-package", "six==1.17.0")
    drop(service.code_dir / "pinned.py.lock", relocked)
    second = serving_with(service, "pinned.py", "own", "1.17.0")
    assert second["env_path"] != first["env_path"] and second["pid"] != first["pid"]

    # Metadata edited without relocking: an error that says how to fix it; the last good
    # version keeps serving.
    drop(service.code_dir / "pinned.py", script("toolz"))
    failed = wait_for("the stale lock reported", lambda: (r := row(service, "pinned.py"))
                      .get("error") and r, timeout=300)  # fmt: skip
    assert "does not match" in failed["error"] and "uv lock --script pinned.py" in failed["error"]
    assert failed["serving"] and failed["pid"] == second["pid"]
    assert "does not match" in service.wait_error("pinned~new-version-failed", "lockfile")
    service.wait_loaded("pinned")

    # Without its lock, the file is resolved by the runner (and the runner wrote nothing
    # beside the file, ever).
    (service.code_dir / "pinned.py.lock").unlink()
    unlocked = wait_for("served without the lock", lambda: (r := row(service, "pinned.py"))
                        .get("state") == "serving" and r.get("pins") in ("fresh", "kept")
                        and "toolz" in (r.get("versions") or {}) and r, timeout=300)  # fmt: skip
    assert unlocked["versions"]["six"] == "1.17.0"
    assert sorted(p.name for p in service.code_dir.iterdir()) == ["pinned.py"]


def test_the_kept_resolution_survives_an_empty_cache_and_the_lock_command_gives_it(
    tmp_path: Path,
) -> None:
    share, state = tmp_path / "share", tmp_path / "state"
    env = {"UV_CACHE_DIR": str(tmp_path / "cache-1")}
    with running(share, state, tmp_path / "first.log", env=env) as svc:
        drop(svc.code_dir / "kept.py", script())
        fresh = serving_with(svc, "kept.py", "fresh", "1.17.0")
    # The resolution kept in the state is what every later build of this metadata installs:
    # make it an older one, as if six 1.17.0 had been published since, then lose the
    # environment and the uv cache.
    env_path = Path(fresh["env_path"])
    meta_script = env_path.parent / ".scripts" / f"{env_path.name}.py"
    subprocess.run([uv.find_uv_bin(), "lock", "--script", str(meta_script), "--quiet",
                    "--upgrade-package", "six==1.16.0"], check=True)  # fmt: skip
    shutil.rmtree(env_path)
    env = {"UV_CACHE_DIR": str(tmp_path / "cache-2")}  # empty: packages come from the index
    with running(share, state, tmp_path / "second.log", env=env) as svc:
        kept = serving_with(svc, "kept.py", "kept", "1.16.0")
        assert six_in(kept["env_path"]) == "1.16.0"
        assert kept["versions"]["dagster"] == fresh["versions"]["dagster"]

        # The lock command gives a lock for the file's own metadata with those versions;
        # committed beside the file, it serves the same versions from the file's own lock.
        out = subprocess.run([sys.executable, "-m", "runner", "lock", str(svc.code_dir /
                              "kept.py"), "--share", str(share)], capture_output=True,
                             text=True, cwd=ROOT, env={**os.environ, **env})  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert 'name = "six"\nversion = "1.16.0"' in out.stdout
        checkout = tmp_path / "checkout"
        checkout.mkdir()
        (checkout / "kept.py").write_text(script())
        (checkout / "kept.py.lock").write_text(out.stdout)
        locked = subprocess.run([uv.find_uv_bin(), "lock", "--script", "kept.py", "--check"],
                                cwd=checkout, capture_output=True, text=True)  # fmt: skip
        assert locked.returncode == 0, locked.stderr  # up to date for the file as it is
        drop(svc.code_dir / "kept.py.lock", out.stdout)
        own = serving_with(svc, "kept.py", "own", "1.16.0")
        assert own["versions"] == kept["versions"]
