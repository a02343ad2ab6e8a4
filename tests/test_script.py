from __future__ import annotations

import pytest

from runner.share import script
from runner.share.script import MetadataError, location_name, parse_metadata, render_block

GOOD = """\
#!/usr/bin/env python
# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "dagster",
#   "pandas>=2",
# ]
#
# [tool.uv]
# exclude-newer = "2026-01-01T00:00:00Z"
# ///
import dagster
"""


def test_parses_dependencies_python_and_tool() -> None:
    meta = parse_metadata(GOOD)
    assert meta is not None
    assert meta.dependencies == ("dagster", "pandas>=2")
    assert meta.requires_python == ">=3.11"
    assert meta.tool == {"uv": {"exclude-newer": "2026-01-01T00:00:00Z"}}
    assert meta.mentions("Dagster") and not meta.mentions("dagster-dbt")


def test_a_file_without_a_block_is_not_a_location() -> None:
    assert parse_metadata("import dagster\n# /// other\n# x = 1\n# ///\n") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# /// script\n# dependencies = [\n# ///\n", "not valid TOML"),
        ("# /// script\n# dependencies = []\n", "not closed"),
        (
            "# /// script\n# dependencies = []\n# ///\n# /// script\n# dependencies = []\n# ///\n",
            "more than one",
        ),
        ("# /// script\n# packages = []\n# ///\n", "unknown key(s) in the script block: packages"),
        ('# /// script\n# dependencies = "dagster"\n# ///\n', "must be a list of strings"),
        ('# /// script\n# dependencies = ["dagster>>1"]\n# ///\n', "invalid dependency"),
        ('# /// script\n# requires-python = "three"\n# ///\n', "invalid requires-python"),
    ],
)
def test_malformed_blocks_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_metadata(text)


def test_render_block_round_trips() -> None:
    data = {
        "requires-python": ">=3.11",
        "dependencies": ["dagster==1.13.0"],
        "tool": {"uv": {"x": 1}},
    }
    meta = parse_metadata(render_block(data))
    assert meta is not None and meta.to_toml_dict() == data


@pytest.mark.parametrize(
    ("relpath", "name"),
    [
        ("weather.py", "weather"),
        ("team_a/sales.py", "team_a.sales"),
        ("a/b/c-d_e.py", "a.b.c-d_e"),
    ],
)
def test_clean_names_are_kept(relpath: str, name: str) -> None:
    assert location_name(relpath) == name


def test_names_with_unsafe_characters_get_a_stable_suffix() -> None:
    name = location_name("sales report.py")
    assert name.startswith("sales_report-") and len(name) == len("sales_report-") + 6
    assert name == location_name("sales report.py")  # stable across calls and runs


def test_names_never_collide() -> None:
    paths = [
        "a_b.py",
        "a b.py",
        "a.b.py",
        "a/b.py",
        "a-b.py",
        "a_b-123abc.py",
        "ä_b.py",
        "a/b/c.py",
        "a.b/c.py",
        "a/b.c.py",
        "a_b/c.py",
        "A_b.py",
    ]
    names = [location_name(p) for p in paths]
    assert len(set(names)) == len(names), names
    assert all(
        set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
        for n in names
    )


def test_short_names_fit_and_stay_unique() -> None:
    assert script.short_name("team_a.sales") == "team_a.sales"  # short: as it is
    long_a, long_b = "team." + "a" * 250, "team." + "a" * 249 + "b"
    short_a, short_b = script.short_name(long_a), script.short_name(long_b)
    assert short_a != short_b and len(short_a.encode()) <= 40 and short_a.startswith("team.aaa")
    # A file named like another's short name cannot take its folders: names hold no "~".
    forged = script.location_name(f"{short_a}.py")
    assert forged != short_a and script.short_name(forged) != short_a
