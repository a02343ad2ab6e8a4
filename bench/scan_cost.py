"""CPU per polling scan of a large share, next to a bare walk-and-stat of the same tree.

    uv run bench/scan_cost.py [--files 10000]

Builds a tree of N ``.py`` files (1% PEP 723 scripts, the rest helper modules, in folders of
100) and times ``Scanner.scan`` after the first scan, when nothing changed: the steady cost of
polling a network share. Then the same with what the runner adds to each scan: a
``.runnerignore`` at the top and in every folder, a ``.env`` per folder and the settings
lookups for every location (in the share and a settings folder). The baseline is
``os.scandir`` + ``stat`` of every file, the least any poller can do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import header, row, script

from runner.share.location_env import SettingsFiles
from runner.share.scan import SCAN_CPU_SHARE, Scanner


def walk_and_stat(root: Path) -> int:
    count, stack = 0, [root]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                entry.stat()
                count += 1
    return count


def cpu(fn, repeat: int = 20) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.process_time()
        fn()
        out.append((time.process_time() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        root = Path(tmp)
        for i in range(args.files):
            folder = root / f"team_{i // 100:03d}"
            folder.mkdir(exist_ok=True)
            text = script([f"a{i}"]) if i % 100 == 0 else f"VALUE = {i}\n"
            (folder / f"module_{i}.py").write_text(text)
        scanner = Scanner(root, stable_for=0)
        started = time.process_time()
        first = scanner.scan(now=0)
        first_ms = (time.process_time() - started) * 1000
        steady = cpu(lambda: scanner.scan(now=1))
        bare = cpu(lambda: walk_and_stat(root))
        (root / ".runnerignore").write_text("tools/\ncli_*.py\n")
        for folder in root.iterdir():
            if folder.is_dir():
                (folder / ".runnerignore").write_text("scratch_*.py\n")
                (folder / ".env").write_text("TEAM=x\n")
        settings = SettingsFiles([(root, "code_location"), (root.parent / "no-such", "s")])
        full = Scanner(root, stable_for=0, settings=settings)
        full.scan(now=0)
        with_extras = cpu(lambda: full.scan(now=1))
    print(header(f"CPU per scan of {args.files} files ({len(first.desired)} locations)"))
    print(row("Scanner.scan, nothing changed", steady, "ms"))
    print(row("  + ignore files and settings lookups", with_extras, "ms"))
    print(row("bare scandir + stat of every file", bare, "ms"))
    print(f"  first scan (reads and parses every file): {first_ms:.0f} ms")
    cost = statistics.median(steady) / 1000
    period = max(2.0, cost / SCAN_CPU_SHARE)
    print(
        f"polling every 2 s would cost {cost / 2:.1%} of one core; the runner keeps rescans "
        f"under {SCAN_CPU_SHARE:.1%} of one core: every {period:.1f} s here"
    )


if __name__ == "__main__":
    main()
