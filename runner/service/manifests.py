"""``python -m runner manifests [FILE...]``: what the runner would apply on Kubernetes for
those files, as YAML (as ``helm template`` prints a chart), for teams that deploy by GitOps.

Each file gets the objects :func:`k8s_servers.manifests` makes for it, named after a digest
of its text (the runner names a generation after its server's id instead), with the lock its
environment is built from: the file's own, the runner's kept resolution, or one ``uv lock
--script`` makes now. Secrets are printed without their values, only their keys: they are
for Git.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uv
import yaml

from runner.base import paths
from runner.envs import env as envs
from runner.servers import k8s_servers
from runner.servers.k8s_servers import K8sOptions, ServerSpec
from runner.servers.server import boot_args
from runner.share import script
from runner.share.location_env import SettingsFiles


class ManifestError(Exception):
    """Why a file has no manifests (meant for the person who asked)."""


def render(
    where: paths.Layout,
    files: Sequence[Path],
    options: K8sOptions,
    *,
    state_dir: Path,
    settings: SettingsFiles,
    inherited: Sequence[str] = (),
    extras: tuple[str, ...] = (),
) -> str:
    """The YAML documents for ``files`` (every file of the share when empty)."""
    code = where.code_dir.resolve()
    chosen = [Path(f).resolve() for f in files] or sorted(code.rglob("*.py"))
    docs: list[dict] = []
    for file in chosen:
        try:
            relpath = file.relative_to(code).as_posix()
        except ValueError:
            raise ManifestError(f"{file} is not in {where.code_dir}") from None
        text = file.read_text()
        try:
            metadata = script.parse_metadata(text)
        except script.MetadataError as exc:
            raise ManifestError(f"{relpath}: {exc}") from None
        if metadata is None:
            continue  # not a location: the runner serves only PEP 723 files
        lock_path = Path(f"{file}.lock")
        own = lock_path.read_text() if lock_path.exists() else None
        spec = envs.spec_for(metadata, extras, lock=own)
        block = script.render_block(spec.metadata)
        name = script.location_name(relpath)
        server_id = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        variables = [*inherited, *settings.lookup(relpath).names]
        server = ServerSpec(
            location=name,
            server_id=server_id,
            args=k8s_servers.server_args(
                [
                    "python",
                    *boot_args(
                        file=file,
                        folder=file.parent,
                        listen=(),
                        location=name,
                        server_id=server_id,
                        log_format="json",
                    ),
                ]
            ),
            env=dict.fromkeys(variables, ""),
            env_script=block,
            env_lock=own or _lock(block, state_dir / "envs" / ".scripts", spec.key),
            limits=metadata.server_limits,
        )
        docs += k8s_servers.manifests(server, options, secret_values=False)
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a lock, the metadata) as literal blocks, readable in a review."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _lock(block: str, kept: Path, key: str) -> str:
    """The runner's kept resolution of this metadata, or a lock made now."""
    known = kept / f"{key[:32]}.py.lock"
    if known.exists():
        return known.read_text()
    with tempfile.TemporaryDirectory(prefix="runner-manifests-") as tmp:
        copy = Path(tmp) / "env.py"
        copy.write_text(block)
        done = subprocess.run(
            [uv.find_uv_bin(), "lock", "--script", str(copy), "--quiet"],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if done.returncode != 0:
            raise ManifestError(f"uv lock failed: {done.stderr.strip()}")
        lock = Path(f"{copy}.lock").read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    return lock
