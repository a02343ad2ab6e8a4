"""``.runnerignore``: gitignore-style patterns per folder, and the scan that honours them."""

from __future__ import annotations

from pathlib import Path

from runner.share.scan import Scanner

SCRIPT = "# /// script\n# dependencies = ['dagster']\n# ///\nimport dagster\n"


def test_ignored_files_and_folders_are_not_locations_and_say_why(tmp_path: Path) -> None:
    for relpath in (
        "a.py",
        "cli_dump.py",
        "tools/migrate.py",
        "team/cli_keep.py",
        "team/cli_other.py",
    ):
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_text(SCRIPT)
    (tmp_path / ".runnerignore").write_text("# not pipelines\n\ntools/\ncli_*.py\n")
    (tmp_path / "team" / ".runnerignore").write_text("!cli_keep.py\n")
    scanner = Scanner(tmp_path, stable_for=0)

    desired = scanner.scan(now=1).desired
    assert set(desired) == {"a", "team.cli_keep"}
    assert scanner.ignored == {
        "cli_dump.py": ".runnerignore line 4: cli_*.py",
        "tools/": ".runnerignore line 3: tools/",
        "team/cli_other.py": ".runnerignore line 4: cli_*.py",
    }

    (tmp_path / ".runnerignore").write_text("tools/\n")  # re-read when it changes
    assert set(scanner.scan(now=2).desired) == {"a", "cli_dump", "team.cli_keep", "team.cli_other"}
