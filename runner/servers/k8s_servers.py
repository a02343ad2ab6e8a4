"""Code servers as Deployments on Kubernetes (``RUNNER_SERVERS=k8s``).

Per version of a location (a generation), blue/green: a Deployment of one pod and a Service
in front of it, and a ConfigMap holding the environment's metadata and its lock; per
location, a Secret with its settings and a NetworkPolicy that admits only the webserver, the
daemon and the runner (it calls every server). An edit creates the next generation beside
the serving one and deletes the old one once the workspace points at the new: a Deployment
patched in place would turn Ready even when the new file failed (servers load lazily). The
per-location Secret and NetworkPolicy are patched.

No image is built per file: the pod's init container builds the environment with
``uv sync --script --frozen`` from the runner's lock, into a uv cache shared by every pod
(a volume claim), so an environment built once is a copy from the cache; the server runs
the interpreter ``uv python find --script`` names. The file comes from the share's claim,
mounted read-only at the path the runner sees it. Pods run as a non-root user (the
location's own where the runner isolates locations), with a read-only root file system,
no capability, and the file's ``server-memory`` and ``server-cpus`` as limits (and requests).

Everything goes through :class:`KubeApi`, a small interface over the official client, so
that what the runner applies is checked without a cluster; :func:`manifests` is also what
``python -m runner manifests`` prints, Secrets without their values.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.dagster_side.container_runs import LOCATION_LABEL
from runner.servers.server import Address, Launched, Request
from runner.share.limits import RunLimits

log = logging.getLogger(__name__)

#: Labels on everything the runner applies.
SHARE_LABEL = "dagster-code-runner/share"
SERVER_LABEL = "dagster-code-runner/server"  # one generation's resources
ROLE_LABEL = "dagster-code-runner/role"  # code-server; webserver, daemon, runner may call it
#: Roles whose pods a location's NetworkPolicy admits.
CALLERS = ("webserver", "daemon", "runner")
PORT = 4000
SPEC_MOUNT = "/etc/dagster-code-runner/env"  # the ConfigMap: env.py and env.py.lock
CACHE_MOUNT = "/var/cache/uv"
#: The kinds applied, in the order they are created (deleted in reverse).
KINDS = ("Secret", "NetworkPolicy", "ConfigMap", "Deployment", "Service")
PER_LOCATION = ("Secret", "NetworkPolicy")


@dataclass(frozen=True)
class K8sOptions:
    """Where servers run on Kubernetes."""

    namespace: str
    image: str
    share: str  # the share's path: the label value that says which runner applied what
    share_claim: str  # the claim holding the share, mounted read-only at ``share_path``
    share_path: str
    cache_claim: str  # the uv cache every pod's init container builds from
    run_as: tuple[int, int] = (10001, 10001)  # when locations do not run as users of their own
    service_account: str | None = None
    defaults: RunLimits = field(default_factory=RunLimits)
    #: Outside a cluster: the kubeconfig to reach it by (``KUBECONFIG``; None: ``~/.kube/config``).
    kubeconfig: str | None = None


@dataclass(frozen=True)
class ServerSpec:
    """One generation's server: what the manifests are made of (pure data)."""

    location: str
    server_id: str
    args: tuple[str, ...]  # the boot script and its options, after the interpreter
    env: Mapping[str, str]  # its variables, settings included: kept in its Secret
    env_script: str  # the environment's metadata (``uv sync --script`` reads it)
    env_lock: str
    limits: RunLimits = field(default_factory=RunLimits)
    user: tuple[int, int] | None = None


def dns_label(text: str, most: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:most].strip("-") or "x"


def label_value(text: str) -> str:
    """A label value Kubernetes accepts (63 characters of [A-Za-z0-9_.-])."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63].strip("_.-") or "x"


def location_name(location: str) -> str:
    """``dcr-<location>-<digest>``: unique per location, a DNS label with room to spare."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:8]
    return f"dcr-{dns_label(location, 30)}-{digest}"


def server_name(location: str, server_id: str) -> str:
    """The generation's Deployment, Service and ConfigMap: the location's name and its id."""
    return f"{location_name(location)}-{server_id.rsplit('-', 1)[-1][:12]}"


def share_value(share: str) -> str:
    return hashlib.sha256(share.encode()).hexdigest()[:16]


def manifests(spec: ServerSpec, options: K8sOptions, *, secret_values: bool = True) -> list[dict]:
    """What the runner applies for one generation, in :data:`KINDS` order; without
    ``secret_values`` the Secret lists its keys only (for Git)."""
    ns, loc_name = options.namespace, location_name(spec.location)
    name = server_name(spec.location, spec.server_id)
    common = {
        LOCATION_LABEL: label_value(spec.location),
        SHARE_LABEL: share_value(options.share),
    }
    generation = {**common, SERVER_LABEL: dns_label(spec.server_id.rsplit("-", 1)[-1], 63)}
    pod_labels = {**generation, ROLE_LABEL: "code-server"}
    annotations = {"dagster-code-runner/location": spec.location}

    def meta(what: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": what, "namespace": ns, "labels": labels, "annotations": annotations}

    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(loc_name, common),
        "type": "Opaque",
    }
    if secret_values:
        secret["stringData"] = dict(spec.env)
    else:
        secret["metadata"]["annotations"] = {
            **annotations,
            "dagster-code-runner/keys": ",".join(sorted(spec.env)),
        }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(loc_name, common),
        "spec": {
            "podSelector": {"matchLabels": {**common, ROLE_LABEL: "code-server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": ROLE_LABEL, "operator": "In", "values": list(CALLERS)}
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": PORT}],
                }
            ],
        },
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(name, generation),
        "data": {"env.py": spec.env_script, "env.py.lock": spec.env_lock},
    }
    uid, gid = spec.user or options.run_as
    limits = spec.limits.over(options.defaults)
    amounts: dict[str, str] = {}
    if limits.memory is not None:
        amounts["memory"] = str(limits.memory)
    if limits.cpus is not None:
        amounts["cpu"] = f"{round(limits.cpus * 1000)}m"
    resources = {"limits": amounts, "requests": dict(amounts)} if amounts else {}
    hardened = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }
    env_script = f"{SPEC_MOUNT}/env.py"
    scratch = {"name": "scratch", "mountPath": "/tmp"}
    cache = {"name": "uv-cache", "mountPath": CACHE_MOUNT}
    uv_env = [
        {"name": "UV_CACHE_DIR", "value": CACHE_MOUNT},
        {"name": "HOME", "value": "/tmp"},
    ]
    init = {
        "name": "environment",
        "image": options.image,
        "command": ["uv", "sync", "--script", env_script, "--frozen"],
        "env": uv_env,
        "volumeMounts": [
            {"name": "environment", "mountPath": SPEC_MOUNT, "readOnly": True},
            cache,
            scratch,
        ],
        "securityContext": hardened,
        "resources": resources,
    }
    server = {
        "name": "code-server",
        "image": options.image,
        # The environment's interpreter, found as `uv run --script` would find it.
        "command": [
            "/bin/sh",
            "-c",
            'exec "$(uv python find --script "$0")" "$@"',
            env_script,
            *spec.args,
        ],
        "envFrom": [{"secretRef": {"name": loc_name}}],
        "env": [*uv_env, {"name": "TMPDIR", "value": "/tmp"}],
        "ports": [{"name": "grpc", "containerPort": PORT}],
        "readinessProbe": {"grpc": {"port": PORT}, "periodSeconds": 5},
        "volumeMounts": [
            {"name": "environment", "mountPath": SPEC_MOUNT, "readOnly": True},
            {**cache, "readOnly": True},
            {"name": "share", "mountPath": options.share_path, "readOnly": True},
            scratch,
        ],
        "securityContext": hardened,
        "resources": resources,
    }
    pod_spec: dict[str, Any] = {
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "initContainers": [init],
        "containers": [server],
        "volumes": [
            {"name": "environment", "configMap": {"name": name}},
            {"name": "uv-cache", "persistentVolumeClaim": {"claimName": options.cache_claim}},
            {
                "name": "share",
                "persistentVolumeClaim": {"claimName": options.share_claim, "readOnly": True},
            },
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if options.service_account:
        pod_spec["serviceAccountName"] = options.service_account
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, generation),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": generation},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, generation),
        "spec": {
            "type": "ClusterIP",
            "selector": generation,
            "ports": [{"name": "grpc", "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
        },
    }
    return [secret, policy, config, deployment, service]


def server_args(argv: Sequence[str]) -> tuple[str, ...]:
    """The code server's arguments in its pod: the runner's, after the interpreter, listening
    on :data:`PORT` of every address (not on a socket or the runner's port)."""
    out: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--socket", "--host", "--port"):
            next(args, None)  # and its value
        else:
            out.append(arg)
    return (*out, "--host", "0.0.0.0", "--port", str(PORT))


def address(options: K8sOptions, location: str, server_id: str) -> Address:
    """The Service's DNS name in the cluster: what workspace.yaml points at."""
    return Address(f"{server_name(location, server_id)}.{options.namespace}.svc", PORT)


# --- the API, and the official client behind it ------------------------------------------


class KubeError(Exception):
    """The API refused (``status``: its HTTP status) or did not answer (``status`` 0)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class KubeApi(Protocol):
    """What the runner asks of the cluster, in its namespace."""

    def create(self, manifest: dict) -> None: ...

    def patch(self, manifest: dict) -> None: ...

    def delete(self, kind: str, name: str) -> None: ...

    def list(self, kind: str, selector: str) -> list[dict]: ...  # metadata of each


class ClientApi:
    """:class:`KubeApi` through the official ``kubernetes`` client (in-cluster config, else
    the kubeconfig)."""

    def __init__(self, namespace: str, *, kubeconfig: str | None = None) -> None:
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=kubeconfig)
        self.namespace = namespace
        core = kubernetes.client.CoreV1Api()
        apps = kubernetes.client.AppsV1Api()
        net = kubernetes.client.NetworkingV1Api()
        self._apis = {
            "Secret": (core, "secret"),
            "ConfigMap": (core, "config_map"),
            "Service": (core, "service"),
            "Deployment": (apps, "deployment"),
            "NetworkPolicy": (net, "network_policy"),
        }

    def _call(self, verb: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        import kubernetes
        import urllib3

        api, noun = self._apis[kind]
        try:
            return getattr(api, f"{verb}_namespaced_{noun}")(*args, **kwargs)
        except kubernetes.client.ApiException as exc:
            raise KubeError(exc.status or 0, exc.reason or str(exc)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(0, str(exc)) from None

    def create(self, manifest: dict) -> None:
        self._call("create", manifest["kind"], self.namespace, manifest)

    def patch(self, manifest: dict) -> None:
        name = manifest["metadata"]["name"]
        self._call("patch", manifest["kind"], name, self.namespace, manifest)

    def delete(self, kind: str, name: str) -> None:
        self._call("delete", kind, name, self.namespace, propagation_policy="Foreground")

    def list(self, kind: str, selector: str) -> list[dict]:
        found = self._call("list", kind, self.namespace, label_selector=selector)
        return [{"metadata": {"name": item.metadata.name}} for item in found.items]


def explain(exc: KubeError, verb: str, kind: str, namespace: str) -> str:
    """Where the user looks: what was refused, and what to do."""
    if exc.status == 0:
        return f"the Kubernetes API does not answer ({exc.reason})"
    if exc.status == 403:
        return (
            f"the Kubernetes API refused to {verb} a {kind} in namespace {namespace} "
            f"(403 Forbidden): give the runner's service account that right (docs/deploy.md)"
        )
    return f"the Kubernetes API refused to {verb} a {kind} ({exc.status} {exc.reason})"


# --- servers ---------------------------------------------------------------------------


class Deployed:
    """A generation's Deployment, as :func:`process.stop` sees a process: it runs until the
    runner deletes it (the kubelet restarts its pod when it crashes); :meth:`signal_all`
    deletes its Deployment, Service and ConfigMap."""

    def __init__(self, servers: K8sServers, name: str) -> None:
        self._servers = servers
        self.container = name  # what ``runner status`` shows: the Deployment
        self.pid = 0
        self.returncode: int | None = None
        self.note = ""

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.container, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signal_all(sig)

    def signal_all(self, sig: int) -> None:
        if self.returncode is None:
            self._servers.delete_generation(self.container)
            self.returncode, self.note = -int(sig), "its Deployment was deleted"


class K8sServers:
    """Applies each generation's manifests (a :data:`server.Launch`, with the location and
    its environment bound), patches the per-location ones, and deletes what it created."""

    def __init__(self, options: K8sOptions, *, api: KubeApi | None = None) -> None:
        self.options = options
        self._api = api

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            try:
                self._api = ClientApi(self.options.namespace, kubeconfig=self.options.kubeconfig)
            except Exception as exc:
                raise OSError(f"no Kubernetes configuration: {exc}") from None
        return self._api

    def spec(
        self,
        request: Request,
        *,
        location: str,
        limits: RunLimits,
        env_script: str,
        env_lock: str,
    ) -> ServerSpec:
        server_id = request.argv[list(request.argv).index("--fixed-server-id") + 1]
        user = (request.user.uid, request.user.gid) if request.user else None
        return ServerSpec(
            location=location,
            server_id=server_id,
            args=server_args(request.argv),
            env=dict(request.env),
            env_script=env_script,
            env_lock=env_lock,
            limits=limits,
            user=user,
        )

    def launch(
        self,
        request: Request,
        *,
        location: str,
        limits: RunLimits,
        env_script: str,
        env_lock: str,
    ) -> Launched:
        """Apply ``request``'s server (raises OSError saying why not)."""
        spec = self.spec(
            request, location=location, limits=limits, env_script=env_script, env_lock=env_lock
        )
        created: list[dict] = []
        try:
            for manifest in manifests(spec, self.options):
                self._apply(manifest)
                if manifest["kind"] not in PER_LOCATION:
                    created.append(manifest)
        except OSError:
            for manifest in reversed(created):  # nothing half-made stays
                self._delete(manifest["kind"], manifest["metadata"]["name"])
            raise
        name = server_name(location, spec.server_id)
        log.info("%s: code server in Deployment %s/%s", location, self.options.namespace, name)
        where = address(self.options, location, spec.server_id)
        return Launched(Deployed(self, name), "cold", where)

    def _apply(self, manifest: dict) -> None:
        kind, ns = manifest["kind"], self.options.namespace
        try:
            self.api.create(manifest)
        except KubeError as exc:
            if exc.status != 409 or kind not in PER_LOCATION:
                raise OSError(explain(exc, "create", kind, ns)) from None
            try:  # the location's own, from its previous version: patched
                self.api.patch(manifest)
            except KubeError as again:
                raise OSError(explain(again, "patch", kind, ns)) from None

    def _delete(self, kind: str, name: str) -> None:
        try:
            self.api.delete(kind, name)
        except KubeError as exc:
            if exc.status != 404:
                log.warning("%s", explain(exc, "delete", kind, self.options.namespace))

    def delete_generation(self, name: str) -> None:
        for kind in ("Service", "Deployment", "ConfigMap"):
            self._delete(kind, name)

    def delete_location(self, location: str) -> None:
        """The location's file is gone: so are its Secret and NetworkPolicy."""
        for kind in reversed(PER_LOCATION):
            self._delete(kind, location_name(location))

    def remove_all(self, *, why: str, keep: Sequence[str] = ()) -> list[str]:
        """Delete what a runner of this share applied; per-location objects of the
        locations ``keep`` stay (they are patched as their servers start)."""
        selector = f"{SHARE_LABEL}={share_value(self.options.share)}"
        kept = {location_name(name) for name in keep}
        removed = []
        for kind in reversed(KINDS):
            try:
                found = self.api.list(kind, selector)
            except KubeError as exc:
                log.warning("%s", explain(exc, "list", kind, self.options.namespace))
                continue
            for item in found:
                name = item["metadata"]["name"]
                if kind in PER_LOCATION and name in kept:
                    continue
                self._delete(kind, name)
                removed.append(f"{kind}/{name}")
        if removed:
            log.info("deleted %d object(s) %s: %s", len(removed), why, ", ".join(removed))
        return removed
