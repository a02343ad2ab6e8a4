"""Where things live on the share: its layout (which :mod:`runner.service.config` reads from
the settings), and the files the runner ships for a new instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Classic locations of the user's own, kept beside workspace.yaml and merged into it.
STATIC_NAME = "workspace.static.yaml"
TEMPLATES = Path(__file__).parent.parent / "templates"


@dataclass(frozen=True)
class Layout:
    share: Path
    dagster_home: Path  # holds workspace.yaml (and the SQLite instance by default)
    instance_home: Path  # DAGSTER_HOME for every role: the instance's dagster.yaml

    @property
    def code_dir(self) -> Path:
        return self.share / "code_location"

    @property
    def workspace(self) -> Path:
        return self.dagster_home / "workspace.yaml"
