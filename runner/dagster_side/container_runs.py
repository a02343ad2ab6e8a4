"""Runs in containers: what each code server tells Dagster's run launcher about its runs.

With Dagster's ``DockerRunLauncher`` (dagster-docker) or ``K8sRunLauncher`` (dagster-k8s) in
the instance, the webserver or the daemon starts every run in a container of its own, from
the run's origin, which the location's code server reports. The runner starts each server so
that the origin holds all the container needs:

* the entry point: the file's own interpreter running ``boot/run.py`` (what
  ``--use-python-environment-entry-point`` advertises, aimed at that script), so the run
  executes in the file's uv environment; the container sees it, and the file, at the same
  paths, because the runner's volumes are mounted there;
* ``--container-image``: ``RUNNER_RUN_IMAGE`` (else the launcher's own ``image``);
* ``--container-context``: the file's memory and CPU limits, the volumes and the network.

A run's environment variables (settings, secrets, the database URL) are not in the origin,
which is stored with every run: :func:`write_run_env` keeps them in the runner's state,
readable by its user only, and ``boot/run.py`` loads them in the container.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.isolation.identity import Identity
from runner.share.limits import RunLimits
from runner.share.script import short_name

Kind = Literal["local", "docker", "k8s"]

#: Runs in a container start with this script (from the image), in the file's environment.
RUN_BOOT = Path(__file__).parent.parent / "boot" / "run.py"
#: Label on every run container (Docker) and run pod (Kubernetes): the location it is for.
LOCATION_LABEL = "dagster-code-runner/location"

_LAUNCHERS: dict[str, Kind] = {"DockerRunLauncher": "docker", "K8sRunLauncher": "k8s"}
_PACKAGES = ("dagster_docker", "dagster_k8s")


def launcher_kind(launcher: object) -> Kind:
    """``docker`` or ``k8s`` for Dagster's container launchers (or a subclass), else local."""
    for cls in type(launcher).__mro__:
        if cls.__name__ in _LAUNCHERS and cls.__module__.split(".")[0] in _PACKAGES:
            return _LAUNCHERS[cls.__name__]
    return "local"


@dataclass(frozen=True)
class Volume:
    """``NAME:/path``: a Docker volume or host folder, or a Kubernetes claim, and its path."""

    source: str
    path: str


@dataclass(frozen=True)
class ContainerRuns:
    """How this service's runs are containerized (from the instance and the environment)."""

    kind: Kind
    image: str | None = None  # RUNNER_RUN_IMAGE; None: the launcher's own image
    network: str | None = None  # RUNNER_RUN_NETWORK (Docker)
    volumes: tuple[Volume, ...] = ()  # RUNNER_RUN_VOLUMES
    #: Docker: mount the volumes of this container (the runner's own, when it runs in one).
    volumes_from: str | None = None
    defaults: RunLimits = field(default_factory=RunLimits)

    @classmethod
    def from_environ(
        cls,
        kind: Kind,
        environ: Mapping[str, str],
        *,
        own_container: str | None,
        defaults: RunLimits,
    ) -> ContainerRuns:
        volumes = parse_volumes(environ.get("RUNNER_RUN_VOLUMES", ""))
        return cls(
            kind=kind,
            image=environ.get("RUNNER_RUN_IMAGE") or None,
            network=environ.get("RUNNER_RUN_NETWORK") or None,
            volumes=volumes,
            volumes_from=None if volumes or kind != "docker" else own_container,
            defaults=defaults,
        )

    def problem(self) -> str | None:
        """Why runs cannot find the file's environment in their containers, or ``None``."""
        if self.kind == "docker" and not self.volumes and not self.volumes_from:
            return (
                "runs in containers need the runner's state folder and the share at the same "
                "paths: set RUNNER_RUN_VOLUMES (NAME:/path,...) or run the runner in a container"
            )
        if self.kind == "k8s" and not self.volumes:
            return (
                "runs in pods need the runner's state folder and the share at the same paths: "
                "set RUNNER_RUN_VOLUMES to their claims (CLAIM:/path,...)"
            )
        return None

    def server_args(
        self, location: str, limits: RunLimits, *, user: Identity | None = None
    ) -> list[str]:
        """The ``dagster api grpc`` options that carry a location's run settings."""
        if self.kind == "local":
            return []
        context = container_context(self, location, limits.over(self.defaults), user=user)
        args = ["--use-python-environment-entry-point", "--container-context", json.dumps(context)]
        if self.image:
            args += ["--container-image", self.image]
        return args


def container_context(
    runs: ContainerRuns, location: str, limits: RunLimits, *, user: Identity | None = None
) -> dict[str, Any]:
    """The container context of a location's runs, as the launcher of ``runs.kind`` reads it.
    ``user``: the location's identity, which its run containers run as, with no capability
    and no way to gain one."""
    if runs.kind == "docker":
        kwargs: dict[str, Any] = {"labels": {LOCATION_LABEL: location}}
        if user is not None:
            kwargs.update(
                user=f"{user.uid}:{user.gid}",
                group_add=[],
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
            )
        if runs.volumes:
            kwargs["volumes"] = [f"{v.source}:{v.path}" for v in runs.volumes]
        if runs.volumes_from:
            kwargs["volumes_from"] = [runs.volumes_from]
        if limits.memory is not None:
            # No swap beyond the limit: a run over it is stopped, not slowed to a crawl.
            kwargs["mem_limit"] = kwargs["memswap_limit"] = limits.memory
        if limits.cpus is not None:
            kwargs["nano_cpus"] = round(limits.cpus * 1e9)
        docker: dict[str, Any] = {"container_kwargs": kwargs}
        if runs.network:
            docker["networks"] = [runs.network]
        return {"docker": docker}
    if runs.kind == "k8s":
        amounts: dict[str, str] = {}
        if limits.memory is not None:
            amounts["memory"] = str(limits.memory)
        if limits.cpus is not None:
            amounts["cpu"] = f"{round(limits.cpus * 1000)}m"
        names = [_k8s_name(v.source) for v in runs.volumes]
        k8s: dict[str, Any] = {
            "labels": {LOCATION_LABEL: _k8s_label(location)},
            "volumes": [
                {"name": name, "persistentVolumeClaim": {"claimName": v.source}}
                for name, v in zip(names, runs.volumes, strict=True)
            ],
            "volume_mounts": [
                {"name": name, "mountPath": v.path}
                for name, v in zip(names, runs.volumes, strict=True)
            ],
        }
        if amounts:  # requests = limits: the scheduler places the pod where they fit
            k8s["resources"] = {"limits": amounts, "requests": dict(amounts)}
        if user is not None:
            k8s["security_context"] = {
                "run_as_user": user.uid,
                "run_as_group": user.gid,
                "run_as_non_root": True,
                "allow_privilege_escalation": False,
                "capabilities": {"drop": ["ALL"]},
            }
        return {"k8s": k8s}
    return {}


def parse_volumes(text: str) -> tuple[Volume, ...]:
    """``NAME:/path,NAME:/path`` (commas or spaces); raises ``ValueError`` for a bad item."""
    volumes = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        source, sep, path = item.partition(":")
        if not sep or not source or not path.startswith("/"):
            raise ValueError(f"RUNNER_RUN_VOLUMES: {item!r} is not NAME:/absolute/path")
        volumes.append(Volume(source, path.split(":")[0]))
    return tuple(volumes)


_MOUNTINFO_ID = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\s")


def own_container(mountinfo: str) -> str | None:
    """This process's Docker container id, from ``/proc/self/mountinfo`` (Docker bind-mounts
    the container's own ``hostname`` file), or ``None`` outside a container."""
    match = _MOUNTINFO_ID.search(mountinfo)
    return match.group(1) if match else None


def read_own_container() -> str | None:
    try:
        return own_container(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None


def run_env_file(state_dir: Path, location: str) -> Path:
    return state_dir / "runs" / f"{short_name(location)}.json"


def write_run_env(
    path: Path, env: Mapping[str, str], cwd: Path, *, user: Identity | None = None
) -> None:
    """Keep what a location's runs see (its server's variables and folder) for ``boot/run.py``;
    only the runner's user, or the location's own (``user``), may read it: it holds the
    location's secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    own = (
        {"HOME": str(cwd), "TMPDIR": str(cwd / "tmp"), "USER": user.user, "LOGNAME": user.user}
        if user
        else {}
    )
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        if user is not None:
            os.fchown(f.fileno(), user.uid, user.gid)
        json.dump({"env": {**env, **own}, "cwd": str(cwd)}, f)
    os.replace(tmp, path)


def entry_point(python: Path, env_file: Path) -> Sequence[str]:
    """How a run container starts a run worker for the location (see ``boot/run.py``)."""
    return [str(python), str(RUN_BOOT), str(env_file)]


def _k8s_name(source: str) -> str:
    """A volume name Kubernetes accepts (DNS label) for a claim."""
    name = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")
    return name[:63] or "volume"


def _k8s_label(value: str) -> str:
    """A label value Kubernetes accepts (63 characters of [A-Za-z0-9_.-])."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:63].strip("_.-")
