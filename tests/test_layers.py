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


#: Where the environment is read: the settings (config), the command line's option
#: defaults (cli), and what passes through to uv on purpose (env). boot/ runs in a
#: location's environment.
READS_THE_ENVIRONMENT = {"runner/service/config.py", "runner/service/cli.py", "runner/envs/env.py"}


def test_the_environment_is_read_only_where_settings_are_read() -> None:
    import ast

    found = set()
    for path in sorted((ROOT / "runner").rglob("*.py")):
        if "boot" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                found.add(str(path.relative_to(ROOT)))
    assert found <= READS_THE_ENVIRONMENT, sorted(found - READS_THE_ENVIRONMENT)
