"""Restart on the same share: how fast every location is back, reusing built environments.

    uv run bench/restart.py [--files 10]

Starts the service on a share holding N files (3 distinct dependency sets), waits until all
are LOADED, stops it (SIGTERM), starts it again and waits again. Both times are measured from
starting the entrypoint. The first start builds the environments (warm uv cache); the second
finds them built.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from common import script

from tests.service import Service, wait_for


def all_loaded(service: Service, names: list[str]) -> float:
    started = time.perf_counter()

    def loaded() -> bool:
        locations = service.locations()
        return all(
            n in locations
            and (locations[n]["locationOrLoadError"] or {}).get("__typename")
            == "RepositoryLocation"
            for n in names
        )

    wait_for("all locations LOADED", loaded, timeout=600, every=0.1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10)
    args = parser.parse_args()
    names = [f"loc_{i}" for i in range(args.files)]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # locations' users pass through to their environments and files
        code = root / "share" / "code_location"
        code.mkdir(parents=True)
        for i, name in enumerate(names):
            meta = f"# [tool.bench]\n# set = {i % 3}\n"
            (code / f"{name}.py").write_text(script([f"a{i}"], extra_meta=meta))
        old = time.time() - 60
        for path in code.iterdir():
            os.utime(path, (old, old))
        results = []
        for label in ("first start (builds 3 envs)", "restart (envs reused)"):
            spawned = time.perf_counter()
            service = Service(root / "share", root / "state", log=root / f"{len(results)}.log")
            try:
                wait_for("the webserver", lambda s=service: s.locations() is not None, timeout=300)
                all_loaded(service, names)
                results.append((label, time.perf_counter() - spawned))
            finally:
                took = service.stop(signal.SIGTERM)
            results.append(("  then SIGTERM -> everything stopped", took))
    print(f"{args.files} locations, time from starting the entrypoint to all LOADED")
    for label, seconds in results:
        print(f"  {label:<44}{seconds:>7.1f}s")


if __name__ == "__main__":
    main()
