"""The layers of runner/, as pyproject.toml's import-linter contracts state them."""

from __future__ import annotations

import shutil
import subprocess

from tests.service import ROOT


def test_lower_layers_never_import_higher_ones_and_the_model_no_dagster() -> None:
    lint = shutil.which("lint-imports")
    assert lint is not None, "lint-imports comes with the dev dependencies (uv sync)"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
