"""Where things live: the share's layout, and the runner's own state outside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    share: Path
    dagster_home: Path

    @property
    def code_dir(self) -> Path:
        return self.share / "code_location"

    @property
    def workspace(self) -> Path:
        return self.dagster_home / "workspace.yaml"


def layout(share: str | Path | None = None) -> Layout:
    """The share (``--share``, ``RUNNER_SHARE``, ``./share``) and ``DAGSTER_HOME`` within it."""
    root = Path(share or os.environ.get("RUNNER_SHARE") or "share").resolve()
    home = os.environ.get("DAGSTER_HOME")
    return Layout(share=root, dagster_home=Path(home).resolve() if home else root / "dagster_home")


def state_dir() -> Path:
    """The runner's own files (built environments), never on the share."""
    explicit = os.environ.get("RUNNER_STATE_DIR")
    if explicit:
        return Path(explicit).resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dagster-code-runner"
