"""Restart on the same share: how fast every location is back, reusing built environments.

    uv run bench/restart.py [--files 50] [--json]

Starts the service on a share holding N files (3 distinct dependency sets), waits until all
are LOADED, stops it (SIGTERM), starts it again and waits again; then once more with
``RUNNER_STARTS=cold`` (every server a fresh interpreter), the baseline of the same run.
Times are measured from starting the entrypoint. The first start builds the environments
(warm uv cache); the restarts find them built. Each restart's log gives its milestones.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from common import by_role, cpu_seconds, is_runner_server, json_option, report, script, tree

from tests.service import Service, wait_for

#: Milestones of a start, from the service's log: (label, pattern of the first line).
MILESTONES = (
    ("entrypoint: instance ready", r"entrypoint: instance ready"),
    ("runner: instance ready", r"runner: instance ready"),
    ("runner watching the share", r"runner: watching "),
    ("first template ready", r"template for \S+ ready"),
    ("first server starting", r"starting \S+ on "),
    ("first location published", r"published: [1-9]"),
)


def all_loaded(service: Service, names: list[str]) -> None:
    def loaded() -> bool:
        locations = service.locations() or {}
        return all(
            (locations.get(n, {}).get("locationOrLoadError") or {}).get("__typename")
            == "RepositoryLocation"
            for n in names
        )

    wait_for("all locations LOADED", loaded, timeout=900, every=0.1)


def milestones(log: str, started: float) -> dict[str, float]:
    """Seconds from ``started`` (epoch) to the first log line of each milestone."""
    found = {}
    for label, pattern in MILESTONES:
        for line in log.splitlines():
            if re.search(pattern, line):
                stamp = re.match(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)", line)
                if stamp:
                    when = datetime.fromisoformat(stamp.group(1).replace(",", "."))
                    found[label] = round(when.timestamp() - started, 2)
                break
    return found


def start(
    root: Path, names: list[str], label: str, env: dict[str, str]
) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """One start to all LOADED, then SIGTERM: seconds to LOADED, seconds to stop, the log's
    milestones, and the CPU seconds each role had spent by then."""
    log = root / f"{label}.log"
    epoch, spawned = time.time(), time.perf_counter()
    service = Service(root / "share", root / "state", log=log, env=env)
    try:
        wait_for("the webserver", lambda: service.locations() is not None, timeout=300)
        all_loaded(service, names)
        took = time.perf_counter() - spawned
        roles = by_role(tree([psutil.Process(service.proc.pid)]), is_runner_server)
        cpu = {role: round(cpu_seconds(procs), 1) for role, procs in roles.items()}
    finally:
        stopped = service.stop(signal.SIGTERM, timeout=60)
    return took, stopped, milestones(log.read_text(errors="replace"), epoch), cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the share and the logs")
    json_option(parser)
    args = parser.parse_args()
    names = [f"loc_{i}" for i in range(args.files)]
    root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    try:
        root.chmod(0o711)  # locations' users pass through to their environments and files
        code = root / "share" / "code_location"
        code.mkdir(parents=True)
        for i, name in enumerate(names):
            meta = f"# [tool.bench]\n# set = {i % 3}\n"
            (code / f"{name}.py").write_text(script([f"a{i}"], extra_meta=meta))
        old = time.time() - 60
        for path in code.iterdir():
            os.utime(path, (old, old))
        first = start(root, names, "first", {})
        warm = start(root, names, "restart", {"RUNNER_STARTS": "warm"})
        cold = start(root, names, "restart-cold", {"RUNNER_STARTS": "cold"})
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    with report(args) as figures:
        print(f"{args.files} locations, time from starting the entrypoint to all LOADED")
        for label, (took, stopped, _, _) in (
            ("first start (builds 3 envs)", first),
            ("restart (envs reused)", warm),
            ("restart, RUNNER_STARTS=cold (baseline)", cold),
        ):
            print(f"  {label:<44}{took:>7.1f}s")
            print(f"  {'  then SIGTERM -> everything stopped':<44}{stopped:>7.1f}s")
        print("restart (envs reused), from starting the entrypoint:")
        for label, seconds in warm[2].items():
            print(f"  {label:<44}{seconds:>7.1f}s")
        print("  CPU seconds by then: " + ", ".join(f"{r} {v:.1f}" for r, v in warm[3].items()))
        figures.update(
            files=args.files,
            restart_s=round(warm[0], 2),
            cold_restart_s=round(cold[0], 2),
            first_start_s=round(first[0], 2),
            restart_milestones_s=warm[2],
            restart_cpu_s=warm[3],
            cold_restart_cpu_s=cold[3],
        )


if __name__ == "__main__":
    main()
