"""Helpers shared by the benchmarks (they drive the real service, like the tests)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from importlib.metadata import version
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


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object of the figures on stdout (the table goes to stderr)",
    )


@contextmanager
def report(args: argparse.Namespace) -> Iterator[dict]:
    """Where a bench prints its table and fills in its figures: with ``--json`` the table
    goes to stderr and the figures, with the machine and the isolation they ran with, are
    printed as one JSON object on stdout."""
    figures: dict = {}
    if not getattr(args, "json", False):
        yield figures
        return
    with redirect_stdout(sys.stderr):
        yield figures
    figures.setdefault("isolation", isolation())
    figures.setdefault("machine", machine())
    print(json.dumps(figures))


def isolation() -> str:
    """What the service decides here: as root, every location runs as a user of its own."""
    from runner.service import config

    return config.isolation().describe()


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), "
        f"{psutil.virtual_memory().total / 1024**3:.1f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, "
        f"Dagster {version('dagster')}, uv {version('uv')}"
    )


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def is_template(cmd: str) -> bool:
    return cmd.startswith("dagster-code-runner: template")


def is_runner_server(cmd: str) -> bool:
    """A server the runner started, cold or forked (its title says so)."""
    return cmd.startswith("dagster-code-runner: server") or "boot/codeserver.py" in cmd


def by_role(procs: list[psutil.Process], is_server: Callable[[str], bool]) -> dict[str, list]:
    """The service's processes by role; templates count with the servers they fork, a run's
    worker with the runner that started it."""
    roles: dict[str, list[psutil.Process]] = {
        "servers": [],
        "webserver": [],
        "daemon": [],
        "runner": [],
        "entrypoint": [],
    }
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if is_template(cmd) or is_server(cmd):
            roles["servers"].append(proc)
        elif "dagster_webserver" in cmd or "runner webserver" in cmd:
            roles["webserver"].append(proc)
        elif "daemon" in cmd:
            roles["daemon"].append(proc)
        elif "entrypoint.py" in cmd:
            roles["entrypoint"].append(proc)
        else:
            roles["runner"].append(proc)
    return roles
