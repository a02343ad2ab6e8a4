"""Helpers shared by the benchmarks (they drive the real service, like the tests)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.base import process  # noqa: E402
from runner.dagster_side.internals import DagsterGrpcClient  # noqa: E402
from runner.servers.server import BOOT, free_port  # noqa: E402
from tests.service import asset_file as script  # noqa: E402, F401 - the benches' files


@dataclass(frozen=True)
class BareStart:
    ping: float  # seconds from spawn to the first answered ping
    loaded: float  # seconds from spawn to the file loaded (ListRepositories answered)
    rss: int  # bytes, after loading


def bare_start(python: Path, file: Path, *, boot: bool = False) -> BareStart:
    """Start a bare ``dagster api grpc`` for ``file`` (the hand-made way) and time it;
    ``boot``: through the runner's boot script instead of ``python -m dagster``."""
    port = free_port("127.0.0.1")
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    command = [str(BOOT)] if boot else ["-m", "dagster", "api", "grpc"]
    hooks = {"RUNNER_RELOAD_REQUEST": f"{file}.reload", "RUNNER_LOAD_REPORT": f"{file}.json"}
    started = time.perf_counter()
    proc = process.spawn(
        [
            str(python),
            *command,
            "--python-file",
            str(file),
            "--working-directory",
            str(file.parent),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lazy-load-user-code",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **hooks} if boot else None,
    )
    try:
        while True:
            try:
                client.ping("x")
                break
            except Exception:  # not up yet
                time.sleep(0.02)
        pinged = time.perf_counter() - started
        client.list_repositories()
        loaded = time.perf_counter() - started
        return BareStart(pinged, loaded, psutil.Process(proc.pid).memory_info().rss)
    finally:
        process.stop(proc, name="bare server", grace=10)


def env_python(pid: int) -> Path:
    """The interpreter of the environment a code server runs in: its command line is its
    title now, but it maps that environment's compiled modules."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/site-packages/" in path and "/lib/python" in path:
            return Path(path.split("/lib/python")[0]) / "bin" / "python"
    raise LookupError(f"no environment's modules mapped by pid {pid}")


def row(label: str, values: list[float], unit: str = "s") -> str:
    return (
        f"  {label:<48}{statistics.median(values):>8.2f}{unit}{min(values):>8.2f}{unit}"
        f"{max(values):>8.2f}{unit}"
    )


def header(title: str) -> str:
    return f"{title}\n  {'':<48}{'median':>9}{'min':>9}{'max':>9}"


MIB = 1024 * 1024


def tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    """``roots`` and all their descendants that are alive now."""
    out = []
    for root in roots:
        try:
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def pss(procs: list[psutil.Process]) -> int:
    """Proportional set size: shared pages split among their users, so sums are honest."""
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakMemory:
    """Samples the summed PSS of some process trees every ``every`` seconds, in a thread."""

    def __init__(self, roots: list[psutil.Process], every: float = 1.0) -> None:
        self.roots, self.every = roots, every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, pss(tree(self.roots)))


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total
