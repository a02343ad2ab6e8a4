"""Drive the real service the way a user and the UI do: a process, a folder, GraphQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests

from runner.servers.server import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def asset_file(assets: list[str], *, extra_meta: str = "") -> str:
    """A PEP 723 file with one trivial asset per name (``extra_meta``: more metadata lines)."""
    body = "\n".join(f"@dg.asset\ndef {a}() -> int:\n    return 1\n\n" for a in assets)
    return (
        f'# /// script\n# dependencies = ["dagster"]\n{extra_meta}# ///\n'
        f"import dagster as dg\n\n{body}\ndefs = dg.Definitions(assets=[{', '.join(assets)}])\n"
    )


def drop(path: Path, text: str) -> None:
    """Write a file aside and rename it in, as a copy onto a share or an editor's save does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name[:200]}.part"  # a long name's copy fits 255 bytes too
    tmp.write_text(text)
    tmp.rename(path)


def warm_up(service: Service, name: str = "warm_up") -> None:
    """Serve a file of the common environment (``asset_file``'s), so that later starts in it
    are forked: an environment's first server starts cold while its template starts."""
    shown = wait_for("the webserver", lambda: [service.locations()], timeout=180)[0]
    if shown.get(name, {}).get("loadStatus") != "LOADED":
        drop(service.code_dir / f"{name}.py", asset_file([name]))
        service.wait_loaded(name)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(what: str, check: Callable[[], T], *, timeout: float = 120, every: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # keep polling, report the last one
            last_error = exc
        else:
            if value:
                return value
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


class WebClient:
    """Talks to a Dagster webserver over GraphQL, the way the UI does."""

    def __init__(self, url: str) -> None:
        self.url = url

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        resp.raise_for_status()
        body = resp.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def locations(self) -> dict[str, dict[str, Any]]:
        data = self.graphql(
            """{ workspaceOrError { __typename ... on Workspace { locationEntries {
                 name loadStatus
                 locationOrLoadError { __typename ... on PythonError {
                   message causes { message } } }
            } } } }"""
        )
        return {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}

    def error_of(self, name: str) -> str | None:
        """The load error the UI shows for location ``name``, with its causes (None: loaded)."""
        entry = self.locations().get(name)
        loaded = (entry or {}).get("locationOrLoadError") or {}
        if loaded.get("__typename") != "PythonError":
            return None
        return "\n".join([loaded["message"], *(c["message"] for c in loaded["causes"])])

    def wait_error(self, name: str, contains: str, timeout: float = 180) -> str:
        return wait_for(
            f"location {name} to show an error containing {contains!r}",
            lambda: (e := self.error_of(name)) and contains in e and e,
            timeout=timeout,
        )

    def wait_loaded(self, name: str, timeout: float = 180) -> dict[str, Any]:
        def loaded() -> dict[str, Any] | None:
            entry = self.locations().get(name)
            loaded = (entry or {}).get("locationOrLoadError") or {}
            if (
                entry
                and entry["loadStatus"] == "LOADED"
                and loaded["__typename"] == "RepositoryLocation"
            ):
                return entry
            return None

        return wait_for(f"location {name} LOADED", loaded, timeout=timeout)

    def asset_keys(self, location: str) -> list[str]:
        data = self.graphql(
            """query($loc: String!) { repositoryOrError(repositorySelector: {
                 repositoryLocationName: $loc, repositoryName: "__repository__"}) {
                 __typename ... on Repository { assetNodes { assetKey { path } } }
                 ... on PythonError { message } ... on RepositoryNotFoundError { message } } }""",
            {"loc": location},
        )
        repo = data["repositoryOrError"]
        assert repo["__typename"] == "Repository", repo
        return sorted("/".join(n["assetKey"]["path"]) for n in repo["assetNodes"])

    def materialize_all(self, location: str) -> str:
        """Launch a run of every asset of ``location``, as the UI's Materialize all does."""
        keys = [{"path": k.split("/")} for k in self.asset_keys(location)]
        data = self.graphql(
            """mutation($params: ExecutionParams!) {
                 launchPipelineExecution(executionParams: $params) {
                   __typename ... on LaunchRunSuccess { run { runId } }
                   ... on PythonError { message }
                   ... on RunConfigValidationInvalid { errors { message } }
                   ... on InvalidSubsetError { message } ... on PipelineNotFoundError { message }
            } }""",
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": location,
                        "repositoryName": "__repository__",
                        "pipelineName": "__ASSET_JOB",
                        "assetSelection": keys,
                    },
                    "mode": "default",
                    "executionMetadata": {"tags": []},
                }
            },
        )
        result = data["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def location_metadata(self, name: str) -> dict[str, str]:
        """What the UI shows beside the location ``name`` (its display metadata)."""
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "displayMetadata { key value } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        [entry] = [e for e in entries if e["name"] == name]
        return {m["key"]: m["value"] for m in entry["displayMetadata"]}

    def run_tags(self, run_id: str) -> dict[str, str]:
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) { __typename
                 ... on Run { tags { key value } } } }""",
            {"id": run_id},
        )
        return {t["key"]: t["value"] for t in data["runOrError"]["tags"]}

    def reload_all(self) -> None:
        """The UI's "Reload all": the mutation the UI sends, by its own name."""
        data = self.graphql(
            """mutation ReloadWorkspaceMutation { reloadWorkspace { __typename
                 ... on PythonError { message } } }"""
        )
        assert data["reloadWorkspace"]["__typename"] == "Workspace", data

    def run_status(self, run_id: str) -> str:
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }""",
            {"id": run_id},
        )
        return data["runOrError"]["status"]

    def wait_run(self, run_id: str, timeout: float = 180) -> str:
        done = {"SUCCESS", "FAILURE", "CANCELED"}
        return wait_for(
            f"run {run_id} to finish",
            lambda: (s := self.run_status(run_id)) in done and s,
            timeout=timeout,
        )

    def run_failure_text(self, run_id: str) -> str:
        data = self.graphql(
            """query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection {
                 events { __typename ... on MessageEvent { message }
                          ... on ErrorEvent { error { message } } } } } }""",
            {"id": run_id},
        )
        events = data["logsForRun"].get("events", [])
        return "\n".join(
            f"{e['__typename']}: {e.get('message')}"
            + (f"\n  {(e.get('error') or {}).get('message', '').strip()}" if e.get("error") else "")
            for e in events
        )


class Service(WebClient):
    """``entrypoint.py`` on a temporary share and a free port."""

    def __init__(
        self,
        share: Path,
        state_dir: Path,
        *,
        role: str = "all",
        log: Path,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.share = share
        self.port = free_port("127.0.0.1")
        super().__init__(f"http://{host}:{self.port}")
        extra_env, env = env, dict(os.environ)
        for inherited in ("DAGSTER_HOME", "RUNNER_WORKSPACE_DIR", "DAGSTER_DATABASE_URL"):
            env.pop(inherited, None)
        env.pop("DAGSTER_WEBSERVER_URL", None)
        env["RUNNER_STATE_DIR"] = str(state_dir)
        env["UV_PYTHON_DOWNLOADS"] = "never"
        env.update(extra_env or {})
        self.env = env
        self.log_path = log
        self._log = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                str(ROOT / "entrypoint.py"),
                role,
                "--share",
                str(share),
                "--host",
                host,
                "--port",
                str(self.port),
            ],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._seen: set[psutil.Process] = set()

    @property
    def code_dir(self) -> Path:
        return self.share / "code_location"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> set[psutil.Process]:
        """Every process started under the service so far (remembered, to check cleanup)."""
        try:
            self._seen |= set(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        return self._seen

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        self.descendants()  # remember what runs now, to check cleanup later
        return super().graphql(query, variables)

    def status_rows(self) -> dict[str, dict[str, Any]]:
        """``runner status --json``'s rows, by file: what the runner last wrote."""
        data = json.loads((self.share / "dagster_home" / ".runner-status.json").read_text())
        return {row["file"]: row for row in data["files"]}

    def server_pids(self, name: str) -> list[int]:
        """Pids of the code servers the runner logged as serving ``name``, oldest first."""
        pattern = rf"serving {re.escape(name)} on (?:port \d+|socket \S+) \(pid (\d+)\)"
        return [int(pid) for pid in re.findall(pattern, self.log_text())]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> float:
        """Signal the entrypoint; return how long it took to exit."""
        self.descendants()
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self._log.close()
        return time.monotonic() - started

    def kill(self) -> None:
        """Last-resort cleanup for a failed test: SIGKILL everything we saw, by pid."""
        for proc in [*self.descendants(), psutil.Process(self.proc.pid)]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=10)

    def assert_nothing_left(self) -> None:
        """Every process seen under the service is gone (and some were seen)."""
        assert self._seen, "no process of the service was ever seen: nothing was checked"
        assert self.leftovers() == []

    def leftovers(self) -> list[str]:
        alive = []
        for proc in self.descendants():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        return alive


@contextmanager
def running(
    share: Path,
    state_dir: Path,
    log: Path,
    env: dict[str, str] | None = None,
    role: str = "all",
    **options: Any,
) -> Iterator[Service]:
    """A service (or one role of it) for the ``with`` block; whatever it started is gone
    after it. ``options``: ``host``, ``prefix`` (e.g. ``ip netns exec NS``)."""
    service = Service(share, state_dir, log=log, env=env, role=role, **options)
    try:
        yield service
    finally:
        if service.proc.poll() is None:
            service.stop()
        if service.leftovers():
            service.kill()
