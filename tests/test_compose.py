"""compose.yaml, brought up for real: Postgres, webserver, daemon and runner on a temp share.

The first test keeps the default launcher: runs are processes of their code servers. The
second adds compose.docker-runs.yaml: each run is a container of its own from the image, in
its file's environment, with its file's memory limit, and a run over it ends FAILURE saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from runner.dagster_side.container_runs import LOCATION_LABEL
from tests.compose_stack import Stack
from tests.docker_images import docker
from tests.service import asset_file, drop, wait_for

pytestmark = pytest.mark.slow

#: Environments are built inside the stack, from PyPI, on a fresh volume.
BUILD_TIMEOUT = 600

WHERE = """\
# /// script
# dependencies = ["dagster"]
# [tool.dagster-code-runner]
# run-memory = "1g"
# run-cpus = 0.5
# ///
import os
import sys

import dagster as dg


@dg.asset
def where(context: dg.AssetExecutionContext) -> None:
    context.log.info(f"python={sys.executable} greeting={os.environ.get('GREETING')}")


defs = dg.Definitions(assets=[where])
"""

HOG = """\
# /// script
# dependencies = ["dagster"]
# [tool.dagster-code-runner]
# run-memory = "600m"
# ///
import dagster as dg


@dg.asset
def hog() -> None:
    blocks = [b"x" * (1 << 20) for _ in range(1536)]  # 1.5 GiB, every page touched
    print(len(blocks))


defs = dg.Definitions(assets=[hog])
"""


@contextmanager
def stack_up(
    tmp_path: Path, runner_image: str, postgres_image: str, overrides: tuple[str, ...] = ()
) -> Iterator[Stack]:
    stack = Stack(tmp_path, image=runner_image, postgres_image=postgres_image, overrides=overrides)
    try:
        stack.up()
        yield stack
    finally:
        print(stack.logs())
        for cid in stack.run_containers():
            print(f"--- run container {cid} ---\n" + docker("logs", "--tail", "30", cid))
        stack.remove_run_containers()
        stack.down()


def assert_nothing_left(stack: Stack, pids: set[int]) -> None:
    assert pids, "no processes were found to check"
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
    assert not [pid for pid in pids if psutil.pid_exists(pid)], "processes outlived the stack"


def test_compose_runs_a_dropped_file_and_down_leaves_nothing(
    runner_image: str, postgres_image: str, tmp_path: Path
) -> None:
    with stack_up(tmp_path, runner_image, postgres_image) as stack:
        drop(stack.code_dir / "composed.py", asset_file(["first"]))
        stack.wait_loaded("composed", timeout=BUILD_TIMEOUT)

        run_id = stack.materialize_all("composed")
        assert stack.wait_run(run_id, timeout=300) == "SUCCESS", stack.run_failure_text(run_id)
        recorded = stack.psql(f"select status from runs where run_id = '{run_id}'")
        assert recorded == "SUCCESS"  # in the compose Postgres, not a local SQLite

        drop(stack.code_dir / "composed.py", asset_file(["first", "second"]))
        wait_for(
            "the edit", lambda: stack.asset_keys("composed") == ["first", "second"], timeout=300
        )

        (stack.code_dir / "composed.py").unlink()
        wait_for("the deletion", lambda: "composed" not in stack.locations(), timeout=120)
        pids = stack.host_pids()
    assert_nothing_left(stack, pids)


def test_compose_with_docker_runs_contains_each_run_and_its_memory(
    runner_image: str, postgres_image: str, tmp_path: Path
) -> None:
    with stack_up(
        tmp_path, runner_image, postgres_image, overrides=("compose.docker-runs.yaml",)
    ) as stack:
        drop(stack.code_dir / ".env", "GREETING=hello-from-settings\n")
        drop(stack.code_dir / "where.py", WHERE)
        drop(stack.code_dir / "hog.py", HOG)
        stack.wait_loaded("where", timeout=BUILD_TIMEOUT)
        stack.wait_loaded("hog", timeout=BUILD_TIMEOUT)

        hog_run = stack.materialize_all("hog")
        assert stack.wait_run(hog_run, timeout=300) == "FAILURE"
        # boot/run.py says why once the worker has exited: just after the run's failure.
        failure = wait_for(
            "the OOM kill on the run",
            lambda: "Out of memory" in (text := stack.run_failure_text(hog_run)) and text,
            timeout=60,
        )
        assert "memory limit of 600 MiB" in failure and "OOM-killed" in failure, failure

        run_id = stack.materialize_all("where")
        assert stack.wait_run(run_id, timeout=300) == "SUCCESS", stack.run_failure_text(run_id)
        logs = stack.run_failure_text(run_id)
        assert "greeting=hello-from-settings" in logs, logs
        python = logs.split("python=", 1)[1].split()[0]
        assert python.startswith("/var/lib/runner/"), python  # the file's env, not the image's
        assert stack.psql(f"select status from runs where run_id = '{run_id}'") == "SUCCESS"

        run_containers = stack.run_containers()
        inspected = {
            c["Config"]["Labels"][LOCATION_LABEL]: c
            for c in json.loads(docker("inspect", *run_containers))
        }
        assert sorted(inspected) == ["hog", "where"]
        where, hog = inspected["where"], inspected["hog"]
        assert where["Config"]["Cmd"][0] == python
        assert where["Config"]["Image"] == runner_image
        assert where["HostConfig"]["Memory"] == 1 << 30
        assert where["HostConfig"]["NanoCpus"] == 500_000_000
        assert hog["HostConfig"]["Memory"] == 600 << 20
        assert hog["State"]["OOMKilled"] or "OOM-killed" in failure
        assert stack.container("runner") in json.dumps(where["HostConfig"]["VolumesFrom"])
        # Each run container runs as its location's own user, with no capability.
        users = {name: c["Config"]["User"] for name, c in inspected.items()}
        assert len(set(users.values())) == 2 and all(
            int(u.split(":")[0]) >= 20002 for u in users.values()
        ), users
        assert where["HostConfig"]["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in where["HostConfig"]["SecurityOpt"]
        pids = stack.host_pids()
    assert_nothing_left(stack, pids)
    assert not set(run_containers) & set(docker("ps", "-a", "-q").split())
