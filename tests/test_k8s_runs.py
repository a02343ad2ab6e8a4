"""Runs in Kubernetes pods, by the path the Docker runs take, checked without a cluster.

A real code server is started as the runner starts it for ``K8sRunLauncher``; the webserver's
view of it (Dagster's ``GrpcServerCodeLocation``) gives the run its origin, and dagster-k8s's
own launcher builds the Job for that run. Only the call that would send the Job to a cluster
is replaced: the test reads the manifest it was given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._core.launcher import LaunchRunContext
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from dagster._core.remote_representation.code_location import GrpcServerCodeLocation
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher

from runner.base import process
from runner.dagster_side import container_runs
from runner.dagster_side.container_runs import ContainerRuns, Volume
from runner.servers import server
from runner.share import script

pytestmark = pytest.mark.slow

FILE = """\
# /// script
# dependencies = ["dagster"]
# [tool.dagster-code-runner]
# run-memory = "768m"
# run-cpus = 1.5
# ///
import dagster as dg


@dg.asset
def podded() -> int:
    return 1


defs = dg.Definitions(assets=[podded])
"""

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


class Cluster:
    """The batch API's one call the launcher makes: the Job it would have created."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def create_namespaced_job(self, body: Any, namespace: str, **_options: Any) -> None:
        self.jobs.append((namespace, body))


def test_a_k8s_run_of_a_location_runs_in_its_env_with_its_volumes_and_limits(
    tmp_path: Path,
) -> None:
    file = tmp_path / "share" / "code_location" / "podded.py"
    file.parent.mkdir(parents=True)
    file.write_text(FILE)
    metadata = script.parse_metadata(FILE)
    assert metadata is not None
    runs = ContainerRuns(
        kind="k8s",
        image="registry.example/dagster-code-runner:1",
        volumes=(Volume("runner-state", "/var/lib/runner"), Volume("share", "/opt/dagster")),
    )
    python = Path(sys.executable)  # the file's env in the service; this one has dagster
    env_file = container_runs.run_env_file(tmp_path / "state", "podded")
    container_runs.write_run_env(env_file, {"GREETING": "hi"}, tmp_path / "work")
    code_server = server.start(
        location="podded",
        python=python,
        file=file,
        host="127.0.0.1",
        env=dict(os.environ),
        workdir=tmp_path / "work",
        sidecars=tmp_path / "sidecars",
        run_args=runs.server_args("podded", metadata.run_limits),
        run_entry_point=container_runs.entry_point(python, env_file),
    )
    try:
        assert code_server.wait_ready(timeout=120) is None
        origin = GrpcServerCodeLocationOrigin(
            host="127.0.0.1", port=code_server.port, location_name="podded"
        )
        home = tmp_path / "home"
        home.mkdir()
        with (
            DagsterInstance.local_temp(str(home)) as instance,
            GrpcServerCodeLocation(origin, instance=instance) as location,
        ):
            job = location.get_repository("__repository__").get_full_job("__ASSET_JOB")
            run = instance.add_run(
                DagsterRun(
                    job_name=job.name,
                    job_code_origin=job.get_python_origin(),
                    remote_job_origin=job.get_remote_origin(),
                )
            )
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(KUBECONFIG)
            cluster = Cluster()
            launcher = K8sRunLauncher(
                service_account_name="dagster",
                instance_config_map="dagster-instance",
                dagster_home="/opt/dagster/dagster_home",
                load_incluster_config=False,
                kubeconfig_file=str(kubeconfig),
                job_namespace="data",
                k8s_client_batch_api=cluster,
            )
            launcher.register_instance(instance)
            launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    finally:
        process.stop(code_server.proc, name="code server", grace=10)

    [(namespace, manifest)] = cluster.jobs
    assert namespace == "data"
    pod = manifest.spec.template
    [container] = pod.spec.containers
    assert container.image == "registry.example/dagster-code-runner:1"
    # The file's interpreter runs boot/run.py with the location's run env, then the worker.
    assert container.args[:5] == [
        str(python),
        str(container_runs.RUN_BOOT),
        str(env_file),
        "api",
        "execute_run",
    ]
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    claims = {
        v.name: v.persistent_volume_claim.claim_name
        for v in pod.spec.volumes
        if v.persistent_volume_claim
    }
    assert {path: claims[name] for path, name in mounts.items() if name in claims} == {
        "/var/lib/runner": "runner-state",
        "/opt/dagster": "share",
    }
    memory, cpu = str(768 * 1024 * 1024), "1500m"
    assert container.resources.limits == {"memory": memory, "cpu": cpu}
    assert container.resources.requests == {"memory": memory, "cpu": cpu}
    assert pod.metadata.labels[container_runs.LOCATION_LABEL] == "podded"
    assert manifest.metadata.labels["dagster/code-location"] == "podded"
