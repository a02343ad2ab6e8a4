"""Many locations on one machine: cold start, memory, latency and idle CPU, next to the same
files served the usual hand-made way (one ``dagster code-server start`` per file).

    uv run bench/scale.py [--files 50] [--sets 5] [--idle 60] [--share-files 10000]

1. Warms the uv cache: builds each dependency set once in a scratch store, then drops it.
2. Runner, cold start: FILES files (SETS distinct dependency sets) already on the share and
   no environment built. Time from starting the entrypoint to every location LOADED in
   GraphQL, peak memory of the whole service while it starts, memory per location at rest.
3. With FILES locations serving: drop -> LOADED and edit -> new asset visible, medians.
4. Idle CPU of the runner process (and of the whole service) over IDLE seconds; then again
   with SHARE_FILES more files (helper modules in their own folders) on the share.
   Then the restart again with RUNNER_STARTS=cold (every server a fresh interpreter).
5. Baseline, same files, same environments: one ``dagster code-server start`` per file;
   once every server answers, a webserver and a daemon over a workspace.yaml listing them
   (the order a careful hand-made setup needs). Same figures.

Memory is PSS (proportional set size): pages shared between processes are split among
them, so sums over processes are what the machine really spends.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml
from common import (
    MIB,
    PeakMemory,
    by_role,
    cpu_seconds,
    env_python,
    is_runner_server,
    is_template,
    isolation,
    json_option,
    machine,
    median,
    pss,
    report,
    tree,
)
from dagster import deserialize_value

from runner.base import process
from runner.dagster_side import instance
from runner.dagster_side.internals import DagsterGrpcClient, SerializableErrorInfo
from runner.envs import env as envs
from runner.servers.server import free_port
from runner.share import script
from tests.service import ROOT, Service, WebClient, drop, wait_for

#: Small real packages, one per dependency set beyond the first (distribution -> module).
EXTRAS = {
    "humanize": "humanize",
    "tabulate": "tabulate",
    "toolz": "toolz",
    "more-itertools": "more_itertools",
    "python-slugify": "slugify",
    "wcwidth": "wcwidth",
    "pyparsing": "pyparsing",
}


def dependency_sets(count: int) -> list[tuple[str, ...]]:
    extras = list(EXTRAS)
    return [()] + [(extras[i],) for i in range(count - 1)]


def pipeline(index: int, deps: tuple[str, ...], revision: int = 0) -> str:
    """A realistic small file: its dependencies imported, three assets, a job."""
    listed = ", ".join(f'"{d}"' for d in ("dagster", *deps))
    imports = "".join(f"import {EXTRAS[d]}  # noqa: F401\n" for d in deps)
    names = [f"asset_{index}_{k}_r{revision}" for k in range(3)]
    body = "".join(f"@dg.asset\ndef {n}() -> int:\n    return 1\n\n\n" for n in names)
    return (
        f'# /// script\n# requires-python = ">=3.11"\n# dependencies = [{listed}]\n# ///\n'
        f"import dagster as dg\n{imports}\n\n{body}"
        f"defs = dg.Definitions(assets=[{', '.join(names)}],\n"
        f"                      jobs=[dg.define_asset_job('job_{index}')])\n"
    )


def loaded_names(client: WebClient) -> set[str]:
    return {
        name
        for name, entry in client.locations().items()
        if (entry.get("locationOrLoadError") or {}).get("__typename") == "RepositoryLocation"
    }


@dataclass
class Startup:
    first: float  # seconds from start to the first location LOADED
    all: float  # ... to every location LOADED
    peak_pss: int


def wait_all_loaded(
    client: WebClient, names: set[str], started: float, label: str
) -> tuple[float, float]:
    first: list[float] = []
    last_said = [time.perf_counter()]

    def check() -> bool:
        done = loaded_names(client) & names
        if done and not first:
            first.append(time.perf_counter() - started)
        if time.perf_counter() - last_said[0] > 15:
            print(
                f"  ... {label}: {len(done)}/{len(names)} loaded after "
                f"{time.perf_counter() - started:.0f}s",
                file=sys.stderr,
            )
            last_said[0] = time.perf_counter()
        return done == names

    wait_for(f"all {len(names)} locations LOADED ({label})", check, timeout=1200, every=0.5)
    return first[0], time.perf_counter() - started


@dataclass
class AtRest:
    servers: int  # PSS of the code servers (proxy + child for code-server start; templates)
    webserver: int
    daemon: int
    runner: int
    total: int
    server_count: int
    templates: int  # of which warm-start templates (one per environment)


def at_rest(procs: list[psutil.Process], is_server: Callable[[str], bool]) -> AtRest:
    """Memory by role: the templates and the servers they fork count as the locations'
    servers."""
    roles = by_role(procs, is_server)
    templates = 0
    for proc in roles["servers"]:
        try:
            templates += is_template(" ".join(proc.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return AtRest(
        servers=pss(roles["servers"]),
        webserver=pss(roles["webserver"]),
        daemon=pss(roles["daemon"]),
        runner=pss(roles["runner"] + roles["entrypoint"]),
        total=pss(procs),
        server_count=len(roles["servers"]),
        templates=templates,
    )


def idle_cpu(*groups: list[psutil.Process], seconds: float) -> list[float]:
    """CPU of each group of processes over the same ``seconds``, in % of one core."""
    before, started = [cpu_seconds(g) for g in groups], time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - started
    return [100 * (cpu_seconds(g) - b) / wall for g, b in zip(groups, before, strict=True)]


def find(procs: list[psutil.Process], fragment: str) -> psutil.Process:
    for proc in procs:
        try:
            if fragment in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            pass
    raise LookupError(fragment)


def warm_uv_cache(root: Path, texts: list[str]) -> float:
    started = time.perf_counter()
    store = envs.EnvStore(root / "warm-store")
    for text in texts:
        metadata = script.parse_metadata(text)
        assert metadata is not None
        store.build(envs.spec_for(metadata))
    shutil.rmtree(root / "warm-store")
    return time.perf_counter() - started


# --- the runner ---------------------------------------------------------------------------


@dataclass
class RunnerResult:
    cold: Startup  # no environment built yet
    restart: Startup  # environments built by the cold start
    restart_cold: Startup  # the same with RUNNER_STARTS=cold
    rest: AtRest
    drop: list[float]
    edit: list[float]
    publish_daemon: list[float]
    publish_webserver: list[float]
    idle_runner: float
    idle_service: float
    idle_runner_big_share: float
    idle_service_big_share: float
    idle_roles: dict[str, float]  # % of one core by role, with the big share
    cold_files: int  # files the RUNNER_STARTS=cold restart served
    pythons: dict[str, Path]  # file -> the environment's python that served it


def bench_runner(root: Path, files: dict[str, str], args: argparse.Namespace) -> RunnerResult:
    share, code = root / "share", root / "share" / "code_location"
    code.mkdir(parents=True)
    for name, text in files.items():
        (code / f"{name}.py").write_text(text)
    old = time.time() - 60  # already stable: the cold start is about serving, not waiting
    for path in code.iterdir():
        os.utime(path, (old, old))

    cold, service = _start(share, root, "runner-cold", set(files))
    service.stop(signal.SIGTERM, timeout=60)
    restart, service = _start(share, root, "runner-restart", set(files))
    try:
        entry = psutil.Process(service.proc.pid)
        time.sleep(20)  # let start-up garbage settle
        procs = tree([entry])
        rest = at_rest(procs, is_runner_server)
        starting = r"starting (\S+) on (?:port \d+|socket \S+) \(pid (\d+)"
        started = re.findall(starting, service.log_text())
        pythons = {
            name: env_python(int(pid)) for name, pid in started if psutil.pid_exists(int(pid))
        }

        # Latency with every location serving.
        deps0 = pipeline(0, ()).split("# ///\n")[0]  # metadata of an environment in use
        drops = []
        for k in range(args.samples):
            name = f"dropped_{k}"
            text = pipeline(1000 + k, ())
            assert text.startswith(deps0)
            drop(code / f"{name}.py", text)
            t0 = time.perf_counter()
            wait_for(f"{name} LOADED", lambda n=name: n in loaded_names(service), every=0.05)
            drops.append(time.perf_counter() - t0)
        edits = []
        for name in list(files)[: args.samples]:
            index = int(name.split("_")[1])
            deps = dependency_sets(args.sets)[index % args.sets]
            drop(code / f"{name}.py", pipeline(index, deps, revision=1))
            t0 = time.perf_counter()
            wanted = f"asset_{index}_0_r1"
            wait_for(
                f"{name} revision 1",
                lambda n=name, w=wanted: w in service.asset_keys(n),
                every=0.05,
            )
            edits.append(time.perf_counter() - t0)
        published = re.findall(
            r"published: .*; daemon ([\d.]+)s, webserver ([\d.]+)s", service.log_text()
        )[-2 * args.samples :]

        time.sleep(10)
        procs = tree([entry])
        runner = find(procs, "runner serve")
        print(f"  runner: idle for {args.idle:.0f}s", file=sys.stderr)
        idle_runner, idle_service = idle_cpu([runner], procs, seconds=args.idle)

        for i in range(args.share_files):
            folder = code / "archive" / f"part_{i // 100:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"module_{i}.py").write_text(f"VALUE = {i}\n")
        time.sleep(15)  # admitted: stable, read once
        print(f"  runner: idle with {args.share_files} more files", file=sys.stderr)
        procs = tree([entry])
        roles = by_role(procs, is_runner_server)
        names = list(roles)
        big_runner, big_service, *per_role = idle_cpu(
            [runner], procs, *(roles[r] for r in names), seconds=args.idle
        )
        idle_roles = dict(zip(names, per_role, strict=True))
    finally:
        service.stop(signal.SIGTERM, timeout=60)
    for path in code.glob("dropped_*.py"):  # the same files as before
        path.unlink()
    # Cold servers take twice the memory: as many as fit in half of what is free now.
    cold_files = min(len(files), args.cold_files or len(files))
    for name in list(files)[cold_files:]:
        (code / f"{name}.py").unlink()
    kept = set(list(files)[:cold_files])
    restart_cold, service = _start(share, root, "runner-restart-cold", kept, cold=True)
    service.stop(signal.SIGTERM, timeout=60)
    return RunnerResult(
        cold,
        restart,
        restart_cold,
        rest,
        drops,
        edits,
        [float(d) for d, _ in published],
        [float(w) for _, w in published],
        idle_runner,
        idle_service,
        big_runner,
        big_service,
        idle_roles,
        cold_files,
        pythons,
    )


def _start(
    share: Path, root: Path, label: str, names: set[str], *, cold: bool = False
) -> tuple[Startup, Service]:
    started = time.perf_counter()
    service = Service(
        share,
        root / "state",
        log=root / f"{label}.log",
        env={"RUNNER_STARTS": "cold" if cold else "warm"},
    )
    try:
        with PeakMemory([psutil.Process(service.proc.pid)]) as peak:
            wait_for("the webserver", lambda: service.locations() is not None, timeout=300)
            first, all_loaded = wait_all_loaded(service, names, started, label)
    except BaseException:
        service.stop(signal.SIGTERM, timeout=60)
        raise
    print(f"  {label}: all {len(names)} LOADED after {all_loaded:.1f}s", file=sys.stderr)
    return Startup(first, all_loaded, peak.peak), service


# --- the hand-made baseline ------------------------------------------------------------------


@dataclass
class BaselineResult:
    startup: Startup
    rest: AtRest
    idle_service: float


def answers(port: int) -> bool:
    """The server on ``port`` has loaded its file (the proxy answers for its child)."""
    try:
        reply = DagsterGrpcClient(port=port, host="127.0.0.1").list_repositories()
    except Exception:
        return False
    return not isinstance(deserialize_value(reply), SerializableErrorInfo)


def bench_baseline(
    root: Path, pythons: dict[str, Path], args: argparse.Namespace
) -> BaselineResult:
    home, code = root / "baseline-home", root / "share" / "code_location"
    home.mkdir()
    shutil.copy(ROOT / "share" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    instance.prepare(home)  # servers started together must not all create the SQLite storage
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log = open(root / "baseline.log", "wb")  # closed below
    procs: dict[str, subprocess.Popen] = {}
    roots: list[psutil.Process] = []
    ports = {name: free_port("127.0.0.1") for name in pythons}
    started = time.perf_counter()
    try:
        with PeakMemory(roots) as peak:
            for name, python in pythons.items():
                file = code / f"{name}.py"
                procs[name] = process.spawn(
                    [
                        str(python),
                        "-m",
                        "dagster",
                        "code-server",
                        "start",
                        "-f",
                        str(file),
                        "--working-directory",
                        str(code),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(ports[name]),
                        "--location-name",
                        name,
                    ],
                    env=env,
                    cwd=code,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                roots.append(psutil.Process(procs[name].pid))
            for name, port in ports.items():
                wait_for(f"code server {name}", lambda p=port: answers(p), timeout=1200)
            workspace = home / "workspace.yaml"
            workspace.write_text(
                yaml.safe_dump(
                    {
                        "load_from": [
                            {"grpc_server": {"host": "127.0.0.1", "port": p, "location_name": n}}
                            for n, p in ports.items()
                        ]
                    }
                )
            )
            web_port = free_port("127.0.0.1")
            for role, argv in (
                (
                    "webserver",
                    [
                        "-m",
                        "dagster_webserver",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(web_port),
                        "-w",
                        str(workspace),
                    ],
                ),
                ("daemon", ["-m", "dagster._daemon", "run", "-w", str(workspace)]),
            ):
                procs[role] = process.spawn(
                    [sys.executable, *argv], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT
                )
                roots.append(psutil.Process(procs[role].pid))
            client = WebClient(f"http://127.0.0.1:{web_port}")
            wait_for("the baseline webserver", lambda: client.locations() is not None, timeout=300)
            first, all_loaded = wait_all_loaded(client, set(pythons), started, "code-server start")
        startup = Startup(first, all_loaded, peak.peak)
        time.sleep(20)
        everything = tree(roots)
        rest = at_rest(everything, lambda cmd: "code-server start" in cmd or " api grpc " in cmd)
        print(f"  code-server start: idle for {args.idle:.0f}s", file=sys.stderr)
        [idle] = idle_cpu(everything, seconds=args.idle)
    finally:
        for name, proc in procs.items():
            process.stop(proc, name=name, grace=20)
        log.close()
    return BaselineResult(startup, rest, idle)


# --- report -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--sets", type=int, default=5, help="distinct dependency sets")
    parser.add_argument("--idle", type=float, default=60, help="seconds per idle-CPU window")
    parser.add_argument("--share-files", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5, help="drops and edits to time")
    parser.add_argument(
        "--runner-only",
        action="store_true",
        help="no hand-made baseline (it would not fit beyond ~100 files); the baseline is "
        "the runner's restart with RUNNER_STARTS=cold",
    )
    parser.add_argument(
        "--cold-files",
        type=int,
        default=None,
        help="files the RUNNER_STARTS=cold restart serves (default: all, at most 100: a "
        "cold server takes twice the memory of a forked one)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    json_option(parser)
    args = parser.parse_args()
    assert 1 <= args.sets <= len(EXTRAS) + 1
    if args.cold_files is None:
        args.cold_files = min(args.files, 100)

    sets = dependency_sets(args.sets)
    files = {f"loc_{i:03d}": pipeline(i, sets[i % args.sets]) for i in range(args.files)}
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.chmod(0o711)  # locations' users pass through to their environments and files
    base: BaselineResult | None = None
    try:
        print(f"warming the uv cache ({args.sets} dependency sets)", file=sys.stderr)
        warm = warm_uv_cache(root, [pipeline(i, s) for i, s in enumerate(sets)])
        print("runner ...", file=sys.stderr)
        ours = bench_runner(root, files, args)
        if not args.runner_only:
            print("code-server start ...", file=sys.stderr)
            base = bench_baseline(root, {n: ours.pythons[n] for n in files}, args)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    with report(args) as figures:
        print_table(args, warm, ours, base)
        figures.update(figures_of(args, ours, base))


def figures_of(
    args: argparse.Namespace, ours: RunnerResult, base: BaselineResult | None
) -> dict[str, object]:
    n, mib = args.files, lambda b: round(b / MIB, 1)
    figures: dict[str, object] = {
        "files": n,
        "loaded": n,  # every start above waited for all of them LOADED, or failed
        "start_to_loaded_s": round(ours.restart.all, 2),
        "service_mib": mib(ours.rest.total),
        "pss_mib_per_location": mib(ours.rest.servers / n),
        "idle_cpu_pct": round(ours.idle_runner_big_share, 2),
        "drop_to_loaded_s": median(ours.drop),
        "edit_to_visible_s": median(ours.edit),
        "sets": args.sets,
        "share_files": args.share_files,
        "first_start_to_loaded_s": round(ours.cold.all, 2),  # environments built first
        "start_to_first_loaded_s": round(ours.restart.first, 2),
        "peak_service_mib": mib(max(ours.cold.peak_pss, ours.restart.peak_pss)),
        "rest_mib": {
            "servers": mib(ours.rest.servers),
            "webserver": mib(ours.rest.webserver),
            "daemon": mib(ours.rest.daemon),
            "runner_and_entrypoint": mib(ours.rest.runner),
        },
        "processes": ours.rest.server_count,
        "templates": ours.rest.templates,
        "idle_cpu_pct_locations_only": round(ours.idle_runner, 2),
        "idle_cpu_pct_by_role": {r: round(v, 2) for r, v in ours.idle_roles.items()},
        "idle_cpu_pct_service": round(ours.idle_service_big_share, 2),
        "baseline": {
            "what": "the runner's restart with RUNNER_STARTS=cold",
            "files": ours.cold_files,
            "start_to_loaded_s": round(ours.restart_cold.all, 2),
        },
    }
    if base is not None:
        figures["baseline_code_server_start"] = {
            "files": n,
            "start_to_loaded_s": round(base.startup.all, 2),
            "service_mib": mib(base.rest.total),
            "pss_mib_per_location": mib(base.rest.servers / n),
            "idle_cpu_pct_service": round(base.idle_service, 2),
        }
    return figures


def print_table(
    args: argparse.Namespace, warm: float, ours: RunnerResult, base: BaselineResult | None
) -> None:
    n = args.files
    print(f"{n} files, {args.sets} dependency sets; {machine()}")
    print(f"isolation: {isolation()}")
    print(
        f"(uv cache warmed in {warm:.0f}s; the runner then builds its {args.sets} "
        "environments from it" + (", the baseline reuses them)" if base else ")")
    )
    print(f"  {'':<52}{'runner':>12}{'code-server' if base else '':>14}")

    def line(label: str, ours_value: str, base_value: str = "") -> None:
        print(f"  {label:<52}{ours_value:>12}{base_value if base else '':>14}")

    def b(value: Callable[[BaselineResult], str]) -> str:
        return value(base) if base else ""

    line("cold start (envs built first) -> first LOADED", f"{ours.cold.first:.1f} s")
    line(f"cold start (envs built first) -> all {n} LOADED", f"{ours.cold.all:.1f} s")
    line(
        "start, envs built -> first location LOADED",
        f"{ours.restart.first:.1f} s",
        b(lambda x: f"{x.startup.first:.1f} s"),
    )
    line(
        f"start, envs built -> all {n} LOADED",
        f"{ours.restart.all:.1f} s",
        b(lambda x: f"{x.startup.all:.1f} s"),
    )
    c = ours.cold_files
    line(f"  the same, RUNNER_STARTS=cold, {c} files: first", f"{ours.restart_cold.first:.1f} s")
    line(f"  the same, RUNNER_STARTS=cold, {c} files: all", f"{ours.restart_cold.all:.1f} s")
    peak = max(ours.cold.peak_pss, ours.restart.peak_pss)
    line(
        "peak memory of the whole service (PSS)",
        f"{peak / MIB:.0f} MiB",
        b(lambda x: f"{x.startup.peak_pss / MIB:.0f} MiB"),
    )
    line(
        "at rest, whole service (PSS)",
        f"{ours.rest.total / MIB:.0f} MiB",
        b(lambda x: f"{x.rest.total / MIB:.0f} MiB"),
    )
    line(
        "at rest, per location: its server(s)",
        f"{ours.rest.servers / n / MIB:.1f} MiB",
        b(lambda x: f"{x.rest.servers / n / MIB:.1f} MiB"),
    )
    line(
        "at rest, per location: whole service / locations",
        f"{ours.rest.total / n / MIB:.1f} MiB",
        b(lambda x: f"{x.rest.total / n / MIB:.1f} MiB"),
    )
    line(
        "at rest: webserver",
        f"{ours.rest.webserver / MIB:.0f} MiB",
        b(lambda x: f"{x.rest.webserver / MIB:.0f} MiB"),
    )
    line(
        "at rest: daemon",
        f"{ours.rest.daemon / MIB:.0f} MiB",
        b(lambda x: f"{x.rest.daemon / MIB:.0f} MiB"),
    )
    line("at rest: runner + entrypoint", f"{ours.rest.runner / MIB:.0f} MiB", "-")
    line(
        "processes serving the locations",
        str(ours.rest.server_count),
        b(lambda x: str(x.rest.server_count)),
    )
    line("  of which warm-start templates", str(ours.rest.templates), "-")
    line(
        "idle CPU, whole service (% of one core)",
        f"{ours.idle_service:.1f} %",
        b(lambda x: f"{x.idle_service:.1f} %"),
    )
    if base:
        ratio = ours.rest.servers / base.rest.servers
        print(f"per-location memory, runner / code-server start: {ratio:.0%}")
    print(f"with {n} locations serving (runner), median of {args.samples}:")
    print(
        f"  drop -> LOADED                         {statistics.median(ours.drop):6.2f} s"
        f"  (min {min(ours.drop):.2f}, max {max(ours.drop):.2f})"
    )
    print(
        f"  edit -> new asset visible              {statistics.median(ours.edit):6.2f} s"
        f"  (min {min(ours.edit):.2f}, max {max(ours.edit):.2f})"
    )
    if ours.publish_daemon:
        print(
            f"  publish: daemon reloaded {statistics.median(ours.publish_daemon):.2f} s, "
            f"then webserver {statistics.median(ours.publish_webserver):.2f} s"
        )
    print("idle CPU of the runner process (% of one core):")
    print(
        f"  {n} locations                          {ours.idle_runner:6.2f} %"
        f"  (whole service {ours.idle_service:.1f} %)"
    )
    print(
        f"  {n} locations + {args.share_files} files            "
        f"{ours.idle_runner_big_share:6.2f} %  (whole service "
        f"{ours.idle_service_big_share:.1f} %)"
    )
    roles = ", ".join(f"{r} {v:.2f} %" for r, v in ours.idle_roles.items())
    print(f"  by role, with the {args.share_files} files: {roles}")


if __name__ == "__main__":
    main()
