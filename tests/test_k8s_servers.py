"""Code servers on Kubernetes, without a cluster: every manifest is validated against the
Kubernetes schema (strict), and the runner's calls are checked against a fake of the API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from runner.isolation.identity import Identity
from runner.servers import k8s_servers
from runner.servers.k8s_servers import K8sOptions, K8sServers, KubeError
from runner.servers.server import Address, Request, Sidecar
from runner.share.limits import RunLimits
from tests.service import ROOT

#: The Kubernetes version the manifests are checked against (and documented for).
KUBERNETES = "1.30.0"
MIB = 1024 * 1024

OPTIONS = K8sOptions(
    namespace="dagster",
    image="registry.example/dagster-code-runner:1",
    share="/opt/dagster/code_location",
    share_claim="dagster-share",
    share_path="/opt/dagster",
    cache_claim="uv-cache",
    defaults=RunLimits(cpus=0.5),
)


def request(location: str, short: str, *, env: dict[str, str] | None = None) -> Request:
    argv = [
        "/var/lib/runner/envs/abc/bin/python",
        "/app/runner/boot/codeserver.py",
        "--python-file",
        f"/opt/dagster/code_location/{location}.py",
        "--working-directory",
        "/opt/dagster/code_location",
        "--host",
        "127.0.0.1",
        "--port",
        "41234",
        "--location-name",
        location,
        "--lazy-load-user-code",
        "--fixed-server-id",
        f"{location}-{short}",
    ]
    return Request(
        argv,
        env or {"TOKEN": "s3cret"},
        Path("/var/lib/runner/work") / location,
        Identity(20002, 20002),
        Sidecar(Path("/var/lib/runner/servers") / short),
        address=Address("127.0.0.1", 41234),
    )


class FakeApi:
    """The cluster's API as the runner sees it: objects by kind and name, and every call."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.refuse: dict[str, KubeError] = {}  # verb -> what the API answers

    def _check(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        if verb in self.refuse:
            raise self.refuse[verb]

    def create(self, manifest: dict) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        self._check("create", *key)
        if key in self.objects:
            raise KubeError(409, "AlreadyExists")
        self.objects[key] = manifest

    def patch(self, manifest: dict) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        self._check("patch", *key)
        if key not in self.objects:
            raise KubeError(404, "NotFound")
        self.objects[key] = manifest

    def delete(self, kind: str, name: str) -> None:
        self._check("delete", kind, name)
        if self.objects.pop((kind, name), None) is None:
            raise KubeError(404, "NotFound")

    def list(self, kind: str, selector: str) -> list[dict]:
        self.calls.append(("list", kind, selector))
        key, _, value = selector.partition("=")
        return [
            {"metadata": {"name": name}}
            for (k, name), obj in self.objects.items()
            if k == kind and obj["metadata"]["labels"].get(key) == value
        ]

    def kinds(self) -> list[str]:
        return sorted(kind for kind, _ in self.objects)


def launch(servers: K8sServers, location: str, short: str, **kwargs: object):
    return servers.launch(
        request(location, short, **kwargs),  # type: ignore[arg-type]
        location=location,
        limits=RunLimits(memory=512 * MIB),
        env_script='# /// script\n# dependencies = ["dagster"]\n# ///\n',
        env_lock="version = 1\n",
    )


def test_every_manifest_is_valid_kubernetes_and_hardened() -> None:
    servers = K8sServers(OPTIONS, api=FakeApi())
    spec = servers.spec(
        request("sales", "0123456789ab"),
        location="sales",
        limits=RunLimits(memory=512 * MIB),
        env_script="x",
        env_lock="y",
    )
    docs = k8s_servers.manifests(spec, OPTIONS)
    assert [d["kind"] for d in docs] == list(k8s_servers.KINDS)
    for doc in [*docs, *k8s_servers.manifests(spec, OPTIONS, secret_values=False)]:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    deployment = docs[3]["spec"]["template"]["spec"]
    assert deployment["securityContext"]["runAsUser"] == 20002  # the location's own user
    assert deployment["securityContext"]["runAsNonRoot"] is True
    server = deployment["containers"][0]
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert server["resources"]["limits"] == {"memory": str(512 * MIB), "cpu": "500m"}
    assert deployment["initContainers"][0]["command"][:3] == ["uv", "sync", "--script"]
    assert "--port" in server["command"] and "41234" not in server["command"]
    share = [m for m in server["volumeMounts"] if m["name"] == "share"]
    assert share == [{"name": "share", "mountPath": "/opt/dagster", "readOnly": True}]
    # Only the webserver, the daemon and the runner may call it.
    [rule] = docs[1]["spec"]["ingress"]
    [source] = rule["from"]
    assert source["podSelector"]["matchExpressions"][0]["values"] == list(k8s_servers.CALLERS)
    # The Secret carries its values only when the runner applies it.
    assert docs[0]["stringData"] == {"TOKEN": "s3cret"}


def test_a_file_is_created_an_edit_is_blue_green_and_removal_deletes_it() -> None:
    api = FakeApi()
    servers = K8sServers(OPTIONS, api=api)
    first = launch(servers, "sales", "aaaaaaaaaaaa")
    assert api.kinds() == sorted(k8s_servers.KINDS)
    assert first.address.host == "dcr-sales-" + first.address.host.split("-")[2] + (
        "-aaaaaaaaaaaa.dagster.svc"
    )
    assert first.address.port == k8s_servers.PORT
    assert all(verb == "create" for verb, _, _ in api.calls)

    api.calls.clear()
    second = launch(servers, "sales", "bbbbbbbbbbbb", env={"TOKEN": "rotated"})
    # The location's Secret and NetworkPolicy are patched; the generation is new, beside.
    patched = sorted(kind for verb, kind, _ in api.calls if verb == "patch")
    assert patched == ["NetworkPolicy", "Secret"]
    assert len([k for k in api.kinds() if k == "Deployment"]) == 2
    secret = api.objects[("Secret", k8s_servers.location_name("sales"))]
    assert secret["stringData"] == {"TOKEN": "rotated"}

    first.proc.signal_all(15)  # the old generation retires once the new one serves
    assert first.proc.poll() is not None
    assert len([k for k in api.kinds() if k == "Deployment"]) == 1
    second.proc.signal_all(15)
    servers.delete_location("sales")
    assert api.objects == {}


def test_a_runner_restart_removes_what_a_previous_runner_applied() -> None:
    api = FakeApi()
    launch(K8sServers(OPTIONS, api=api), "sales", "aaaaaaaaaaaa")
    launch(K8sServers(OPTIONS, api=api), "stock", "cccccccccccc")
    other_share = K8sServers(
        K8sOptions(**{**OPTIONS.__dict__, "share": "/elsewhere/code_location"}), api=api
    )
    launch(other_share, "theirs", "dddddddddddd")

    removed = K8sServers(OPTIONS, api=api).remove_all(why="test", keep=["sales"])
    assert all("theirs" not in name for name in removed)
    left = {name for _, name in api.objects}
    assert k8s_servers.location_name("sales") in left  # adopted: patched as it starts again
    assert not any("stock" in name for name in left)
    assert any("theirs" in name for name in left)  # another share's runner's


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (KubeError(403, "Forbidden"), "refused to create a Secret in namespace dagster (403"),
        (KubeError(0, "Connection refused"), "does not answer (Connection refused)"),
    ],
)
def test_a_refusal_or_an_unreachable_api_fails_the_location_clearly(
    answer: KubeError, says: str
) -> None:
    api = FakeApi()
    api.refuse["create"] = answer
    with pytest.raises(OSError, match=re.escape(says)):
        launch(K8sServers(OPTIONS, api=api), "sales", "aaaaaaaaaaaa")
    assert api.objects == {}


def test_a_failed_create_leaves_nothing_half_made() -> None:
    class Refusing(FakeApi):
        def create(self, manifest: dict) -> None:
            if manifest["kind"] == "Service":
                self.calls.append(("create", "Service", ""))
                raise KubeError(422, "Invalid")
            super().create(manifest)

    api = Refusing()
    with pytest.raises(OSError, match="422"):
        launch(K8sServers(OPTIONS, api=api), "sales", "aaaaaaaaaaaa")
    assert api.kinds() == ["NetworkPolicy", "Secret"]  # the location's own, patched next time


def test_runner_manifests_prints_valid_yaml_without_secret_values(tmp_path: Path) -> None:
    code = tmp_path / "share" / "code_location"
    code.mkdir(parents=True)
    (code / "sales.py").write_text(
        '# /// script\n# dependencies = ["dagster"]\n# [tool.dagster-code-runner]\n'
        '# server-memory = "512m"\n# ///\nimport dagster as dg\ndefs = dg.Definitions()\n'
    )
    (code / ".env").write_text("WAREHOUSE_TOKEN=never-in-git\n")
    env = {
        **os.environ,
        "RUNNER_STATE_DIR": str(tmp_path / "state"),
        "RUNNER_K8S_SHARE_CLAIM": "dagster-share",
        "RUNNER_K8S_CACHE_CLAIM": "uv-cache",
        "RUNNER_K8S_NAMESPACE": "dagster",
    }
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(
        [sys.executable, "-m", "runner", "manifests", "--share", str(tmp_path / "share")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "never-in-git" not in done.stdout
    docs = list(yaml.safe_load_all(done.stdout))
    assert [d["kind"] for d in docs] == list(k8s_servers.KINDS)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    secret = docs[0]
    assert "stringData" not in secret and "data" not in secret
    assert "WAREHOUSE_TOKEN" in secret["metadata"]["annotations"]["dagster-code-runner/keys"]
    server = docs[3]["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["memory"] == str(512 * MIB)
    assert "dagster" in docs[2]["data"]["env.py.lock"]  # the lock its pod builds from


def test_the_official_client_behind_the_interface_says_when_the_api_does_not_answer(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    # The real client, on an address nothing listens on.
    servers = K8sServers(K8sOptions(**{**OPTIONS.__dict__, "kubeconfig": str(kubeconfig)}))
    with pytest.raises(OSError, match="the Kubernetes API does not answer"):
        launch(servers, "sales", "aaaaaaaaaaaa")
