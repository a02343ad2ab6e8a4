"""Per-location settings files and what a location inherits: pure, on a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.share.location_env import (
    SettingsFiles,
    candidates,
    inherited,
    instance_variables,
    parse,
)
from runner.share.scan import LocationSpec, Scanner, SpecError

SCRIPT = "# /// script\n# dependencies = ['dagster']\n# ///\nimport dagster\n"


def test_folder_files_apply_outer_first_then_the_files_own() -> None:
    assert candidates("team/sub/report.py") == [
        ".env",
        "team/.env",
        "team/sub/.env",
        "team/sub/report.env",
    ]
    assert candidates("top.py") == [".env", "top.env"]


def test_values_are_literal_and_a_bad_line_names_file_and_line_only() -> None:
    text = "A=1\nexport B=\"two words\"\nC=${A}\n# comment\nD='x#y'\n"
    assert parse(text, "f") == {"A": "1", "B": "two words", "C": "${A}", "D": "x#y"}
    with pytest.raises(ValueError, match=r"^s/.env, line 2: not a NAME=value") as caught:
        parse("A=1\nsecret value not a binding\n", "s/.env")
    assert "secret-value" not in str(caught.value)


def test_the_settings_folder_wins_and_only_matching_files_apply(tmp_path: Path) -> None:
    share, secrets = tmp_path / "code", tmp_path / "secrets"
    (share / "team").mkdir(parents=True)
    (secrets / "team").mkdir(parents=True)
    (share / ".env").write_text("LEVEL=top\nTOKEN=share\n")
    (share / "team" / "billing.env").write_text("TOKEN=from-share-file\n")
    (secrets / "team" / "billing.env").write_text("TOKEN=from-secrets\n")
    files = SettingsFiles([(share, "code_location"), (secrets, "/secrets")])

    billing = files.lookup("team/billing.py")
    assert billing.values == {"LEVEL": "top", "TOKEN": "from-secrets"}
    assert billing.files[-1] == "/secrets/team/billing.env"
    assert "from-secrets" not in repr(billing)
    assert files.lookup("team/shipping.py").values == {"LEVEL": "top", "TOKEN": "share"}

    before = billing.digest
    (secrets / "team" / "billing.env").write_text("TOKEN=rotated-longer\n")
    assert files.lookup("team/billing.py").digest != before


def test_a_settings_change_changes_the_locations_digest_and_an_error_rejects_it(
    tmp_path: Path,
) -> None:
    share = tmp_path / "code"
    share.mkdir()
    (share / "a.py").write_text(SCRIPT)
    scanner = Scanner(share, stable_for=0, settings=SettingsFiles([(share, "code_location")]))
    plain = scanner.scan(now=10).desired["a"]
    assert isinstance(plain, LocationSpec) and not plain.settings.files
    (share / "a.env").write_text("X=1\n")
    with_settings = scanner.scan(now=11).desired["a"]
    assert isinstance(with_settings, LocationSpec) and with_settings.digest != plain.digest
    assert with_settings.settings.names == ("X",)
    (share / "a.env").write_text("X=1\nnot a line\n")
    broken = scanner.scan(now=12).desired["a"]
    assert isinstance(broken, SpecError) and "a.env, line 2" in broken.message


def test_a_location_inherits_basics_the_instance_and_what_is_passed_only(tmp_path: Path) -> None:
    home = tmp_path / "dagster.yaml"
    home.write_text("storage:\n  postgres:\n    postgres_url:\n      env: PG_URL\n")
    environ = {
        "PATH": "/bin",
        "HOME": "/root",
        "LC_ALL": "C",
        "https_proxy": "http://proxy:3128",
        "DAGSTER_HOME": "/dh",
        "PG_URL": "postgresql://x",
        "AWS_SECRET_ACCESS_KEY": "s",
        "TEAM_REGION": "eu",
        "RUNNER_STATE_DIR": "/state",
    }
    passed = inherited(environ, also=[*instance_variables(home), "TEAM_*"])
    assert set(passed) == {
        "PATH",
        "HOME",
        "LC_ALL",
        "https_proxy",
        "DAGSTER_HOME",
        "PG_URL",
        "TEAM_REGION",
    }
