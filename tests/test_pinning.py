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
        subprocess.run(
            [uv.find_uv_bin(), "lock", "--script", name, "--quiet", *args], cwd=folder, check=True
        )
    return (folder / f"{name}.lock").read_text()


def row(svc: Service, file: str) -> dict[str, Any]:
    """The file's row in ``python -m runner status --json``, as an operator reads it."""
    out = subprocess.run(
        [sys.executable, "-m", "runner", "status", "--json", "--share", str(svc.share)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    rows = [r for r in json.loads(out.stdout).get("files", []) if r["file"] == file]
    return rows[0] if rows else {}


def serving_with(svc: Service, file: str, pins: str, six: str) -> dict[str, Any]:
    return wait_for(
        f"{file} serving from {pins} pins with six {six}",
        lambda: (
            (r := row(svc, file)).get("state") == "serving"
            and r.get("pins") == pins
            and (r.get("versions") or {}).get("six") == six
            and r
        ),
        timeout=300,
    )


def shown_versions(svc: Service, name: str) -> str:
    data = svc.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "displayMetadata { key value } } } } }"
    )
    [entry] = [e for e in data["workspaceOrError"]["locationEntries"] if e["name"] == name]
    return {m["key"]: m["value"] for m in entry["displayMetadata"]}.get("versions", "")


def six_in(env_path: str) -> str:
    return subprocess.run(
        [f"{env_path}/bin/python", "-c", "import six; print(six.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


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
    assert wait_for(
        "the versions in the UI",
        lambda: "six 1.16.0" in shown_versions(service, "pinned"),
        timeout=60,
    )
    assert "own lockfile" in shown_versions(service, "pinned")

    # A lock edit builds the new environment aside and swaps.
    relocked = uv_lock(checkout, "pinned.py", script(), "--upgrade-package", "six==1.17.0")
    drop(service.code_dir / "pinned.py.lock", relocked)
    second = serving_with(service, "pinned.py", "own", "1.17.0")
    assert second["env_path"] != first["env_path"] and second["pid"] != first["pid"]

    # Metadata edited without relocking: an error that says how to fix it; the last good
    # version keeps serving.
    drop(service.code_dir / "pinned.py", script("toolz"))
    failed = wait_for(
        "the stale lock reported",
        lambda: (r := row(service, "pinned.py")).get("error") and r,
        timeout=300,
    )
    assert "does not match" in failed["error"] and "uv lock --script pinned.py" in failed["error"]
    assert failed["serving"] and failed["pid"] == second["pid"]
    assert "does not match" in service.wait_error("pinned~new-version-failed", "lockfile")
    service.wait_loaded("pinned")

    # Without its lock, the file is resolved by the runner (and the runner wrote nothing
    # beside the file, ever).
    (service.code_dir / "pinned.py.lock").unlink()
    unlocked = wait_for(
        "served without the lock",
        lambda: (
            (r := row(service, "pinned.py")).get("state") == "serving"
            and r.get("pins") in ("fresh", "kept")
            and "toolz" in (r.get("versions") or {})
            and r
        ),
        timeout=300,
    )
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
    subprocess.run(
        [
            uv.find_uv_bin(),
            "lock",
            "--script",
            str(meta_script),
            "--quiet",
            "--upgrade-package",
            "six==1.16.0",
        ],
        check=True,
    )
    shutil.rmtree(env_path)
    env = {"UV_CACHE_DIR": str(tmp_path / "cache-2")}  # empty: packages come from the index
    with running(share, state, tmp_path / "second.log", env=env) as svc:
        kept = serving_with(svc, "kept.py", "kept", "1.16.0")
        assert six_in(kept["env_path"]) == "1.16.0"
        assert kept["versions"]["dagster"] == fresh["versions"]["dagster"]

        # The lock command gives a lock for the file's own metadata with those versions;
        # committed beside the file, it serves the same versions from the file's own lock.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "runner",
                "lock",
                str(svc.code_dir / "kept.py"),
                "--share",
                str(share),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        assert out.returncode == 0, out.stderr
        assert 'name = "six"\nversion = "1.16.0"' in out.stdout
        checkout = tmp_path / "checkout"
        checkout.mkdir()
        (checkout / "kept.py").write_text(script())
        (checkout / "kept.py.lock").write_text(out.stdout)
        locked = subprocess.run(
            [uv.find_uv_bin(), "lock", "--script", "kept.py", "--check"],
            cwd=checkout,
            capture_output=True,
            text=True,
        )
        assert locked.returncode == 0, locked.stderr  # up to date for the file as it is
        drop(svc.code_dir / "kept.py.lock", out.stdout)
        own = serving_with(svc, "kept.py", "own", "1.16.0")
        assert own["versions"] == kept["versions"]


TEAM_FILE = """\
# /// script
# dependencies = ["dagster", "teamlib"]
# [[tool.uv.index]]
# name = "{index}"
# url = "{url}"
# explicit = true
# [tool.uv.sources]
# teamlib = {{ index = "{index}" }}
# ///
import dagster as dg
import teamlib


@dg.asset
def private() -> str:
    return teamlib.VALUE


defs = dg.Definitions(assets=[private])
"""

DATED_FILE = """\
# /// script
# dependencies = ["dagster", "six"]
# [tool.uv]
# exclude-newer = "2024-06-01T00:00:00Z"
# ///
import dagster as dg

defs = dg.Definitions()
"""


def wheel(name: str, version: str, module: str) -> tuple[str, bytes]:
    """A pure-Python wheel, made by hand: nothing can be built or published for the test."""
    import base64
    import hashlib
    import io
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


class PrivateIndex:
    """A PEP 503 index on loopback that answers only with the right Basic credentials."""

    def __init__(self, user: str, password: str) -> None:
        import base64
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        filename, data = wheel("teamlib", "1.0.0", 'VALUE = "from-the-private-index"\n')
        sha = hashlib.sha256(data).hexdigest()
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.refused = 0
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                if self.headers.get("Authorization") != expected:
                    index.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="team"')
                    self.end_headers()
                    return
                if self.path.rstrip("/") == "/simple/teamlib":
                    body = f'<a href="/files/{filename}#sha256={sha}">{filename}</a>'.encode()
                    kind = "text/html"
                elif self.path == f"/files/{filename}":
                    body, kind = data, "application/octet-stream"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tool_uv_works_and_index_credentials_from_the_environment_never_show(
    tmp_path: Path,
) -> None:
    secret, wrong = "s3cret-Team-Token-5521", "wr0ng-Token-9817"
    index = PrivateIndex("team", secret)
    env = {
        "UV_INDEX_TEAM_USERNAME": "team",
        "UV_INDEX_TEAM_PASSWORD": secret,
        "UV_INDEX_OTHER_USERNAME": "team",
        "UV_INDEX_OTHER_PASSWORD": wrong,
    }
    share, state = tmp_path / "share", tmp_path / "state"
    try:
        with running(share, state, tmp_path / "service.log", env=env) as svc:
            drop(svc.code_dir / "private.py", TEAM_FILE.format(index="team", url=index.url))
            drop(svc.code_dir / "refused.py", TEAM_FILE.format(index="other", url=index.url))
            drop(svc.code_dir / "dated.py", DATED_FILE)
            svc.wait_loaded("private", timeout=300)
            run_id = svc.materialize_all("private")
            assert svc.wait_run(run_id) == "SUCCESS", svc.run_failure_text(run_id)
            private = row(svc, "private.py")
            assert private["versions"]["teamlib"] == "1.0.0"
            error = svc.wait_error("refused", "401", timeout=300)
            assert index.refused >= 1
            dated = wait_for(
                "dated.py serving",
                lambda: (r := row(svc, "dated.py")).get("state") == "serving" and r,
                timeout=300,
            )
            assert dated["versions"]["six"] == "1.16.0"  # 1.17.0 came out after exclude-newer
            shown = json.dumps([row(svc, "refused.py"), private, svc.locations()])
    finally:
        index.close()
    places = {
        "the UI's error": error,
        "status": shown,
        "the log": (tmp_path / "service.log").read_text(errors="replace"),
        "workspace.yaml": (share / "dagster_home" / "workspace.yaml").read_text(),
        "the kept resolutions": "".join(
            p.read_text() for p in (state / "envs" / ".scripts").glob("*.lock")
        ),
        "the run env files": "".join(p.read_text() for p in (state / "runs").glob("*.json"))
        if (state / "runs").exists()
        else "",
    }
    for where, text in places.items():
        assert secret not in text and wrong not in text, f"a credential in {where}"
