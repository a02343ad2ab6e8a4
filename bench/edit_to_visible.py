"""Edit -> new definitions visible, and whether the UI ever saw the location unavailable.

    uv run bench/edit_to_visible.py [--swaps 20]

Serves one file, then saves a new version of it (temp file + rename, as editors do) N times,
each time waiting until GraphQL lists the new asset. Meanwhile a poller queries the location
every 100 ms as an open UI page would, and counts the answers in which it was missing, not
LOADED, or in error. Baseline in the same run: a bare ``dagster api grpc`` start (spawn ->
ping) in the same environment, the floor for any reload that starts a new process.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import bare_start, header, row, script

from tests.service import Service, drop, wait_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        service = Service(root / "share", root / "state", log=root / "service.log")
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
            for i in range(1, args.swaps + 1):
                drop(path, script([f"v{i}"]))
                saved = time.perf_counter()
                wait_for(f"v{i}", lambda i=i: service.asset_keys("edited") == [f"v{i}"],
                         timeout=120, every=0.05)  # fmt: skip
                times.append(time.perf_counter() - saved)
            stop.set()
            poller.join()
            pid = service.server_pids("edited")[-1]
            python = Path(psutil.Process(pid).cmdline()[0])
            bare = [bare_start(python, path).ping for _ in range(5)]
            log = service.log_text()
        finally:
            service.stop()
        daemon = [float(x) for x in re.findall(r"published: .*; daemon ([\d.]+)s", log)[2:]]

    print(header(f"edit -> new definitions visible in GraphQL ({args.swaps} swaps)"))
    print(row("runner: save -> new asset listed", times))
    print(row("bare dagster api grpc: spawn -> ping", bare))
    print(f"GraphQL answers that saw the location unavailable during the swaps: "
          f"{unavailable[0]} of {queries[0]}")  # fmt: skip
    print(row("daemon: workspace.yaml written -> daemon reloaded", daemon))
    print("  (stock dagster-daemon: up to 60 s, RELOAD_WORKSPACE_INTERVAL)")
    print(
        "runner over a bare server start: "
        f"{statistics.median(times) / statistics.median(bare) - 1:+.0%}"
    )


if __name__ == "__main__":
    main()
