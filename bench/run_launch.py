"""Run launch -> first step started: a run in its own container next to a local run.

    uv run bench/run_launch.py [--runs N]

Needs a Docker engine (see the README's tests section). Brings the compose topology up
twice, one after the other, on a temporary share: with the default launcher (the baseline:
each run a subprocess of its location's code server) and with compose.docker-runs.yaml
(each run a container of its own from the image, in the file's environment). Each time it
drops one file, waits for it to load, warms it with one run, then launches ``--runs`` runs one
at a time and reads, from each run's event log, when its worker started (RUN_START), when its
first step started (STEP_START) and when it succeeded, counted from the moment the launch
mutation was sent. Both go through the daemon's run queue, as runs from the UI do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import row, script  # first: common puts the project on sys.path

from tests.compose_stack import Stack
from tests.docker_images import build_postgres_image, build_runner_image, require_engine
from tests.service import drop


def event_times(stack: Stack, run_id: str) -> dict[str, float]:
    data = stack.graphql(
        """query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection {
             events { __typename ... on MessageEvent { timestamp } } } } }""",
        {"id": run_id},
    )
    times: dict[str, float] = {}
    for event in data["logsForRun"].get("events", []):
        kind = event["__typename"]
        if kind in ("RunStartEvent", "ExecutionStepStartEvent", "RunSuccessEvent"):
            times.setdefault(kind, int(event["timestamp"]) / 1000)
    return times


def measure(stack: Stack, runs: int) -> dict[str, list[float]]:
    drop(stack.code_dir / "launched.py", script(["launched"]))
    stack.wait_loaded("launched", timeout=600)
    figures: dict[str, list[float]] = {"worker": [], "step": [], "success": []}
    for i in range(runs + 1):  # the first one warms the image's pages and the env's files
        sent = time.time()
        run_id = stack.materialize_all("launched")
        status = stack.wait_run(run_id, timeout=300)
        assert status == "SUCCESS", stack.run_failure_text(run_id)
        times = event_times(stack, run_id)  # the run has ended: its events are stored
        if i:
            figures["worker"].append(times["RunStartEvent"] - sent)
            figures["step"].append(times["ExecutionStepStartEvent"] - sent)
            figures["success"].append(times["RunSuccessEvent"] - sent)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="runs per launcher (default 5)")
    args = parser.parse_args()
    require_engine()
    image, postgres = build_runner_image(), build_postgres_image()
    results = {}
    for label, overrides in (("local", ()), ("container", ("compose.docker-runs.yaml",))):
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            stack = Stack(Path(tmp), image=image, postgres_image=postgres, overrides=overrides)
            try:
                stack.up()
                results[label] = measure(stack, args.runs)
            finally:
                if sys.exc_info()[0] is not None:
                    print(stack.logs())
                stack.remove_run_containers()
                stack.down()

    print(f"run launch (GraphQL mutation sent) -> event, {args.runs} runs each, one at a time")
    print(f"  {'':<48}{'median':>9}{'min':>9}{'max':>9}")
    for key, what in (
        ("worker", "run worker started (RUN_START)"),
        ("step", "first step started (STEP_START)"),
        ("success", "run succeeded"),
    ):
        for label in ("local", "container"):
            print(row(f"{label + ':':<11}{what}", results[label][key]))
    extra = statistics.median(results["container"]["step"]) - statistics.median(
        results["local"]["step"]
    )
    print(f"a container adds {extra:+.2f} s to launch -> first step (median)")


if __name__ == "__main__":
    main()
