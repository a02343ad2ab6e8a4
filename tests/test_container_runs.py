"""Run limits and what a code server tells a container launcher: pure decisions, fast."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.dagster_side import container_runs
from runner.dagster_side.container_runs import ContainerRuns, Volume
from runner.envs import env
from runner.isolation.identity import Identity
from runner.service import config
from runner.share import limits, script
from runner.share.limits import RunLimits

MIB = 1024 * 1024


def meta(tool_lines: str) -> script.ScriptMetadata | None:
    return script.parse_metadata(f'# /// script\n# dependencies = ["dagster"]\n{tool_lines}# ///\n')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("2G", 2048 * MIB),
        ("2gb", 2048 * MIB),
        ("1.5g", 1536 * MIB),
        (268435456, 256 * MIB),
    ],
)
def test_memory_is_read_as_docker_reads_it(text: object, expected: int) -> None:
    assert limits.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1m", "1m", True, "", "12 parsecs"])
def test_a_malformed_memory_limit_is_refused_with_the_key(text: object) -> None:
    with pytest.raises(ValueError, match="run-memory"):
        limits.from_tool({"dagster-code-runner": {"run-memory": text}})


def test_limits_come_from_the_files_table_and_malformed_ones_are_metadata_errors() -> None:
    block = '# [tool.dagster-code-runner]\n# run-memory = "256m"\n# run-cpus = 0.5\n'
    parsed = meta(block)
    assert parsed is not None
    assert parsed.run_limits == RunLimits(memory=256 * MIB, cpus=0.5)
    assert parsed.run_limits.describe() == "memory 256 MiB, 0.5 CPUs"
    with pytest.raises(script.MetadataError, match="run-cpus"):
        meta("# [tool.dagster-code-runner]\n# run-cpus = 0\n")
    with pytest.raises(script.MetadataError, match=r"unknown key.*run-mem"):
        meta('# [tool.dagster-code-runner]\n# run-mem = "1g"\n')


def test_a_limit_edit_keeps_the_environment() -> None:
    small = meta('# [tool.dagster-code-runner]\n# run-memory = "256m"\n')
    large = meta('# [tool.dagster-code-runner]\n# run-memory = "2g"\n')
    assert small is not None and large is not None
    assert env.spec_for(small).key == env.spec_for(large).key == env.spec_for(meta("")).key


def test_service_defaults_fill_what_the_file_leaves_out() -> None:
    defaults = limits.service_defaults({"RUNNER_RUN_MEMORY": "1g", "RUNNER_RUN_CPUS": "2"})
    assert RunLimits(cpus=0.5).over(defaults) == RunLimits(memory=1024 * MIB, cpus=0.5)
    with pytest.raises(ValueError, match="RUNNER_RUN_CPUS"):
        limits.service_defaults({"RUNNER_RUN_CPUS": "many"})


def test_docker_runs_carry_limits_volumes_network_and_the_files_entry_point() -> None:
    runs = ContainerRuns.from_environ(
        "docker",
        {"RUNNER_RUN_IMAGE": "img:1", "RUNNER_RUN_NETWORK": "net"},
        own_container="c" * 64,
        defaults=RunLimits(cpus=1.0),
    )
    args = runs.server_args("sales", RunLimits(memory=256 * MIB))
    assert "--use-python-environment-entry-point" in args
    assert args[args.index("--container-image") + 1] == "img:1"
    context = json.loads(args[args.index("--container-context") + 1])["docker"]
    kwargs = context["container_kwargs"]
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 256 * MIB
    assert kwargs["nano_cpus"] == 1_000_000_000
    assert kwargs["volumes_from"] == ["c" * 64]
    assert kwargs["labels"] == {container_runs.LOCATION_LABEL: "sales"}
    assert context["networks"] == ["net"]
    assert runs.problem() is None
    entry = container_runs.entry_point(Path("/state/envs/ab/bin/python"), Path("/s/runs/x.json"))
    assert entry[0] == "/state/envs/ab/bin/python" and entry[1].endswith("boot/run.py")


def test_kubernetes_runs_mount_the_claims_and_carry_the_limits() -> None:
    runs = ContainerRuns.from_environ(
        "k8s",
        {"RUNNER_RUN_VOLUMES": "runner-state:/var/lib/runner,share:/opt/dagster"},
        own_container=None,
        defaults=RunLimits(),
    )
    assert runs.volumes == (
        Volume("runner-state", "/var/lib/runner"),
        Volume("share", "/opt/dagster"),
    )
    k8s = container_runs.container_context(runs, "sales", RunLimits(memory=512 * MIB, cpus=1.5))
    k8s = k8s["k8s"]
    assert k8s["resources"]["limits"] == {"memory": str(512 * MIB), "cpu": "1500m"}
    assert {"name": "runner-state", "mountPath": "/var/lib/runner"} in k8s["volume_mounts"]
    assert {"name": "share", "persistentVolumeClaim": {"claimName": "share"}} in k8s["volumes"]


def test_runs_in_containers_run_as_their_locations_user_with_no_rights(tmp_path: Path) -> None:
    who = Identity(20007, 20007)
    docker = ContainerRuns.from_environ("docker", {}, own_container="c" * 64, defaults=RunLimits())
    kwargs = container_runs.container_context(docker, "sales", RunLimits(), user=who)
    kwargs = kwargs["docker"]["container_kwargs"]
    assert (kwargs["user"], kwargs["group_add"]) == ("20007:20007", [])
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    k8s = ContainerRuns.from_environ(
        "k8s", {"RUNNER_RUN_VOLUMES": "s:/s"}, own_container=None, defaults=RunLimits()
    )
    context = container_runs.container_context(k8s, "sales", RunLimits(), user=who)["k8s"]
    assert context["security_context"] == {
        "run_as_user": 20007,
        "run_as_group": 20007,
        "run_as_non_root": True,
        "allow_privilege_escalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # Its run settings are its own user's to read, with its HOME and TMPDIR.
    env_file = tmp_path / "runs" / "sales.json"
    if os.geteuid() == 0:
        container_runs.write_run_env(env_file, {"TOKEN": "t"}, tmp_path / "work", user=who)
        st = env_file.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (20007, 0o600)
        data = json.loads(env_file.read_text())["env"]
        assert data["HOME"] == str(tmp_path / "work") and data["USER"] == "location-20007"


def test_container_runs_without_the_runners_volumes_are_a_stated_problem() -> None:
    docker = ContainerRuns.from_environ("docker", {}, own_container=None, defaults=RunLimits())
    assert "RUNNER_RUN_VOLUMES" in (docker.problem() or "")
    with pytest.raises(ValueError, match="NAME:/absolute/path"):
        container_runs.parse_volumes("just-a-name")
    assert ContainerRuns("local").server_args("x", RunLimits(memory=MIB * 64)) == []


def test_the_runners_own_container_is_read_from_mountinfo() -> None:
    cid = "0123456789abcdef" * 4
    line = f"712 700 0:50 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw - ext4 x rw\n"
    assert container_runs.own_container("1 0 8:1 / / rw - ext4 /dev/vda rw\n" + line) == cid
    assert container_runs.own_container("1 0 8:1 / / rw - ext4 /dev/vda rw\n") is None


def test_launcher_kind_knows_dagsters_container_launchers() -> None:
    from dagster._core.launcher import DefaultRunLauncher
    from dagster_docker import DockerRunLauncher

    assert container_runs.launcher_kind(DockerRunLauncher()) == "docker"
    assert container_runs.launcher_kind(DefaultRunLauncher()) == "local"


def test_docker_runs_get_an_instance_folder_and_config_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "DAGSTER_HOME",
        "RUNNER_WORKSPACE_DIR",
        "DAGSTER_DATABASE_URL",
        "DAGSTER_POSTGRES_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNNER_RUN_LAUNCHER", "docker")
    where = config.layout(tmp_path)
    assert where.instance_home == tmp_path / "dagster_home" / "docker"
    config.ensure_instance_config(where)
    text = (where.instance_home / "dagster.yaml").read_text()
    assert "class: DockerRunLauncher" in text and "storage:" not in text
    monkeypatch.setenv("DAGSTER_POSTGRES_HOST", "db")
    assert config.layout(tmp_path).instance_home.name == "postgres-docker"
    monkeypatch.setenv("RUNNER_RUN_LAUNCHER", "kubernetes")
    with pytest.raises(SystemExit, match="local or docker"):
        config.layout(tmp_path)


@pytest.mark.parametrize("finished", [False, True])
def test_an_oom_kill_is_reported_on_the_run_it_killed(tmp_path: Path, finished: bool) -> None:
    """boot/run.py's report, read back from a real instance (the launch itself is in
    tests/test_compose.py): the run's failure if it had not ended, else an event beside it."""
    import importlib.util

    from dagster import DagsterInstance, DagsterRunStatus, serialize_value
    from dagster._core.code_pointer import FileCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._grpc.types import ExecuteRunArgs

    spec = importlib.util.spec_from_file_location("run_boot", container_runs.RUN_BOOT)
    assert spec is not None and spec.loader is not None
    run_boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_boot)
    run_boot.memory_limit = lambda: 600 * MIB  # the container's cgroup, here

    origin = JobPythonOrigin(
        "__ASSET_JOB",
        RepositoryPythonOrigin("python", FileCodePointer(str(tmp_path / "f.py"), "defs")),
    )
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        status = DagsterRunStatus.FAILURE if finished else DagsterRunStatus.STARTED
        run = instance.add_run(
            DagsterRun(job_name="__ASSET_JOB", job_code_origin=origin, status=status)
        )
        args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=instance.get_ref())
        run_boot.report_oom(["api", "execute_run", serialize_value(args)], 1)

        reported = instance.get_run_by_id(run.run_id)
        assert reported is not None and reported.status == DagsterRunStatus.FAILURE
        messages = [e.message for e in instance.all_logs(run.run_id)]
    [message] = [m for m in messages if "Out of memory" in m]
    assert "memory limit of 600 MiB" in message and "killed 1 of its processes" in message


def test_a_server_container_binds_its_paths_and_is_fenced(tmp_path: Path) -> None:
    from runner.servers import docker_servers
    from runner.servers.docker_servers import DockerOptions
    from runner.servers.server import Address, Request, Sidecar

    venv = tmp_path / "envs" / "abc"
    (venv / "bin").mkdir(parents=True)
    base = tmp_path / "pythons" / "3.11"
    (base / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\n")
    code, sidecar, work = tmp_path / "code", Sidecar(tmp_path / "servers" / "s1"), tmp_path / "w"
    for folder in (code, sidecar.folder, work):
        folder.mkdir(parents=True)
    argv = [
        str(venv / "bin" / "python"),
        str(docker_servers.__file__),  # stands for the boot script: its folder is bound
        "--python-file",
        str(code / "sales.py"),
        "--working-directory",
        str(code),
        "--host",
        "127.0.0.1",
        "--port",
        "41234",
        "--fixed-server-id",
        "sales-0123456789ab",
    ]
    request = Request(argv, {"TOKEN": "t"}, work, Identity(20002, 20002), sidecar)
    mounts = docker_servers.binds(request, str)
    writable = {Path(b.target): b.writable for b in mounts}
    assert writable == {
        venv: False,
        base: False,
        Path(docker_servers.__file__).parent: False,
        code: False,
        sidecar.folder: True,
        work: True,
    }
    options = DockerOptions(image="srv:1", share="/s", network="net", defaults=RunLimits(cpus=1))
    kwargs = docker_servers.run_options(
        request,
        options=options,
        location="sales",
        limits=RunLimits(memory=256 * MIB),
        mounts=mounts,
    )
    assert kwargs["user"] == "20002:20002" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["read_only"] and "no-new-privileges" in kwargs["security_opt"]
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 256 * MIB
    assert kwargs["nano_cpus"] == 1_000_000_000  # the service's default
    assert kwargs["network"] == "net" and "restart_policy" not in kwargs
    assert kwargs["labels"][container_runs.LOCATION_LABEL] == "sales"
    command = kwargs["command"]
    assert command[command.index("--port") + 1] == str(docker_servers.PORT)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    # On a socket, it listens where the runner asked (its folder is bound).
    on_socket = Request(argv, {}, work, None, sidecar, address=Address("x", 0, "/s/grpc.sock"))
    assert docker_servers.listening(on_socket.argv, on_socket.address) == (argv, False)
