"""Environment build time from a warm uv cache: resolved afresh, from the runner's kept
resolution, from the file's own lock, and the unlocked ``uv sync --script`` baseline.

    uv run bench/env_build.py [--runs N] [--deps "dagster,pandas"]

Each build goes into a new folder with the runner's own ``EnvStore`` (venv, locked sync,
bytecode compiled); the baseline is the same venv + ``uv sync --script --active`` without a
lock, as the runner built before it kept resolutions. The uv cache is warmed first, so the
figures are the runner's and uv's work, not downloads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401 - first: it puts the project on sys.path

from runner.envs import env
from runner.share import script


def timed(build: Callable[[], object]) -> float:
    started = time.perf_counter()
    build()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deps", default="dagster,pandas")
    args = parser.parse_args()
    deps = ", ".join(f'"{d}"' for d in args.deps.split(","))
    text = f"# /// script\n# dependencies = [{deps}]\n# ///\n"
    metadata = script.parse_metadata(text)
    assert metadata is not None
    figures: dict[str, list[float]] = {"fresh": [], "kept": [], "own": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        root = Path(tmp)
        spec = env.spec_for(metadata)
        env.EnvStore(root / "warm" / "envs").build(spec)  # warms the uv cache
        lock_text = env.EnvStore(root / "warm" / "envs").lock_path(spec.key).read_text()
        for i in range(args.runs):
            store = env.EnvStore(root / f"run{i}" / "envs")
            figures["fresh"].append(timed(lambda s=store: s.build(spec)))
            shutil.rmtree(store.path(spec.key))  # the env is lost, the resolution kept
            figures["kept"].append(timed(lambda s=store: s.build(spec)))
            own = env.spec_for(metadata, lock=lock_text)
            figures["own"].append(timed(lambda s=store, o=own: s.build(o)))
            figures["baseline"].append(timed(lambda i=i: baseline(root / f"base{i}", spec)))
    print(f"environment build from a warm uv cache, dependencies {args.deps} ({args.runs} runs)")
    print(f"  {'':<46}{'median':>8}{'min':>8}{'max':>8}")
    for key, label in (
        ("fresh", "no lock: resolved afresh, then kept"),
        ("kept", "no lock: from the runner's kept resolution"),
        ("own", "from the file's own lock"),
        ("baseline", "baseline: uv sync --script, no lock"),
    ):
        v = figures[key]
        print(f"  {label:<46}{statistics.median(v):>7.2f}s{min(v):>7.2f}s{max(v):>7.2f}s")


def baseline(folder: Path, spec: env.EnvSpec) -> None:
    """The unlocked build: venv + ``uv sync --script --active`` (bytecode compiled)."""
    import uv

    folder.mkdir(parents=True)
    meta = folder / "meta.py"
    meta.write_text(script.render_block(spec.metadata))
    venv = folder / "venv"
    environ = {**os.environ, "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
    subprocess.run(
        [uv.find_uv_bin(), "venv", "--relocatable", "--quiet", str(venv)],
        check=True,
        env=environ,
        cwd=folder,
    )
    subprocess.run(
        [uv.find_uv_bin(), "sync", "--script", str(meta), "--active", "--quiet"],
        check=True,
        env=environ,
        cwd=folder,
    )


if __name__ == "__main__":
    main()
