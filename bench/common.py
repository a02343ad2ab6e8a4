"""Helpers shared by the benchmarks (they drive the real service, like the tests)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dagster._grpc.client import DagsterGrpcClient  # noqa: E402

from runner import process  # noqa: E402
from runner.server import free_port  # noqa: E402
from tests.service import asset_file as script  # noqa: E402, F401 - the benches' files


@dataclass(frozen=True)
class BareStart:
    ping: float  # seconds from spawn to the first answered ping
    loaded: float  # seconds from spawn to the file loaded (ListRepositories answered)
    rss: int  # bytes, after loading


def bare_start(python: Path, file: Path) -> BareStart:
    """Start a bare ``dagster api grpc`` for ``file`` (the hand-made way) and time it."""
    port = free_port("127.0.0.1")
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    started = time.perf_counter()
    proc = process.spawn(
        [str(python), "-m", "dagster", "api", "grpc", "--python-file", str(file),
         "--working-directory", str(file.parent), "--host", "127.0.0.1", "--port", str(port),
         "--lazy-load-user-code"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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


def row(label: str, values: list[float], unit: str = "s") -> str:
    return (
        f"  {label:<48}{statistics.median(values):>8.2f}{unit}{min(values):>8.2f}{unit}"
        f"{max(values):>8.2f}{unit}"
    )


def header(title: str) -> str:
    return f"{title}\n  {'':<48}{'median':>9}{'min':>9}{'max':>9}"
