"""Drop-to-loaded latency of the runner, next to a bare ``dagster api grpc`` start.

    uv run bench/drop_to_loaded.py [--files N]

Starts the whole service (webserver, daemon, runner) on a temporary share, warms the uv cache
and one environment, then drops files one at a time and times each from the moment the file
is in place to the moment GraphQL reports its location LOADED, as the UI would see it:
  - "same env": files whose metadata matches an environment already built;
  - "new env":  files with new metadata (a new environment, built from the warm uv cache).
The baseline, in the same run and environment: a bare ``dagster api grpc`` process, from
spawn to answering a ping (and to having loaded the file), and the same started through the
runner's boot script (its Reload and dropped-definitions hooks). Also prints the RSS of one
location's server process.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from common import bare_start, script

from tests.service import Service, drop, wait_for


def time_to_loaded(service: Service, path: Path, text: str) -> float:
    name = path.stem
    drop(path, text)
    dropped = time.perf_counter()
    wait_for(
        f"{name} LOADED",
        lambda: (e := service.locations().get(name)) and e["loadStatus"] == "LOADED",
        timeout=300,
        every=0.05,
    )
    return time.perf_counter() - dropped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5, help="files per case (default 5)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        service = Service(root / "share", root / "state", log=root / "service.log")
        try:
            wait_for("the webserver", lambda: service.locations() is not None, timeout=120)
            code = service.code_dir
            code.mkdir(parents=True, exist_ok=True)
            warm = time_to_loaded(service, code / "warmup.py", script(["number_0"]))
            same = [
                time_to_loaded(service, code / f"same_{i}.py", script([f"number_{i}"]))
                for i in range(args.files)
            ]
            new = [
                time_to_loaded(
                    service,
                    code / f"new_{i}.py",
                    script([f"number_{i}"], extra_meta=f"# [tool.bench]\n# n = {i}\n"),
                )
                for i in range(args.files)
            ]
            log = service.log_text()
            pid = int(re.findall(r"serving same_0 on port \d+ \(pid (\d+)\)", log)[-1])
            server = psutil.Process(pid)
            location_rss = server.memory_info().rss
            python = Path(server.cmdline()[0])
            bare, booted = [], []
            for _ in range(args.files):  # interleaved, so both see the same machine
                bare.append(bare_start(python, code / "same_0.py"))
                booted.append(bare_start(python, code / "same_0.py", boot=True))
        finally:
            service.stop()

    ping = statistics.median(b.ping for b in bare)
    load = statistics.median(b.loaded for b in bare)
    bare_rss = statistics.median(b.rss for b in bare)
    mib = 1024 * 1024
    print(f"drop to LOADED, {args.files} files per case (first file, cold env: {warm:.2f}s)")
    print(f"  {'case':<44}{'median':>8}{'min':>8}{'max':>8}")
    rows = [
        ("runner, same env (env already built)", same),
        ("runner, new env (built from warm uv cache)", new),
        ("bare dagster api grpc: spawn -> ping", [b.ping for b in bare]),
        ("bare dagster api grpc: spawn -> file loaded", [b.loaded for b in bare]),
        ("  the same through the runner's boot script", [b.loaded for b in booted]),
    ]
    for label, values in rows:
        print(
            f"  {label:<44}{statistics.median(values):>7.2f}s{min(values):>7.2f}s"
            f"{max(values):>7.2f}s"
        )
    overhead = statistics.median(same) / ping - 1
    print(
        f"runner overhead over a bare server answering a ping: {overhead:+.0%} (same env), "
        f"{statistics.median(new) / ping - 1:+.0%} (new env); over a bare server that has "
        f"loaded the file: {statistics.median(same) / load - 1:+.0%} (same env)"
    )
    print(
        f"RSS of one location's server: {location_rss / mib:.0f} MiB "
        f"(bare server after loading: {bare_rss / mib:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
