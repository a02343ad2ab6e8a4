"""Copies of the versions that loaded, in the runner's state: a location whose server dies
while its file on the share holds a broken version is served again from its copy."""

from __future__ import annotations

import logging
from pathlib import Path

from runner.lifecycle.model import Generation
from runner.share.script import short_name

log = logging.getLogger(__name__)


def copy_path(state_dir: Path, gen: Generation) -> Path:
    return state_dir / "last-good" / short_name(gen.spec.name) / gen.spec.path.name


def keep(state_dir: Path, gen: Generation) -> None:
    """Keep the bytes of ``gen``'s version (it loaded), unless they are kept already."""
    path = copy_path(state_dir, gen)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != gen.spec.source:
            tmp = path.with_name(".kept.tmp")  # the folder is the location's: one name fits
            tmp.write_bytes(gen.spec.source)
            tmp.replace(path)
    except OSError as exc:
        log.warning("%s: cannot keep a copy of the version it serves: %s", gen.spec.name, exc)
