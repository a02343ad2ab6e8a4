"""Start the Dagster webserver, the Dagster daemon and the code-location runner.

    uv run entrypoint.py [all|webserver|daemon|runner] [--share DIR] [--host HOST] [--port PORT]
    entrypoint.py COMMAND [ARG...]     (in the image: runs COMMAND, e.g. a run's worker)

Each role is a child process in its own session; this process only starts them, forwards a
stop request (Ctrl-C / SIGTERM) to all of them, and makes sure none is left behind. If one
role dies, the others are stopped too and the exit status says so (a container orchestrator
then restarts the whole thing).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from runner.base import files, paths, process
from runner.dagster_side import instance
from runner.dagster_side.workspace import ensure_exists, local_address, without_servers
from runner.service import config
from runner.service.cli import setup_logging
from runner.service.lease import LEASE_NAME, Lease

log = logging.getLogger("entrypoint")

ROLES = ("webserver", "daemon", "runner")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="entrypoint.py", description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", default="all", choices=("all", *ROLES))
    parser.add_argument("--share", default=None, help="share folder (env RUNNER_SHARE, ./share)")
    parser.add_argument(
        "--host",
        default=os.environ.get("DAGSTER_WEBSERVER_HOST", "127.0.0.1"),
        help="webserver address (env DAGSTER_WEBSERVER_HOST, 127.0.0.1)",
    )
    parser.add_argument("--port", type=int, default=3000, help="webserver port (3000)")
    parser.add_argument(
        "--log-format",
        default=os.environ.get("RUNNER_LOG_FORMAT", "text"),
        choices=("text", "json"),
        help="json: every role logs one JSON object per line (env RUNNER_LOG_FORMAT, text)",
    )
    parser.add_argument(
        "--metrics",
        default=os.environ.get("RUNNER_METRICS"),
        help="the runner serves Prometheus metrics on PORT or HOST:PORT (env RUNNER_METRICS)",
    )
    return parser.parse_args(argv)


def role_command(role: str, args: argparse.Namespace, where: paths.Layout) -> list[str]:
    py = sys.executable
    if role == "webserver":
        fmt = ["--log-format", "json"] if args.log_format == "json" else []
        return [
            py,
            "-m",
            "runner",
            "webserver",
            "-h",
            args.host,
            "-p",
            str(args.port),
            "-w",
            str(where.workspace),
            *fmt,
        ]
    if role == "daemon":
        return [py, "-m", "runner", "daemon", "--share", str(where.share)]
    return [py, "-m", "runner", "serve", "--share", str(where.share)]


def webserver_url(args: argparse.Namespace) -> str:
    explicit = os.environ.get("DAGSTER_WEBSERVER_URL")
    if explicit:
        return explicit
    host = local_address(args.host)
    return f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-") and argv[0] not in ("all", *ROLES):
        # Any other command runs as given: Dagster's container launchers start a run in this
        # image with its own command (the file's python, the run boot script, its args).
        os.execvp(argv[0], argv)
    args = parse_args(argv)
    setup_logging(
        os.environ.get("RUNNER_LOG_LEVEL", "INFO"), name="entrypoint", fmt=args.log_format
    )
    process.raise_open_file_limit()  # the roles inherit it: a gRPC channel per location each
    where = config.layout(args.share)
    where.code_dir.mkdir(parents=True, exist_ok=True)
    where.dagster_home.mkdir(parents=True, exist_ok=True)
    config.ensure_instance_config(where)
    config.export_instance_env(where)  # for the roles, and for prepare() below
    roles = ROLES if args.role == "all" else (args.role,)
    isolation = config.isolation()  # stops here if RUNNER_ISOLATION=user cannot be had
    owner = config.share_owner()
    files.write_as(owner)  # workspace.yaml and the acknowledgements: the roles rewrite them
    if owner is not None:  # the webserver and the daemon write here as the service's user
        for folder in {where.dagster_home, where.instance_home}:
            os.chown(folder, *owner, follow_symlinks=False)
    if "runner" in roles and not Lease(where.dagster_home / LEASE_NAME).held():
        without_servers(where.workspace)  # no runner serves the share now
    else:
        ensure_exists(where.workspace)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop while waiting below
    shared = config.service_user() if isolation.on else None
    try:
        # Waits, retrying, for a database that is down.
        ready = instance.prepare(
            where.instance_home, shared_with=shared, database_url=config.database_url()
        )
    except KeyboardInterrupt:
        log.info("stopped while waiting for the Dagster instance")
        return 130

    env = dict(os.environ)
    env["RUNNER_SHARE"] = str(where.share)
    env.setdefault("DAGSTER_WEBSERVER_URL", webserver_url(args))
    env["PYTHONUNBUFFERED"] = "1"
    env[instance.READY_ENV] = instance.hand_over(where.instance_home, ready, config.database_url())
    env["RUNNER_LOG_FORMAT"] = args.log_format
    if isolation.on:  # the webserver and the daemon act on it too
        env["RUNNER_ISOLATION"] = "user"
    if args.metrics:
        env["RUNNER_METRICS"] = args.metrics

    stop_requested = threading.Event()
    signals_seen: list[tuple[int, float]] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals_seen.append((signum, time.monotonic()))
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # The daemon goes first so it follows workspace.yaml before the runner writes to it.
    order = [r for r in ("daemon", "webserver", "runner") if r in roles]
    children: dict[str, object] = {}
    for role in order:
        as_service = owner if role != "runner" else None  # the runner switches users itself
        children[role] = process.spawn(
            role_command(role, args, where),
            env=env,
            user=as_service,
            groups=[g for g in os.getgroups() if g != 0],
        )
        who = f", uid {owner[0]}" if as_service else ""
        log.info("started %s (pid %d%s)", role, children[role].pid, who)
    if "webserver" in roles:
        log.info("Dagster UI: http://%s:%d", args.host, args.port)
    log.info("drop PEP 723 files into %s", where.code_dir)

    exit_code = 0
    while not stop_requested.wait(0.5):
        dead = [(r, p) for r, p in children.items() if p.poll() is not None]
        if dead:
            role, proc = dead[0]
            log.error(
                "%s (pid %d) %s: stopping the others",
                role,
                proc.pid,
                process.describe_exit(proc.returncode),
            )
            exit_code = 1
            break
    if signals_seen:
        log.info(
            "%s received: stopping %s", signal.Signals(signals_seen[0][0]).name, ", ".join(order)
        )

    # A second signal during shutdown skips the grace periods. One Ctrl-C can arrive twice
    # (from the terminal, and forwarded by `uv run`): a repeat within a second is the same.
    def force(signum: int, _frame: object) -> None:
        if signals_seen and time.monotonic() - signals_seen[0][1] < 1.0:
            return
        for proc in children.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    signal.signal(signal.SIGINT, force)
    signal.signal(signal.SIGTERM, force)
    started = time.monotonic()
    # The runner stops its code servers itself (about 10 s at most); the others are quicker.
    graces = {"runner": 12.0, "webserver": 8.0, "daemon": 8.0}
    stoppers = [
        threading.Thread(
            target=process.stop, args=(proc,), kwargs={"name": role, "grace": graces[role]}
        )
        for role, proc in children.items()
    ]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    log.info("all stopped in %.1fs", time.monotonic() - started)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
