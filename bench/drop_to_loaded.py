"""Drop-to-loaded latency of the runner, next to a bare ``dagster api grpc`` start.

    uv run bench/drop_to_loaded.py [--files N] [--modes warm/user,warm/none,cold/user,cold/none]
    uv run bench/drop_to_loaded.py --modes warm/user,cold/user,docker/user   # containers too

Starts the whole service (webserver, daemon, runner) on a temporary share, warms the uv cache
and one environment, then drops files one at a time and times each from the moment the file
is in place to the moment GraphQL reports its location LOADED, as the UI would see it:
  - "same env": files whose metadata matches an environment already built;
  - "new env":  files with new metadata (a new environment, built from the warm uv cache).
The baseline, in the same run and environment: a bare ``dagster api grpc`` process, from
spawn to answering a ping (and to having loaded the file), and the same started through the
runner's boot script (its Reload and dropped-definitions hooks). Each mode is measured on a
service of its own: how servers start (warm: forked from a template; cold) and who locations
run as (user: a user of their own, as root; none: the runner's user, RUNNER_ISOLATION=none);
``docker`` runs every server in a container of its own (RUNNER_SERVERS=docker, cold starts),
from the tests' slim server image (built once, on the local Docker engine).
Also prints the memory (PSS, RSS) of one location's server at rest.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import bare_start, env_python, script

from tests import docker_images
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


def measure(root: Path, mode: str, files: int) -> dict[str, Any]:
    """The runner in ``mode`` (``starts/isolation``): drop files, time them, look at a server."""
    starts, isolation = mode.split("/")
    share = root / f"share-{starts}-{isolation}{'' if files else '-prebuild'}"
    share.mkdir()
    share.chmod(0o755)
    env = {"RUNNER_STARTS": starts, "RUNNER_ISOLATION": isolation}
    if starts == "docker":
        env.update(
            RUNNER_STARTS="cold",
            RUNNER_SERVERS="docker",
            RUNNER_SERVER_IMAGE=docker_images.build_server_image(),
        )
    service = Service(share, root / "state", log=share.with_suffix(".log"), env=env)
    try:
        wait_for("the webserver", lambda: service.locations() is not None, timeout=120)
        code = service.code_dir
        code.mkdir(parents=True, exist_ok=True)
        first = time_to_loaded(service, code / "warmup.py", script(["number_0"]))
        if not files:
            return {"first": first}
        same = [
            time_to_loaded(service, code / f"same_{i}.py", script([f"number_{i}"]))
            for i in range(files)
        ]
        meta = [f'# [tool.bench]\n# n = "{starts}{isolation}{i}"\n' for i in range(files)]
        new = [
            time_to_loaded(service, code / f"new_{i}.py", script([f"n_{i}"], extra_meta=m))
            for i, m in enumerate(meta)
        ]
        log = service.log_text()
        serving = r"serving same_\d+ on (?:port \d+|socket \S+) \(pid (\d+)\)"
        pids = [int(p) for p in re.findall(serving, log)]
        time.sleep(2)  # at rest
        if starts == "docker":  # the container's init: its child is the server
            pids = [psutil.Process(pid).children()[0].pid for pid in pids]
        memory = [psutil.Process(pid).memory_full_info() for pid in pids]
        python = env_python(pids[0])
    finally:
        service.stop()
    return {
        "first": first,
        "same": same,
        "new": new,
        "python": python,
        "pss": statistics.median(m.pss for m in memory),
        "rss": statistics.median(m.rss for m in memory),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5, help="files per case (default 5)")
    parser.add_argument(
        "--modes",
        default="warm/user,warm/none,cold/user,cold/none",
        help="RUNNER_STARTS/RUNNER_ISOLATION pairs to measure",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # locations' users pass through to their environments and files
        modes = args.modes.split(",")
        measure(root, modes[0], 0)  # builds the environment: every mode's first file finds it
        runs = {mode: measure(root, mode, args.files) for mode in modes}
        python, file = next(iter(runs.values()))["python"], root / "bare.py"
        file.write_text(script(["number_0"]))
        bare, booted = [], []
        for _ in range(args.files):  # interleaved, so both see the same machine
            bare.append(bare_start(python, file))
            booted.append(bare_start(python, file, boot=True))

    load = statistics.median(b.loaded for b in bare)
    mib = 1024 * 1024
    print(f"drop to LOADED, {args.files} files per case")
    print(f"  {'case':<48}{'median':>8}{'min':>8}{'max':>8}")
    rows = []
    for mode, run in runs.items():
        rows += [
            (f"runner ({mode}), first file of the service", [run["first"]]),
            (f"runner ({mode}), same env (env already built)", run["same"]),
            (f"runner ({mode}), new env (warm uv cache)", run["new"]),
        ]
    rows += [
        ("bare dagster api grpc: spawn -> ping", [b.ping for b in bare]),
        ("bare dagster api grpc: spawn -> file loaded", [b.loaded for b in bare]),
        ("  the same through the runner's boot script", [b.loaded for b in booted]),
    ]
    for label, values in rows:
        print(
            f"  {label:<48}{statistics.median(values):>7.2f}s{min(values):>7.2f}s"
            f"{max(values):>7.2f}s"
        )
    for mode, run in runs.items():
        same = statistics.median(run["same"])
        print(
            f"{mode}: same env {same / load:.2f}x a bare spawn -> file loaded; one "
            f"location's server at rest: {run['pss'] / mib:.1f} MiB PSS, "
            f"{run['rss'] / mib:.0f} MiB RSS"
        )
    print(f"bare server after loading: {statistics.median(b.rss for b in bare) / mib:.0f} MiB RSS")


if __name__ == "__main__":
    main()
