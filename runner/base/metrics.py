"""Prometheus metrics, served on an optional port (``--metrics``).

Module-level, like every prometheus_client user: one registry per process, which also
carries the runner's own CPU and memory (the default process collector).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LOCATIONS = Gauge("runner_locations", "Files the runner knows, by state", ["state"])
ENV_BUILD_SECONDS = Histogram(
    "runner_env_build_seconds",
    "Time to build one environment with uv (successful builds)",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
SERVER_START_SECONDS = Histogram(
    "runner_server_start_seconds",
    "Time from spawning a code server to its file loaded",
    buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 180),
)
PUBLISH_SECONDS = Histogram(
    "runner_publish_seconds",
    "Time from writing workspace.yaml to the daemon and webserver having reloaded it",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
RESTARTS = Counter(
    "runner_server_restarts_total", "Code servers that exited on their own and were restarted"
)
FAILURES = Counter(
    "runner_failures_total",
    "Versions that could not be served, by stage (spec, env, start, load)",
    ["stage"],
)


def count_states(states: Iterable[str], all_states: Iterable[str]) -> None:
    tally = Tally(states)
    for state in all_states:
        LOCATIONS.labels(state=state).set(tally.get(state, 0))


def serve(address: str) -> None:
    """Serve /metrics on ``address``: ``PORT`` (loopback) or ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    log.info("metrics on http://%s:%s/metrics", host or "127.0.0.1", port)
