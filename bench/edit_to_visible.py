"""Edit -> new definitions visible, and whether the UI ever saw the location unavailable.

    uv run bench/edit_to_visible.py [--swaps 20] [--starts warm,cold]

Serves one file, then saves a new version of it (temp file + rename, as editors do) N times,
each time waiting until GraphQL lists the new asset. Meanwhile a poller queries the location
every 100 ms as an open UI page would, and counts the answers in which it was missing, not
LOADED, or in error. Baseline in the same run: a bare ``dagster api grpc`` start (spawn ->
ping) in the same environment, the floor for any reload that starts a new interpreter. Each
server start mode (warm: forked from a template; cold) runs on its own service.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import bare_start, env_python, header, row, script

from tests.service import Service, drop, wait_for


def measure(root: Path, starts: str, swaps: int) -> dict[str, Any]:
    """The runner with RUNNER_STARTS=``starts``: ``swaps`` edits of one served file."""
    log = root / f"service-{starts}.log"
    service = Service(
        root / f"share-{starts}", root / "state", log=log, env={"RUNNER_STARTS": starts}
    )
    try:
        path = service.code_dir / "edited.py"
        drop(path, script(["v0"]))
        service.wait_loaded("edited", timeout=300)

        queries, unavailable, stop = [0], [0], threading.Event()

        def poll() -> None:
            while not stop.is_set():
                entry = service.locations().get("edited")
                queries[0] += 1
                error = service.error_of("edited")
                if entry is None or entry["loadStatus"] != "LOADED" or error:
                    unavailable[0] += 1
                time.sleep(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        times = []
        for i in range(1, swaps + 1):
            drop(path, script([f"v{i}"]))
            saved = time.perf_counter()
            wait_for(
                f"v{i}",
                lambda i=i: service.asset_keys("edited") == [f"v{i}"],
                timeout=120,
                every=0.05,
            )
            times.append(time.perf_counter() - saved)
        stop.set()
        poller.join()
        pid = service.server_pids("edited")[-1]
        python = env_python(pid)
    finally:
        service.stop()
    published = re.findall(r"published: .*; daemon ([\d.]+)s", log.read_text())
    daemon = [float(x) for x in published[2:]]
    return {
        "times": times,
        "python": python,
        "daemon": daemon,
        "unavailable": unavailable[0],
        "queries": queries[0],
        "path": path,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--starts", default="warm,cold", help="modes to measure (RUNNER_STARTS)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        Path(tmp).chmod(0o711)  # locations' users pass through to their environments and files
        runs = {mode: measure(Path(tmp), mode, args.swaps) for mode in args.starts.split(",")}
        first = next(iter(runs.values()))
        bare = [bare_start(first["python"], first["path"]).ping for _ in range(5)]

    print(header(f"edit -> new definitions visible in GraphQL ({args.swaps} swaps)"))
    for mode, run in runs.items():
        print(row(f"runner ({mode}): save -> new asset listed", run["times"]))
    print(row("bare dagster api grpc: spawn -> ping", bare))
    for mode, run in runs.items():
        print(
            f"{mode}: GraphQL answers that saw the location unavailable during the swaps: "
            f"{run['unavailable']} of {run['queries']}; over a bare server start: "
            f"{statistics.median(run['times']) / statistics.median(bare) - 1:+.0%}"
        )
        print(row(f"{mode}: workspace.yaml written -> daemon reloaded", run["daemon"]))
    print("  (stock dagster-daemon: up to 60 s, RELOAD_WORKSPACE_INTERVAL)")


if __name__ == "__main__":
    main()
