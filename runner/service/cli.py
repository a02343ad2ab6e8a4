"""``python -m runner``: the runner's own command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from runner.base import files, process
from runner.dagster_side import instance
from runner.isolation import identity
from runner.service import config

log = logging.getLogger("runner")


class _JsonLines(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["level"] = str(log_data.get("level", "")).lower()  # as Dagster writes it
        return log_data


class _TextLines(logging.Formatter):
    """Every line after a record's first is indented, and carriage returns are escaped, so
    text from the share (a file name with a newline, uv's or Dagster's output) can never
    pass for a log line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "\\r")
        return text.replace("\n", "\n    ")


def setup_logging(level: str = "INFO", *, name: str = "runner", fmt: str = "text") -> None:
    """One line per decision on stderr, for our loggers only (not Dagster's): readable, or
    one JSON object per line for log collectors (``fmt="json"``), with the keys Dagster's
    own JSON lines use (``event``, ``logger``, ``level``, ``timestamp``) and our ``role``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = _JsonLines(
            "{message}{name}{levelname}",
            style="{",
            rename_fields={"message": "event", "name": "logger", "levelname": "level"},
            static_fields={"role": name},
            timestamp=True,  # ISO 8601, UTC
        )
    else:
        formatter = _TextLines(
            f"%(asctime)s %(levelname)-7s {name}: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
        )
    handler.setFormatter(formatter)
    logging.captureWarnings(True)  # Dagster reports load errors as warnings: format them too
    for logger_name in ("runner", "entrypoint", "py.warnings"):
        logger = logging.getLogger(logger_name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def _serve(args: argparse.Namespace) -> None:
    from runner.service.lease import LEASE_NAME, Lease
    from runner.service.supervisor import Supervisor

    where = config.layout(args.share)
    where.dagster_home.mkdir(parents=True, exist_ok=True)
    config.ensure_instance_config(where)
    config.export_instance_env(where)
    isolation, service = config.isolation(), config.service_user()
    state = config.state_dir()
    if isolation.on:
        _prepare_state(state)
        log.info("%s", isolation.describe())
    else:
        log.warning("%s", isolation.describe())
    # Before any code server opens the instance; and what every environment needs to open it.
    # The entrypoint has done it just now when it started this runner.
    ready = instance.handed_over(
        where.instance_home, config.instance_handed_over(), config.database_url()
    ) or instance.prepare(
        where.instance_home,
        shared_with=service if isolation.on else None,
        database_url=config.database_url(),
    )
    settings = config.Settings(
        code_dir=where.code_dir,
        workspace_path=where.workspace,
        state_dir=state,
        webserver_url=args.webserver_url or config.webserver_url(),
        host=args.host,
        advertise_host=args.advertise_host,
        rescan_every=args.rescan_every,
        stable_for=args.stable_for,
        start_timeout=args.start_timeout,
        network_timeout=args.network_timeout,
        retire_grace=args.retire_grace,
        keep_last_good=args.on_failure == "keep-last-good",
        instance_home=where.instance_home,
        extra_requirements=ready.packages,
        server_log_format="json" if args.log_format == "json" else "colored",
        settings_dir=config.settings_dir(),
        pass_env=config.pass_env(),
        container_runs=config.container_runs(ready.launcher),
        warm_starts=args.starts == "warm",
        isolation=isolation,
        service=service,
        docker=config.docker_servers(where.code_dir) if args.servers == "docker" else None,
        k8s=config.k8s_servers(where.code_dir, where.code_dir.parent)
        if args.servers == "k8s"
        else None,
    )
    from runner.isolation import tenancy
    from runner.servers import server

    anyone = identity.Identity(2**31, 2**31)
    if (
        settings.isolated
        and settings.settings_dir
        and settings.settings_dir.is_dir()
        and (tenancy.blocked(settings.settings_dir, anyone, want="rx") is None)
    ):
        log.error(
            "RUNNER_SETTINGS_DIR (%s) is open to other users: every location can read "
            "every team's settings there; make it the runner's only (chmod 700)",
            settings.settings_dir,
        )
    if settings.use_sockets and not server.socket_fits(state / "servers"):
        raise SystemExit(
            f"runner: RUNNER_STATE_DIR ({state}) is too long for the code servers' Unix "
            f"sockets (at most {server.SOCKET_PATH_MAX} bytes in all)"
        )
    lease = Lease(where.dagster_home / LEASE_NAME)
    supervisor = Supervisor(settings, lease=lease)
    if args.metrics:
        from runner.base import metrics

        metrics.serve(args.metrics)

    def request_stop(signum: int, _frame: object) -> None:
        # Handlers record; the loop acts. A second signal exits at once (servers die with us).
        if supervisor.stopping:
            os._exit(128 + signum)
        log.info("%s received: stopping", signal.Signals(signum).name)
        supervisor.stop()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    from runner.share.watch import watch

    if not lease.acquire(supervisor.stop_requested):
        return  # stopped while waiting as a standby
    fence = _fence(settings, args.metrics)
    try:
        with watch(settings.code_dir, supervisor.changed, supervisor.written, mode=args.watch):
            supervisor.run()
    finally:
        if fence is not None:
            fence.open()
        lease.release()


def _open_files(role: str) -> None:
    """Every role holds a gRPC channel per location: raise the soft open-file limit, and
    say so where the hard limit keeps it low."""
    before, after = process.raise_open_file_limit()
    if after < 4096:
        log.warning(
            "%s: at most %d open files (hard limit); each location takes a few, so a few "
            "hundred locations need more: raise it (ulimit -Hn, or the container's nofile)",
            role,
            after,
        )
    elif after != before:
        log.debug("%s: open-file limit raised from %d to %d", role, before, after)


def _fence(settings: Any, metrics: str | None) -> Any:
    """Close the service's TCP ports to the locations' users (see :mod:`fence`), saying
    what stays open where it cannot."""
    if not settings.isolated:
        return None
    from runner.isolation.fence import Fence, local_port_range, targets

    wanted = targets(
        webserver_url=settings.webserver_url,
        metrics=metrics,
        servers_on_tcp=not settings.use_sockets,
        local_ports=local_port_range(),
    )
    fence = Fence(wanted, settings.isolation.ids.locations)
    why = fence.close()
    if why:
        log.warning("%s", why)
    return fence


def _prepare_state(state: Path) -> None:
    """The state folder as locations' users need it: they pass through it to their
    environment, scratch and server folders, and list none of it; the runner's own parts
    stay closed. Stops, saying why, where a folder above it or the runner's boot scripts
    are closed to them."""
    from runner.isolation import tenancy
    from runner.servers.server import BOOT

    tenancy.runner_folder(state)
    for part, mode in (("work", 0o711), ("servers", 0o711), ("runs", 0o711), ("last-good", 0o700)):
        tenancy.runner_folder(state / part, mode=mode)
    probe = identity.Identity(2**31, 2**31)  # no owner, no group: any location's user
    why = tenancy.blocked(state, probe, want="x") or tenancy.readable_code(BOOT, probe)
    if why:
        raise SystemExit(
            f"runner: locations run as users of their own, who cannot reach what they need: "
            f"{why}. Choose a RUNNER_STATE_DIR (and install the runner) where every user may "
            "pass, or set RUNNER_ISOLATION=none"
        )


def _daemon(args: argparse.Namespace) -> None:
    from runner.dagster_side import daemon
    from runner.dagster_side.workspace import ensure_exists

    where = config.layout(args.share)
    config.ensure_instance_config(where)
    config.export_instance_env(where)
    ensure_exists(where.workspace)
    if config.roles_isolated():
        instance.share_new_sqlite_files()
    daemon.run(where.workspace, log_format=args.log_format)


def _webserver(args: argparse.Namespace) -> None:
    from dagster_webserver.cli import cli as webserver

    from runner.dagster_side import reload

    reload.patch(follow=True)
    if config.roles_isolated():
        instance.share_new_sqlite_files()
    webserver(
        args=args.options, prog_name="dagster-webserver", auto_envvar_prefix="DAGSTER_WEBSERVER"
    )


def _status(args: argparse.Namespace) -> int:
    from runner.service import status

    where = config.layout(args.share)
    path = where.dagster_home / status.STATUS_NAME
    snapshot = status.read(path)
    if snapshot is None:
        message = f"no runner has run on {where.share} (no {path})"
        print(json.dumps({"running": False, "why": message}) if args.json else message)
        return 3
    if args.json:
        print(
            json.dumps(
                {"running": snapshot.running, "why": snapshot.why_not, **snapshot.data}, indent=1
            )
        )
    else:
        print(status.render(snapshot), end="")
    return 0 if snapshot.running else 3


def _lock(args: argparse.Namespace) -> int:
    from runner.service.lock import LockError, served_lock

    try:
        text = served_lock(config.layout(args.share), Path(args.file))
    except (LockError, OSError) as exc:
        print(f"runner lock: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _manifests(args: argparse.Namespace) -> int:
    from runner.service.manifests import ManifestError, render
    from runner.share import location_env

    where = config.layout(args.share)
    options = config.k8s_servers(where.code_dir, where.code_dir.parent)
    also = [*location_env.instance_variables(where.instance_home / "dagster.yaml")]
    try:
        text = render(
            where,
            [Path(f) for f in args.files],
            options,
            state_dir=config.state_dir(),
            settings=location_env.SettingsFiles([(where.code_dir, where.code_dir.name)]),
            inherited=sorted(location_env.inherited(os.environ, also=also)),
        )
    except (ManifestError, OSError) as exc:
        print(f"runner manifests: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def _setting(
    parser: argparse.ArgumentParser,
    flag: str,
    env: str,
    default: object,
    help: str,
    **kwargs: Any,
) -> None:
    """An option whose default comes from the environment variable ``env``, said in its help."""
    value = os.environ.get(env)
    convert = kwargs.get("type", str)
    parser.add_argument(
        flag,
        default=convert(value) if value else default,
        help=f"{help} (env {env}, default {default})",
        **kwargs,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("RUNNER_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        default=os.environ.get("RUNNER_LOG_FORMAT", "text"),
        choices=("text", "json"),
        help="json: one JSON object per line (env RUNNER_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="watch the share and serve every PEP 723 file in it")
    serve.add_argument("--share", help="folder holding code_location/ and dagster_home/")
    serve.add_argument("--webserver-url", help="reload this webserver (env DAGSTER_WEBSERVER_URL)")
    # fmt: off
    _setting(serve, "--host", "RUNNER_SERVER_HOST", "127.0.0.1",
             "address code servers listen on")
    _setting(serve, "--advertise-host", "RUNNER_ADVERTISE_HOST", None,
             "address written into workspace.yaml for the webserver and daemon to reach the "
             "code servers, when they run elsewhere; unset: the --host address")
    _setting(serve, "--rescan-every", "RUNNER_RESCAN_EVERY", 2.0,
             "full rescan period, seconds", type=float)
    _setting(serve, "--stable-for", "RUNNER_STABLE_FOR", 1.0,
             "a file counts once unchanged this long, seconds", type=float)
    _setting(serve, "--start-timeout", "RUNNER_START_TIMEOUT", 180.0,
             "a server must answer and load its file within this, seconds", type=float)
    _setting(serve, "--network-timeout", "RUNNER_NETWORK_TIMEOUT", 30.0,
             "a build waits this long on a host that does not answer, seconds", type=float)
    _setting(serve, "--retire-grace", "RUNNER_RETIRE_GRACE", 3600.0,
             "a replaced or deleted server may finish its runs this long before SIGKILL, "
             "seconds", type=float)
    _setting(serve, "--on-failure", "RUNNER_ON_FAILURE", "keep-last-good",
             "when a new version fails: keep serving the last good one and show the failure "
             "beside it, or show the failure in its place",
             choices=("keep-last-good", "show-error"))
    _setting(serve, "--starts", "RUNNER_STARTS", "warm", choices=("warm", "cold"),
             help="warm: fork code servers from a template per environment that has "
             "imported Dagster; cold: start each in a fresh interpreter")
    _setting(serve, "--servers", "RUNNER_SERVERS", "local",
             "where code servers run: processes here, containers on Docker, or Deployments "
             "on Kubernetes", choices=("local", "docker", "k8s"))
    _setting(serve, "--watch", "RUNNER_WATCH", "auto",
             "file events plus rescans, or rescans only; auto polls on network file systems",
             choices=("auto", "events", "poll"))
    _setting(serve, "--metrics", "RUNNER_METRICS", None,
             "serve Prometheus metrics on PORT (loopback) or HOST:PORT; unset: off")
    # fmt: on
    serve.set_defaults(func=_serve)

    daemon = sub.add_parser("daemon", help="Dagster's daemon, following workspace.yaml closely")
    daemon.add_argument("--share", help="folder holding dagster_home/")
    daemon.set_defaults(func=_daemon)

    webserver = sub.add_parser(
        "webserver",
        add_help=False,
        help="Dagster's webserver, loading only what changed when workspace.yaml is reloaded; "
        "its options are dagster-webserver's",
    )
    webserver.set_defaults(func=_webserver)

    status = sub.add_parser(
        "status", help="what the runner on this share is doing, per file (exit 3: not running)"
    )
    status.add_argument("--share", help="folder holding code_location/ and dagster_home/")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(func=_status)

    lock = sub.add_parser(
        "lock",
        help="the lock the runner serves FILE with, to commit beside it as FILE.lock "
        "(then `uv run --script FILE` runs the same versions)",
    )
    lock.add_argument("file", help="the location's file, in code_location/")
    lock.add_argument("--share", help="folder holding code_location/ and dagster_home/")
    lock.add_argument("-o", "--output", help="write it here instead of to stdout")
    lock.set_defaults(func=_lock)

    manifests = sub.add_parser(
        "manifests",
        help="print, as YAML, what RUNNER_SERVERS=k8s would apply for FILEs (all when none), "
        "Secrets without their values: for GitOps",
    )
    manifests.add_argument("files", nargs="*", help="locations' files, in code_location/")
    manifests.add_argument("--share", help="folder holding code_location/ and dagster_home/")
    manifests.set_defaults(func=_manifests)

    args, options = parser.parse_known_args(argv)
    if args.command == "webserver":
        args.options = options  # dagster-webserver's own
    elif options:
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    name = args.command if args.command in ("daemon", "webserver") else "runner"
    setup_logging(args.log_level, name=name, fmt=args.log_format)
    _open_files(name)
    files.write_as(config.share_owner())  # the share's files: the service user's, as root
    sys.exit(args.func(args) or 0)
