"""Memory per location at rest, in one environment: cold starts, warm starts, warm + KSM.

    uv run bench/memory.py [--files 10] [--settle 600]

Serves N files of one environment (three assets and a job each), waits until every location
is LOADED and the service is idle, and divides the PSS of the processes serving them by N:
  - cold: RUNNER_STARTS=cold, each server a fresh interpreter (the baseline);
  - warm: each server forked from the environment's template (the template counts too);
  - warm + KSM: the same with the kernel's same-page merging running
    (``/sys/kernel/mm/ksm/run`` = 1, its other settings as found), measured once KSM has
    made two full scans since the servers came up; also the CPU of KSM's thread meanwhile.
Turning KSM on and off needs root and a kernel built with it; it is left as found. Memory is
PSS: pages shared between processes are split among them, so the sums are honest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import MIB, pss, tree
from scale import at_rest, dependency_sets, is_runner_server, is_template, loaded_names, pipeline

from tests.service import Service, wait_for

KSM = Path("/sys/kernel/mm/ksm")


def ksm_set(value: str) -> bool:
    try:
        (KSM / "run").write_text(value)
        return True
    except OSError:
        return False


def ksm_scans() -> int:
    return int((KSM / "full_scans").read_text())


def ksmd() -> psutil.Process | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "ksmd":
            return proc
    return None


def measure(root: Path, mode: str, files: int, settle: float) -> dict[str, float]:
    share = root / f"share-{mode}"
    code = share / "code_location"
    code.mkdir(parents=True)
    deps = dependency_sets(1)[0]
    old = time.time() - 60  # already stable
    for i in range(files):
        path = code / f"loc_{i}.py"
        path.write_text(pipeline(i, deps))
        os.utime(path, (old, old))
    starts = "cold" if mode == "cold" else "warm"
    service = Service(
        share, root / "state", log=root / f"{mode}.log", env={"RUNNER_STARTS": starts}
    )
    try:
        names = {f"loc_{i}" for i in range(files)}
        wait_for("every location LOADED", lambda: loaded_names(service) >= names, timeout=600)
        time.sleep(15)  # start-up garbage settles
        out: dict[str, float] = {}
        if mode == "warm+ksm":
            thread, since = ksmd(), time.perf_counter()
            cpu = sum(thread.cpu_times()[:2]) if thread else 0.0
            first = ksm_scans()
            wait_for("two full KSM scans", lambda: ksm_scans() >= first + 2, timeout=settle)
            out["settled"] = time.perf_counter() - since
            if thread:
                out["ksmd"] = 100 * (sum(thread.cpu_times()[:2]) - cpu) / out["settled"]
        procs = tree([psutil.Process(service.proc.pid)])
        rest = at_rest(procs, is_runner_server)
        servers = [
            p for p in procs if is_template(cmd := " ".join(p.cmdline())) or is_runner_server(cmd)
        ]
        out["per_location"] = rest.servers / files
        out["processes"] = rest.server_count
        out["median_process"] = statistics.median(pss([p]) for p in servers)
        out["total"] = rest.total
    finally:
        service.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10, help="locations (default 10)")
    parser.add_argument("--settle", type=float, default=600, help="seconds KSM may take")
    args = parser.parse_args()
    original = (KSM / "run").read_text().strip() if (KSM / "run").exists() else None
    modes = ["cold", "warm"]
    if original is not None and ksm_set(original):
        modes.append("warm+ksm")
    else:
        print("KSM: not measured (needs a Linux kernel with KSM, and root)", file=sys.stderr)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            Path(tmp).chmod(0o711)  # locations' users pass through to their files
            for mode in modes:
                if original is not None:
                    ksm_set("1" if mode == "warm+ksm" else "0")
                print(f"{mode} ...", file=sys.stderr)
                results[mode] = measure(Path(tmp), mode, args.files, args.settle)
    finally:
        if original is not None:
            ksm_set(original)
    print(f"{args.files} locations in one environment, at rest (PSS)")
    print(f"  {'':<14}{'per location':>14}{'per process':>14}{'processes':>11}{'service':>10}")
    for mode, r in results.items():
        print(
            f"  {mode:<14}{r['per_location'] / MIB:>10.1f} MiB{r['median_process'] / MIB:>10.1f}"
            f" MiB{r['processes']:>11.0f}{r['total'] / MIB:>6.0f} MiB"
        )
    if "warm+ksm" in results:
        r = results["warm+ksm"]
        print(
            f"KSM: two full scans took {r['settled']:.0f} s; its thread used "
            f"{r.get('ksmd', float('nan')):.1f} % of one core meanwhile "
            f"(pages_to_scan {(KSM / 'pages_to_scan').read_text().strip()}, "
            f"sleep_millisecs {(KSM / 'sleep_millisecs').read_text().strip()})"
        )
    cold = results["cold"]["per_location"]
    for mode in modes[1:]:
        print(f"{mode}: {results[mode]['per_location'] / cold:.0%} of cold starts per location")


if __name__ == "__main__":
    main()
